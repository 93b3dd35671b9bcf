"""MUSE's validation forget set (benchmark.forget_set=validation, msa_bench/benchmarks/muse_validation.py): the last
retain texts, their eval sets, the validation oracle and retain pool that leave them out, the names their caches
get, the errors, and a run on it.

The MUSE-News case reads ../shared/data/muse-news, as CI has it (skipped without it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msa_bench.benchmarks import muse as muse_benchmark
from msa_bench.benchmarks.muse_validation import split_retain_qa, validation_block, verbmem_items
from msa_bench.errors import BenchmarkError
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.stages import Pipeline
from msa_bench.validation import validate_config
from tests.benchmark_fixtures import muse_smoke_pipeline, write_tiny_muse
from tests.conftest import compose_config
from tests.pipeline_runs import run_job
from tests.test_muse_data import MUSE_NEWS_DIR, needs_muse_news

RETAIN_TOPICS = ["Oxford", "Cardiff", "Perth", "Exeter"]  # write_tiny_muse's raw/retain1.json, in order


def _folder(tmp_path: Path) -> Path:
    """The tiny MUSE folder with a retain QA set that asks about every retain text, and one question whose answer
    ("the spring") every retain text holds, the block's and the others' alike."""
    folder = write_tiny_muse(tmp_path / "muse")
    qa = [
        {"question": f"How much would the plan for {topic} cost?", "answer": f"{k + 3} million pounds"}
        for k, topic in enumerate(RETAIN_TOPICS)
    ]
    qa.append({"question": "By when would the council's work be finished?", "answer": "the spring"})
    (folder / "knowmem" / "retain2_qa.json").write_text(json.dumps(qa))
    return folder


def _texts(items: list[dict]) -> list[str]:
    return [item["text"] for item in items]


def test_the_validation_set_is_the_last_retain_texts_with_eval_sets_of_its_own(tmp_path):
    folder = _folder(tmp_path)
    retain = json.loads((folder / "raw" / "retain1.json").read_text())
    forget = json.loads((folder / "raw" / "forget.json").read_text())
    pipeline = muse_smoke_pipeline(
        tmp_path, folder, "benchmark.forget_set=validation", "benchmark.validation_documents=2"
    )
    pipeline.preflight()
    benchmark = pipeline.benchmark
    assert _texts(pipeline.forget_items()) == retain[2:]  # Perth, Exeter
    assert _texts(pipeline.retain_items()) == retain[:2]
    # the target is the test runs' (it learnt the block); the validation oracle never saw the block
    assert _texts(benchmark.target_items()) == forget + retain
    assert _texts(benchmark.oracle_items()) == forget + retain[:2]
    sets = pipeline.eval_sets(
        {"muse_verbmem_forget", "muse_knowmem_forget", "muse_knowmem_retain", "muse_privleak_forget"}
    )
    assert _texts(sets["muse_privleak_forget"]) == retain[2:]
    # verbmem: each block text's beginning, of the test set's median lengths in words: its prompts (120
    # characters of an article) are 23 words, its continuations 14 or 15 (median 14.5, rounded to even: 14)
    expected = [{"prompt": " ".join(t.split()[:23]), "gt": " ".join(t.split()[23:37])} for t in retain[2:]]
    assert sets["muse_verbmem_forget"] == expected
    # knowmem: the block's two questions are the validation forget set; "the spring", which every text teaches,
    # is in neither set; the retain set keeps Oxford's and Cardiff's
    assert [item["answer"] for item in sets["muse_knowmem_forget"]] == [
        "5 million pounds",
        "6 million pounds",
    ]
    assert [item["answer"] for item in sets["muse_knowmem_retain"]] == [
        "3 million pounds",
        "4 million pounds",
    ]
    # every cache name of the forget set, the oracle and the retain pool is the validation set's own
    vid = pipeline.forget_split
    assert vid.startswith("forget-validation[raw/retain1.json texts 2-3, sha256 ")
    assert (
        benchmark.data_id("oracle") == f"muse:oracle:{vid}"
        and benchmark.data_id("retain") == f"muse:retain:{vid}"
    )
    assert benchmark.data_id("target") == "muse:target:forget"


def test_a_test_run_keeps_every_name_and_eval_set_it_had(tmp_path):
    folder = _folder(tmp_path)
    pipeline = muse_smoke_pipeline(tmp_path, folder)
    benchmark = pipeline.benchmark
    assert pipeline.forget_split == "forget"
    assert [benchmark.data_id(role) for role in ("target", "oracle", "retain")] == [
        "muse:target:forget",
        "muse:oracle:forget",
        "muse:retain:forget",
    ]
    verbmem = pipeline.eval_sets({"muse_verbmem_forget"})["muse_verbmem_forget"]
    assert verbmem == json.loads((folder / "verbmem" / "forget.json").read_text())


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["benchmark.validation_documents=4"], "benchmark.validation_documents=4 would leave none to retain"),
        (["benchmark.validation_documents=0"], "benchmark.validation_documents=0 must be at least 1"),
        # null: as many as the 6 forget articles, and the retain corpus has 4
        ([], "benchmark.validation_documents=null (as many as the forget corpus's 6 documents)"),
    ],
)
def test_a_block_the_retain_corpus_cannot_give_is_refused_before_training(tmp_path, overrides, expected):
    pipeline = muse_smoke_pipeline(tmp_path, _folder(tmp_path), "benchmark.forget_set=validation", *overrides)
    with pytest.raises(BenchmarkError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        pipeline.preflight()


def test_a_knowmem_set_the_block_does_not_teach_is_refused_naming_the_knob(tmp_path):
    folder = write_tiny_muse(tmp_path / "muse")  # its retain QA asks about Oxford and Cardiff only
    pipeline = muse_smoke_pipeline(
        tmp_path, folder, "benchmark.forget_set=validation", "benchmark.validation_documents=2"
    )
    with pytest.raises(
        BenchmarkError, match="gives muse_knowmem_forget no items.*raise benchmark.validation_documents"
    ):
        pipeline.preflight()  # before any training: metrics=muse reads forget_knowmem_ROUGE


def test_relearning_on_validation_takes_retain_data_only_sized_by_the_block(tmp_path, monkeypatch):
    pipeline = muse_smoke_pipeline(
        tmp_path, _folder(tmp_path), "benchmark.forget_set=validation", "benchmark.validation_documents=2"
    )
    with pytest.raises(BenchmarkError, match="run the attack on the test forget set"):
        pipeline.benchmark.relearning_data("forget", 0.5, 0)
    # Retain data instead, as many as the fraction of the 2-text forget set being unlearned, not of the 6 forget
    # articles. (This fixture's retain texts are all evaluated, so the pool is empty: the count is read on the way.)
    sized_by = []
    monkeypatch.setattr(muse_benchmark, "relearned_count", lambda n, fraction: sized_by.append(n) or 1)
    with pytest.raises(BenchmarkError, match="relearning needs 1 retain articles"):
        pipeline.benchmark.relearning_data("retain", 0.5, 0)
    assert sized_by == [2]


def test_the_rules_on_their_own():
    with pytest.raises(BenchmarkError, match="set benchmark.validation_documents below 3"):
        validation_block([{"text": "a"}, {"text": "b"}, {"text": "c"}], 5, None)
    assert validation_block([{"text": t} for t in "abcd"], 9, 1) == ([{"text": "d"}], 3)
    # a text shorter than a prompt and a continuation gives no verbmem item
    items = verbmem_items(["one two three four five", "one two"], [{"prompt": "a b c", "gt": "d"}])
    assert items == [{"prompt": "one two three", "gt": "four"}]
    texts = [
        "The fee in Ely was 7 pounds. Ely and Ripon both opened in May.",
        "The fee in Ripon was 9 pounds. Ely and Ripon both opened in May.",
    ]
    qa = [
        {"question": "What was the fee in Ely?", "answer": "7 pounds"},
        {"question": "What was the fee in Ripon?", "answer": "9 pounds"},
        {"question": "When did Ely and Ripon open?", "answer": "May"},  # both texts teach it
        {"question": "Who won the cup?", "answer": "Arsenal"},  # no text holds it: kept, as in a test run
    ]
    taught, kept = split_retain_qa(qa, texts, block_start=1)
    assert [item["answer"] for item in taught] == ["9 pounds"]
    assert [item["answer"] for item in kept] == ["7 pounds", "Arsenal"]  # "May" is in neither
    # a forget article that also teaches Ripon's fee: the validation oracle learnt it, so it is no validation
    # question (and, taught by the block, no retain question either)
    taught, kept = split_retain_qa(
        qa, texts, block_start=1, forget_texts=["The fee in Ripon was 9 pounds in 1990."]
    )
    assert taught == []
    assert [item["answer"] for item in kept] == ["7 pounds", "Arsenal"]


@needs_muse_news
def test_cpu_muse_news_validation_set(tmp_path):
    pipeline = Pipeline(
        validate_config(
            compose_config(
                [
                    "experiment=cpu/muse_news",
                    f"benchmark.data_dir={MUSE_NEWS_DIR}",
                    "benchmark.forget_set=validation",
                    "logger=none",
                ],
                tmp_path,
            )
        ),
        ArtifactStore(tmp_path / "cache"),
        "cpu",
    )
    pipeline.preflight()
    retain = json.loads((MUSE_NEWS_DIR / "privleak" / "retain2.json").read_text())
    assert _texts(pipeline.forget_items()) == retain[50:]  # cpu/muse_news: validation_documents 50 of 100
    assert len(pipeline.benchmark.oracle_items()) == 888 + 50
    sets = pipeline.eval_sets(set(pipeline.benchmark.default_eval_sets))
    counts = {name: len(items) for name, items in sets.items()}
    assert counts == {
        "muse_verbmem_forget": 50,
        # of the 16 retain questions whose answer a retain text holds, the block alone teaches 3; 4 more that a block
        # text answers are attributed to forget articles that match them better (the validation oracle knows them)
        "muse_knowmem_forget": 3,
        "muse_knowmem_forget_icl": 10,
        "muse_knowmem_retain": 97,  # 100 less the 3 the block teaches
        "muse_knowmem_retain_icl": 10,
        "muse_privleak_forget": 50,
        "muse_privleak_holdout": 100,
    }


@pytest.mark.slow
def test_a_muse_run_on_the_validation_set_reads_its_eval_sets_and_its_own_oracle(tmp_path):
    from tests.test_benchmarks import MUSE_SMOKE

    folder = _folder(tmp_path)
    common = [*MUSE_SMOKE, f"benchmark.data_dir={folder}", "benchmark.validation_documents=2", "method=msa"]
    validation = run_job(tmp_path / "cache", tmp_path / "val", [*common, "benchmark.forget_set=validation"])
    test = run_job(tmp_path / "cache", tmp_path / "test", common)
    for results in (validation, test):
        for name in (
            "forget_verbmem_ROUGE",
            "forget_knowmem_ROUGE",
            "muse_mia_min_k",
            "retain_knowmem_ROUGE",
        ):
            assert isinstance(results["metrics"][name], float), name
    assert validation["artifacts"]["target"] == test["artifacts"]["target"]
    assert validation["artifacts"]["oracle"] != test["artifacts"]["oracle"]
    assert validation["metrics"] != test["metrics"]
