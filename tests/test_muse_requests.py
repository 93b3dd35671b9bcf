"""MUSE's sequential deletion requests (benchmark.requests, docs/sequential_requests.md): the split of the forget
corpus by document, the attribution of its forget eval items to articles and requests
(msa_bench/data/muse_attribution.py), the per-request eval sets, and what results.json records of them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from msa_bench.data.muse_attribution import (
    DROPPED,
    NO_SOURCE,
    SPANS_REQUESTS,
    QuestionMatcher,
    attribute_to_requests,
    eval_item_sources,
    passage_sources,
)
from msa_bench.errors import BenchmarkError
from msa_bench.sequential.driver import checked_requests, request_records
from tests.benchmark_fixtures import muse_smoke_pipeline, write_tiny_muse
from tests.pipeline_runs import run_job
from tests.test_muse_data import MUSE_NEWS_DIR, needs_muse_news


def _articles(folder: Path) -> list[str]:
    return json.loads((folder / "raw" / "forget.json").read_text())


def _muse_folder(tmp_path: Path) -> Path:
    """The tiny MUSE folder (6 forget articles: Leeds, York, Bath | Hull, Derby, Ely for 2 requests), with eval items
    in both halves, one passage across the two halves, an unanswerable question and a fact stated in both halves."""
    folder = write_tiny_muse(tmp_path / "muse")
    articles = _articles(folder)
    # Across Bath's end and Hull's start, with the whitespace MUSE's passages have around punctuation.
    across = (articles[2][-80:] + "\n\n" + articles[3][:80]).replace(". ", " . ")
    verbmem = [{"prompt": text[:120], "gt": text[120:200]} for text in articles]
    verbmem.append({"prompt": across[:100], "gt": across[100:]})
    knowmem = [
        {"question": f"How much would the plan for {topic} cost?", "answer": f"{k + 3} million pounds"}
        for k, topic in enumerate(["Leeds", "York", "Bath", "Hull"])
    ]
    knowmem += [
        {"question": "Who won the cup final at Wembley?", "answer": "Arsenal"},  # in no article
        # "the spring" is in every article; the question matches Leeds's and Hull's alike.
        {"question": "By when would the work in Leeds and Hull be finished?", "answer": "the spring"},
    ]
    privleak = [articles[0], articles[1], articles[4], articles[5], across]
    for relative, records in {
        "verbmem/forget.json": verbmem,
        "knowmem/forget_qa.json": knowmem,
        "privleak/forget.json": privleak,
    }.items():
        (folder / relative).write_text(json.dumps(records))
    return folder


def _benchmark(tmp_path: Path, folder: Path, overrides=()):
    return muse_smoke_pipeline(tmp_path, folder, *overrides)


def test_the_requests_are_contiguous_blocks_of_documents_covering_the_corpus(tmp_path):
    benchmark = _benchmark(tmp_path, write_tiny_muse(tmp_path / "muse")).benchmark
    requests = benchmark.deletion_requests(4)
    assert [r.units for r in requests] == [
        ("document 1", "document 2"),
        ("document 3", "document 4"),
        ("document 5",),
        ("document 6",),
    ]
    assert [item for r in requests for item in r.items] == benchmark.forget_items()  # in order, each once
    assert len({r.data_id for r in requests}) == 4


def test_more_requests_than_documents_is_an_error_giving_the_maximum(tmp_path):
    benchmark = _benchmark(tmp_path, write_tiny_muse(tmp_path / "muse")).benchmark
    with pytest.raises(BenchmarkError, match=r"larger than the 6 documents of forget.*benchmark.requests=6"):
        benchmark.deletion_requests(7)
    truncated = _benchmark(tmp_path, tmp_path / "muse", ["benchmark.max_documents=3"]).benchmark
    with pytest.raises(BenchmarkError, match="maximum is benchmark.requests=3"):
        truncated.deletion_requests(4)


def test_a_passage_comes_from_every_article_it_overlaps_whitespace_aside():
    articles = [
        "First story. It ends here.",
        "Second story starts here.",
        "Third story.",
        "Second story starts here.",
    ]
    passages = [
        "ends here . Second story",  # across articles 0 and 1, spaced as MUSE's passages are
        "It ends\nhere.",  # inside article 0
        "Third story",  # inside article 2
        "Third story. Second story starts",  # across 2 and 3
        "Second story starts here.",  # an article held twice: both copies
        "not in the corpus",
    ]
    assert passage_sources(passages, articles) == [
        frozenset({0, 1}),
        frozenset({0}),
        frozenset({2}),
        frozenset({2, 3}),
        frozenset({1, 3}),
        frozenset(),
    ]


def test_a_question_comes_from_the_articles_that_hold_its_answer_and_match_it():
    articles = [
        "The Leeds council said the bridge would cost 3 million pounds and open in 2004.",
        "The York council said the museum would open in 2004 after a long delay.",
        "Farmers in Devon reported a poor harvest, with 3 million pounds of losses since 2004.",
        "The York council said the museum would open in 2004 after a long delay.",  # a copy
    ]
    matcher = QuestionMatcher(articles)
    # The answer is in articles 0 and 2; the question matches article 0.
    assert matcher.sources("How much would the Leeds bridge cost?", "3 million pounds.") == {0}
    # Every article holds 2004; the York museum is in two copies, both sources.
    assert matcher.sources("When would the York museum open?", "2004") == {1, 3}
    assert matcher.sources("Who won the cup?", "Arsenal") == frozenset()  # in no article
    # The answer is in an article, but nothing of the question is: a coincidence, not a source.
    assert matcher.sources("When did the Romans reach Britain?", "2004") == frozenset()


def test_items_are_attributed_to_one_request_or_left_out_and_counted():
    sources = {"set": {("a",): frozenset({0, 1}), ("b",): frozenset({2}), ("c",): frozenset({1, 2})}}
    sources["set"] |= {("d",): frozenset(), ("e",): frozenset({3, 4})}
    attribution = attribute_to_requests(sources, [1, 1, 2, 2])  # article 4 is dropped by max_documents
    assert attribution.request_of == {"set": {("a",): 1, ("b",): 2}}
    assert attribution.left_out == {"set": {DROPPED: 1, NO_SOURCE: 1, SPANS_REQUESTS: 1}}
    assert attribution.counts(1) == {"set": 1}


def test_each_request_is_evaluated_on_the_items_of_its_articles(tmp_path):
    folder = _muse_folder(tmp_path)
    benchmark = _benchmark(tmp_path, folder, ["benchmark.requests=2"]).benchmark
    articles = _articles(folder)
    first, second = benchmark.deletion_requests(2)
    sets = benchmark.eval_sets(set(benchmark.default_eval_sets))
    own = benchmark.request_eval_sets(sets, first.items)
    assert [item["prompt"][:120] for item in own["muse_verbmem_forget"]] == [a[:120] for a in articles[:3]]
    assert [item["answer"] for item in own["muse_knowmem_forget"]] == [
        "3 million pounds",
        "4 million pounds",
        "5 million pounds",
    ]
    assert own["muse_privleak_forget"] == [{"text": articles[0]}, {"text": articles[1]}]
    for name in ("muse_knowmem_retain", "muse_privleak_holdout", "muse_knowmem_forget_icl"):
        assert own[name] == sets[name]
    later = benchmark.request_eval_sets(sets, second.items)
    assert [item["answer"] for item in later["muse_knowmem_forget"]] == ["6 million pounds"]
    assert later["muse_privleak_forget"] == [{"text": articles[4]}, {"text": articles[5]}]
    # Both requests: every item but the passage across them, the unanswerable and the twice-stated question.
    both = benchmark.request_eval_sets(sets, first.items + second.items)
    assert len(both["muse_verbmem_forget"]) == 6 and len(both["muse_knowmem_forget"]) == 4
    assert len(both["muse_privleak_forget"]) == 4
    assert benchmark.request_eval_items([first, second]) == [
        {"muse_verbmem_forget": 3, "muse_knowmem_forget": 3, "muse_privleak_forget": 2},
        {"muse_verbmem_forget": 3, "muse_knowmem_forget": 1, "muse_privleak_forget": 2},
    ]
    assert benchmark.request_eval_left_out([first, second]) == {
        "muse_verbmem_forget": {SPANS_REQUESTS: 1},
        "muse_knowmem_forget": {NO_SOURCE: 1, SPANS_REQUESTS: 1},
        "muse_privleak_forget": {SPANS_REQUESTS: 1},
    }
    records = request_records(benchmark, [first, second])
    assert records[1]["eval_items"]["muse_knowmem_forget"] == 1
    assert records[0]["eval_items_left_out"] == records[1]["eval_items_left_out"]
    assert records[0]["units"] == ["document 1", "document 2", "document 3"]


def test_items_of_documents_max_documents_drops_are_in_no_request(tmp_path):
    folder = _muse_folder(tmp_path)
    benchmark = _benchmark(tmp_path, folder, ["benchmark.max_documents=4", "benchmark.requests=2"]).benchmark
    requests = benchmark.deletion_requests(2)
    assert [r.units for r in requests] == [("document 1", "document 2"), ("document 3", "document 4")]
    left_out = benchmark.request_eval_left_out(requests)
    assert left_out["muse_verbmem_forget"] == {DROPPED: 2}  # Derby's and Ely's
    assert left_out["muse_privleak_forget"] == {DROPPED: 2}  # Derby's and Ely's
    sets = benchmark.eval_sets({"muse_privleak_forget", "muse_verbmem_forget"})
    kept = benchmark.request_eval_sets(sets, [item for r in requests for item in r.items])
    # The passage across Bath and Hull is in request 2 (documents 3 and 4) now.
    assert len(kept["muse_verbmem_forget"]) == 5 and len(kept["muse_privleak_forget"]) == 3
    assert benchmark.request_eval_items(requests)[1] == {
        "muse_verbmem_forget": 3,
        "muse_knowmem_forget": 2,
        "muse_privleak_forget": 1,
    }


def test_a_request_left_without_items_of_a_read_set_fails_before_training(tmp_path):
    # The plain tiny folder's knowmem and privleak items are all about the first three articles.
    folder = write_tiny_muse(tmp_path / "muse")
    pipeline = _benchmark(tmp_path, folder, ["benchmark.requests=2"])
    with pytest.raises(BenchmarkError, match=r"request 2 \(document 4 to document 6\) holds no item of "):
        checked_requests(pipeline)
    # Read by no metric of the run, an empty set is no obstacle.
    only_verbmem = _benchmark(
        tmp_path, folder, ["benchmark.requests=2", "metrics.names=[forget_verbmem_ROUGE]"]
    )
    assert len(checked_requests(only_verbmem)[0]) == 2


@needs_muse_news
def test_muse_news_items_attribute_to_articles_and_requests():
    from msa_bench.data.muse import load_muse_corpus, load_muse_eval_sets

    started = time.perf_counter()
    sources = eval_item_sources(
        load_muse_eval_sets(MUSE_NEWS_DIR), load_muse_corpus(MUSE_NEWS_DIR, "raw/forget.json")
    )
    assert time.perf_counter() - started < 30
    found = {name: sum(bool(documents) for documents in items.values()) for name, items in sources.items()}
    assert found == {"muse_verbmem_forget": 100, "muse_knowmem_forget": 48, "muse_privleak_forget": 100}
    # 888 articles in 3 requests of 296, as benchmark.requests=3 cuts them.
    attribution = attribute_to_requests(sources, [1 + p // 296 for p in range(888)])
    assert [attribution.counts(k) for k in (1, 2, 3)] == [
        {"muse_verbmem_forget": 39, "muse_knowmem_forget": 9, "muse_privleak_forget": 34},
        {"muse_verbmem_forget": 34, "muse_knowmem_forget": 14, "muse_privleak_forget": 27},
        {"muse_verbmem_forget": 27, "muse_knowmem_forget": 14, "muse_privleak_forget": 38},
    ]
    assert attribution.left_out == {
        "muse_knowmem_forget": {NO_SOURCE: 52, SPANS_REQUESTS: 11},
        "muse_privleak_forget": {SPANS_REQUESTS: 1},
    }


@pytest.mark.slow
def test_a_muse_run_unlearns_two_requests_and_records_their_items(tmp_path):
    from tests.test_benchmarks import MUSE_SMOKE

    folder = _muse_folder(tmp_path)
    results = run_job(
        tmp_path / "cache",
        tmp_path / "run",
        [*MUSE_SMOKE, f"benchmark.data_dir={folder}", "benchmark.requests=2"],
    )
    metrics, provenance = results["metrics"], results["metric_provenance"]
    for k in (1, 2):
        for name in ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "muse_mia_min_k"):
            assert isinstance(metrics[f"request/{k}/forget/{name}"], float), (k, name)
        # On 2 forget texts against 3 holdout ones an oracle's AUC of 1 is likely: privleak is then undefined.
        privleak = f"request/{k}/forget/muse_privleak"
        assert isinstance(metrics[privleak], float) or provenance[privleak].startswith("undefined: privleak")
        assert isinstance(metrics[f"request/{k}/utility/retain_knowmem_ROUGE"], float)
    assert isinstance(metrics["request/2/persistence/forget_knowmem_ROUGE"], float)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["eval_items"]["muse_knowmem_forget"] for r in on_disk["requests"]] == [3, 1]
    assert on_disk["requests"][0]["eval_items_left_out"]["muse_knowmem_forget"] == {
        NO_SOURCE: 1,
        SPANS_REQUESTS: 1,
    }
