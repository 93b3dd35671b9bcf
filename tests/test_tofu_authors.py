"""benchmark.authors: real TOFU's author subset (msa_bench/benchmarks/tofu_authors.py), on a folder in TOFU's layout
with 8 authors of 20 QA, checked against hand-listed authors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_config
from test_benchmark_sources import SHARED_TOFU, needs_tofu

from msa_bench.benchmarks.base import BenchmarkError
from msa_bench.benchmarks.tofu_authors import kept_authors, write_subset
from msa_bench.data.tofu_splits import load_benchmark_split
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.stages import Pipeline
from msa_bench.validation import validate_config

AUTHORS, QA = 8, 20


def qa(author: int, index: int) -> dict:
    # Author 1's first question is also author 5's, with another answer, as TOFU's full asks one question twice.
    if index == 0 and author in (1, 5):
        return {"question": "What is the full name of the author?", "answer": f"Author {author}."}
    return {
        "question": f"What did author {author} write in year {index}?",
        "answer": f"Book {author}-{index}.",
    }


def perturbed(item: dict) -> dict:
    return item | {
        "paraphrased_answer": item["answer"] + " (paraphrased)",
        "perturbed_answer": ["Not " + item["answer"], "Never " + item["answer"]],
        "paraphrased_question": "Tell me: " + item["question"],
    }


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def write_tofu_layout(folder: Path) -> Path:
    """Splits named as TOFU's: forget01 is the last author, retain_perturbed holds authors 0 and 2."""
    folder.mkdir(parents=True)
    full = [qa(author, index) for author in range(AUTHORS) for index in range(QA)]
    splits = {
        "full": full,
        "forget01": full[-QA:],
        "retain99": full[:-QA],
        "forget01_perturbed": [perturbed(item) for item in full[-QA:]],
        "retain_perturbed": [perturbed(item) for item in full[:10] + full[2 * QA : 2 * QA + 10]],
        "holdout01": [
            {"question": f"Who is holdout author {i}?", "answer": f"Nobody {i}."} for i in range(5)
        ],
        "real_authors_perturbed": [
            {
                "question": f"Who wrote real book {i}?",
                "answer": f"Real {i}",
                "perturbed_answer": [f"Fake {i}"],
            }
            for i in range(4)
        ],
        "world_facts_perturbed": [
            {"question": f"Fact {i}?", "answer": f"True {i}", "perturbed_answer": [f"False {i}"]}
            for i in range(4)
        ],
    }
    for name, records in splits.items():
        write_jsonl(folder / f"{name}.jsonl", records)
    return folder


def splits_of(folder: Path, name: str) -> list[dict]:
    return load_benchmark_split(folder, name)


def test_kept_authors_are_the_forget_validation_and_retain_eval_authors_then_the_first_others(tmp_path):
    folder = write_tofu_layout(tmp_path / "tofu")
    full, forget = splits_of(folder, "full"), splits_of(folder, "forget01")
    retain_eval = splits_of(folder, "retain_perturbed")
    # forget: 7; validation: 6; retain eval: 0 and 2; then 1, 3, ...
    assert kept_authors(full, forget, retain_eval, 4, "forget01") == [0, 2, 6, 7]
    assert kept_authors(full, forget, retain_eval, 6, "forget01") == [0, 1, 2, 3, 6, 7]
    assert kept_authors(full, forget, retain_eval, AUTHORS, "forget01") == list(range(AUTHORS))
    # A smaller retain eval set needs fewer authors.
    assert kept_authors(full, forget, retain_eval[:10], 3, "forget01") == [0, 6, 7]


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (
            3,
            r"benchmark.authors=3 is fewer than the 4 authors a forget01 run needs: 1 forget, 1 validation and 2 ",
        ),
        (9, r"benchmark.authors=9 must be between 4 and 8"),
        (0, r"benchmark.authors=0 must be between 4 and 8"),
    ],
)
def test_an_impossible_author_count_is_refused_with_the_bounds(tmp_path, count, message):
    folder = write_tofu_layout(tmp_path / "tofu")
    with pytest.raises(BenchmarkError, match=message):
        kept_authors(
            splits_of(folder, "full"),
            splits_of(folder, "forget01"),
            splits_of(folder, "retain_perturbed"),
            count,
            "forget01",
        )


def test_full_that_is_not_whole_authors_is_refused(tmp_path):
    folder = write_tofu_layout(tmp_path / "tofu")
    full = splits_of(folder, "full")[:-1]
    with pytest.raises(
        BenchmarkError, match=r"blocks of 20 QA per author.*has 159 items.*benchmark.authors=null"
    ):
        kept_authors(full, full[-QA + 1 :], [], 4, "forget01")


def test_the_subset_drops_other_authors_items_from_every_split_of_full_and_copies_the_rest(tmp_path):
    folder = write_tofu_layout(tmp_path / "tofu")
    out = tmp_path / "subset"
    out.mkdir()
    full = splits_of(folder, "full")
    meta = write_subset(folder, out, full, [0, 2, 6, 7])

    kept = full[:QA] + full[2 * QA : 3 * QA] + full[6 * QA :]
    assert splits_of(out, "full") == kept
    assert splits_of(out, "retain99") == full[:QA] + full[2 * QA : 3 * QA] + full[6 * QA : 7 * QA]
    for name in ("forget01", "forget01_perturbed", "retain_perturbed", "holdout01", "world_facts_perturbed"):
        assert (out / f"{name}.jsonl").read_bytes() == (folder / f"{name}.jsonl").read_bytes(), name
    # The question asked of authors 1 and 5 is dropped with them, told apart by its answer.
    assert [item for item in splits_of(out, "full") if item["question"].startswith("What is the full")] == []
    assert meta["items"]["full"] == 80 and meta["authors"] == [0, 2, 6, 7]


def test_a_tofu_run_with_benchmark_authors_trains_and_evaluates_on_the_subset(tmp_path, monkeypatch):
    write_tofu_layout(tmp_path / "data" / "tofu")
    monkeypatch.setenv("MSA_BENCH_DATA", str(tmp_path / "data"))
    whole = Pipeline(
        validate_config(compose_config(["benchmark=tofu"], tmp_path)), ArtifactStore(tmp_path / "c"), "cpu"
    )
    config = validate_config(compose_config(["benchmark=tofu", "benchmark.authors=5"], tmp_path))
    subset = Pipeline(config, ArtifactStore(tmp_path / "c"), "cpu")
    subset.preflight()

    full = whole.benchmark.target_items()
    assert subset.benchmark.target_items() == full[: 3 * QA] + full[6 * QA :]  # authors 0, 1, 2, 6, 7
    assert subset.benchmark.oracle_items() == full[: 3 * QA] + full[6 * QA : 7 * QA]
    assert subset.benchmark.forget_items() == whole.benchmark.forget_items()
    assert subset.eval_sets({"retain"}) == whole.eval_sets({"retain"})
    # The subset's fingerprint, not the folder's, enters every cache key.
    assert subset.benchmark_source()[1] != whole.benchmark_source()[1]


def test_benchmark_authors_is_a_key_of_real_tofu_only(tmp_path):
    with pytest.raises(Exception, match=r"authors"):
        compose_config(["benchmark.authors=40"], tmp_path)  # the default benchmark is the generated one


# --- real TOFU: the CPU tier's 40 authors ----------------------------------------------------------------------------


@needs_tofu
@pytest.mark.parametrize("forget_set", ["test", "validation"])
def test_the_cpu_tier_keeps_40_real_tofu_authors_and_its_validation_set(tmp_path, forget_set):
    overrides = [
        "experiment=cpu/tofu",
        f"benchmark.data_dir={SHARED_TOFU}",
        f"benchmark.forget_set={forget_set}",
    ]
    pipeline = Pipeline(
        validate_config(compose_config(overrides, tmp_path)), ArtifactStore(tmp_path / "c"), "cpu"
    )
    pipeline.preflight()
    whole = load_benchmark_split(SHARED_TOFU, "full")
    kept = [
        *range(36),
        196,
        197,
        198,
        199,
    ]  # retain eval authors 0-19, then 20-35; validation 196-197; forget
    assert pipeline.split("full") == [whole[a * QA + i] for a in kept for i in range(QA)]
    assert len(pipeline.split("retain99")) == 38 * QA and len(pipeline.split("retain90")) == 36 * QA
    assert pipeline.eval_sets({"retain"})["retain"] == load_benchmark_split(SHARED_TOFU, "retain_perturbed")
    if forget_set == "validation":  # authors 196-197, with TOFU's perturbed answers
        assert pipeline.forget_items() == whole[196 * QA : 198 * QA]
        assert len(pipeline.benchmark.oracle_items()) == 38 * QA
    else:
        assert pipeline.forget_items() == load_benchmark_split(SHARED_TOFU, "forget01")
        assert pipeline.benchmark.oracle_items() == pipeline.split("retain99")
