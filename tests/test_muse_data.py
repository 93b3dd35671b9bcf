"""Loading MUSE eval sets from a MUSE-layout folder, and building them from TOFU-style items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msa_bench.data.muse import (
    KNOWMEM_FORGET,
    KNOWMEM_FORGET_ICL,
    KNOWMEM_RETAIN,
    KNOWMEM_RETAIN_ICL,
    MUSE_EVAL_SET_NAMES,
    PRIVLEAK_FORGET,
    PRIVLEAK_HOLDOUT,
    VERBMEM_FORGET,
    load_muse_eval_sets,
    muse_sets_from_tofu_items,
)

REPO_ROOT = Path(__file__).parents[1]
MUSE_NEWS_DIR = REPO_ROOT.parent / "shared" / "data" / "muse-news"
needs_muse_news = pytest.mark.skipif(
    not MUSE_NEWS_DIR.is_dir(), reason=f"MUSE-News data not found at {MUSE_NEWS_DIR}"
)


def write_json(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")


def write_minimal_muse_folder(root: Path, retain_stem: str = "retain2_qa") -> None:
    qa = [{"question": "Who?", "answer": "Ann"}, {"question": "Where?", "answer": "Oslo"}]
    write_json(root / "knowmem" / "forget_qa.json", qa)
    write_json(root / "knowmem" / "forget_qa_icl.json", qa[:1])
    write_json(root / "knowmem" / f"{retain_stem}.json", qa)
    write_json(root / "knowmem" / f"{retain_stem}_icl.json", qa[1:])
    write_json(root / "verbmem" / "forget.json", [{"prompt": "Once upon", "gt": "a time"}])
    write_json(root / "privleak" / "forget.json", ["member text one", "member text two"])
    write_json(root / "privleak" / "holdout.json", [{"text": "unseen text"}])


@needs_muse_news
def test_muse_news_folder_loads_with_the_expected_counts():
    sets = load_muse_eval_sets(MUSE_NEWS_DIR)
    counts = {name: len(records) for name, records in sets.items()}
    assert counts == {
        VERBMEM_FORGET: 100,
        KNOWMEM_FORGET: 100,
        KNOWMEM_FORGET_ICL: 10,
        KNOWMEM_RETAIN: 100,
        KNOWMEM_RETAIN_ICL: 10,
        PRIVLEAK_FORGET: 100,
        PRIVLEAK_HOLDOUT: 100,
    }
    assert set(sets[VERBMEM_FORGET][0]) == {"prompt", "gt"}
    assert sets[KNOWMEM_FORGET][0] == {
        "question": "What year did the Orkney Islands become part of Scotland?",
        "answer": "1472",
    }
    # privleak files are bare strings on disk; every loader returns {text} records.
    assert set(sets[PRIVLEAK_HOLDOUT][0]) == {"text"} and len(sets[PRIVLEAK_HOLDOUT][0]["text"]) > 1000


@needs_muse_news
def test_only_the_requested_sets_are_read():
    sets = load_muse_eval_sets(MUSE_NEWS_DIR, names=[KNOWMEM_RETAIN])
    assert list(sets) == [KNOWMEM_RETAIN] and len(sets[KNOWMEM_RETAIN]) == 100


def test_missing_file_names_its_path_and_the_metric_that_needs_it(tmp_path):
    write_minimal_muse_folder(tmp_path)
    (tmp_path / "verbmem" / "forget.json").unlink()
    with pytest.raises(FileNotFoundError) as error:
        load_muse_eval_sets(tmp_path)
    message = str(error.value)
    assert str((tmp_path / "verbmem" / "forget.json").resolve()) in message
    assert "forget_verbmem_ROUGE" in message and "muse_extraction_strength" in message


def test_hub_retain_qa_naming_is_accepted_for_retain2(tmp_path):
    write_minimal_muse_folder(tmp_path, retain_stem="retain_qa")  # MUSE-Books / hub naming
    sets = load_muse_eval_sets(tmp_path)
    assert len(sets[KNOWMEM_RETAIN]) == 2 and sets[KNOWMEM_RETAIN_ICL] == [
        {"question": "Where?", "answer": "Oslo"}
    ]
    assert sets[PRIVLEAK_FORGET] == [{"text": "member text one"}, {"text": "member text two"}]


def test_jsonl_and_parquet_shards_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_minimal_muse_folder(tmp_path)
    (tmp_path / "privleak" / "holdout.json").unlink()
    (tmp_path / "privleak" / "holdout.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    (tmp_path / "knowmem" / "forget_qa.json").unlink()
    table = pa.Table.from_pylist([{"question": "Q?", "answer": "A", "index": 0}])
    pq.write_table(table, tmp_path / "knowmem" / "forget_qa-00000-of-00001.parquet")
    sets = load_muse_eval_sets(tmp_path)
    assert sets[PRIVLEAK_HOLDOUT] == [{"text": "a"}, {"text": "b"}]
    assert sets[KNOWMEM_FORGET] == [{"question": "Q?", "answer": "A"}]


def test_malformed_records_are_rejected_with_their_index(tmp_path):
    write_minimal_muse_folder(tmp_path)
    write_json(tmp_path / "verbmem" / "forget.json", [{"prompt": "x", "gt": "y"}, {"prompt": "x"}])
    with pytest.raises(ValueError, match="record 1 .*'gt'"):
        load_muse_eval_sets(tmp_path)


def tofu_item(subject: str, index: int) -> dict:
    return {
        "question": f"What did {subject} write in year {index}?",
        "answer": f"{subject} wrote book {index}.",
        "paraphrased_answer": "unused",
    }


def test_sets_from_tofu_items_follow_the_muse_formats():
    forget = [tofu_item("Ann", i) for i in range(3)]
    retain = [tofu_item("Bob", i) for i in range(2)]
    holdout = [tofu_item("Cy", i) for i in range(3)]
    icl = [tofu_item("Dee", i) for i in range(12)]
    sets = muse_sets_from_tofu_items(forget, retain, holdout, icl)
    assert set(sets) == set(MUSE_EVAL_SET_NAMES)
    assert sets[KNOWMEM_FORGET][0] == {"question": forget[0]["question"], "answer": forget[0]["answer"]}
    assert len(sets[KNOWMEM_RETAIN]) == 2
    assert len(sets[KNOWMEM_FORGET_ICL]) == 10 and sets[KNOWMEM_FORGET_ICL] == sets[KNOWMEM_RETAIN_ICL]
    assert sets[VERBMEM_FORGET][1] == {
        "prompt": f"Question: {forget[1]['question']}\nAnswer:",
        "gt": forget[1]["answer"],
    }
    assert sets[PRIVLEAK_FORGET][2] == {
        "text": f"Question: {forget[2]['question']}\nAnswer: {forget[2]['answer']}"
    }
    assert [record["text"] for record in sets[PRIVLEAK_HOLDOUT]] == [
        f"Question: {item['question']}\nAnswer: {item['answer']}" for item in holdout
    ]


def test_icl_examples_must_not_be_evaluated_items():
    forget = [tofu_item("Ann", i) for i in range(2)]
    with pytest.raises(ValueError, match="in-context examples must not be evaluated items"):
        muse_sets_from_tofu_items(forget, [tofu_item("Bob", 0)], [tofu_item("Cy", 0)], forget[:1])


def test_raw_forget_documents_become_verbmem_excerpts():
    items = [tofu_item("Ann", 0)]
    sets = muse_sets_from_tofu_items(
        items,
        items[:1],
        [tofu_item("Cy", 0)],
        [tofu_item("Dee", 0)],
        pretraining_texts=["one two three four five"],
    )
    assert sets[VERBMEM_FORGET] == [{"prompt": "one two", "gt": "three four five"}]
