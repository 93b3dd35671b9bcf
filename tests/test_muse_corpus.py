"""Raw MUSE corpora, the preflight check of a MUSE folder, and fetching a MUSE dataset from the hub (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msa_bench.data.muse import (
    KNOWMEM_RETAIN,
    MUSE_EVAL_SET_NAMES,
    MUSE_HUB_FILES,
    PRIVLEAK_HOLDOUT,
    VERBMEM_FORGET,
    MuseDataNotFoundError,
    check_muse_folder,
    load_muse_corpus,
    load_muse_eval_sets,
    muse_required_files,
)
from msa_bench.data.sources import DataSourceError, download_muse

REPO_ROOT = Path(__file__).parents[1]
MUSE_NEWS_DIR = REPO_ROOT.parent / "shared" / "data" / "muse-news"

EVAL_FILES = [
    "verbmem/forget.json",
    "knowmem/forget_qa.json",
    "knowmem/forget_qa_icl.json",
    "knowmem/retain2_qa.json",
    "knowmem/retain2_qa_icl.json",
    "privleak/forget.json",
    "privleak/holdout.json",
]


def muse_news_dir() -> Path:
    if not MUSE_NEWS_DIR.is_dir():
        pytest.skip(f"MUSE-News data not found at {MUSE_NEWS_DIR}")
    return MUSE_NEWS_DIR


def write_json(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")


def write_small_muse_news_copy(root: Path) -> None:
    """A MUSE folder laid out like ../shared/data/muse-news: no raw retain/holdout corpora."""
    qa = [{"question": "Who?", "answer": "Ann"}, {"question": "Where?", "answer": "Oslo"}]
    write_json(root / "raw" / "forget.json", ["forget article one", "forget article two"])
    write_json(root / "verbmem" / "forget.json", [{"prompt": "Once upon", "gt": "a time"}])
    for stem in ("forget_qa", "retain2_qa"):
        write_json(root / "knowmem" / f"{stem}.json", qa)
        write_json(root / "knowmem" / f"{stem}_icl.json", qa[:1])
    for split in ("forget", "holdout", "retain2"):
        write_json(root / "privleak" / f"{split}.json", [f"{split} text"])


# ------------------------------------------------------------------------------------------------ load_muse_corpus
def test_raw_forget_corpus_of_muse_news_loads():
    documents = load_muse_corpus(muse_news_dir(), "raw/forget.json")
    assert len(documents) == 888  # 889 articles, one of them (index 821) empty and skipped
    assert all(isinstance(document, str) and document.strip() for document in documents)
    assert documents[0].startswith("Greek Prime Minister Kyriakos Mitsotakis")


def test_max_documents_keeps_the_first_documents():
    folder = muse_news_dir()
    first = load_muse_corpus(folder, "raw/forget.json", max_documents=5)
    assert first == load_muse_corpus(folder, "raw/forget.json")[:5]
    # The privleak sample of retain2 is a stand-in retain corpus.
    assert len(load_muse_corpus(folder, "privleak/retain2.json", max_documents=1000)) == 100


def test_max_documents_must_be_positive(tmp_path):
    write_json(tmp_path / "raw" / "forget.json", ["a"])
    with pytest.raises(ValueError, match="max_documents"):
        load_muse_corpus(tmp_path, "raw/forget.json", max_documents=0)


def test_text_records_and_jsonl_are_read(tmp_path):
    write_json(tmp_path / "raw" / "forget.json", [{"text": "doc one", "id": 1}, {"text": "doc two"}])
    assert load_muse_corpus(tmp_path, "raw/forget.json") == ["doc one", "doc two"]
    lines = [json.dumps({"text": "line one"}), json.dumps("line two"), ""]
    (tmp_path / "raw" / "retain1.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert load_muse_corpus(tmp_path, "raw/retain1.jsonl") == ["line one", "line two"]
    # The split is found under another suffix too (the config names .json, the folder holds .jsonl).
    assert load_muse_corpus(tmp_path, "raw/retain1.json", max_documents=1) == ["line one"]


def test_parquet_shards_are_read(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    shard_dir = tmp_path / "raw"
    shard_dir.mkdir()
    pq.write_table(pa.table({"text": ["a b", "c d"]}), shard_dir / "forget-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": ["e f"]}), shard_dir / "forget-00001-of-00002.parquet")
    assert load_muse_corpus(tmp_path, "raw/forget.json") == ["a b", "c d", "e f"]


def test_empty_and_malformed_corpora_are_errors(tmp_path):
    write_json(tmp_path / "raw" / "forget.json", [])
    with pytest.raises(ValueError, match=r"forget\.json holds no documents"):
        load_muse_corpus(tmp_path, "raw/forget.json")
    write_json(tmp_path / "raw" / "forget.json", ["", " \n"])
    with pytest.raises(ValueError, match=r"forget\.json holds no documents"):
        load_muse_corpus(tmp_path, "raw/forget.json")
    write_json(tmp_path / "raw" / "forget.json", ["fine", {"body": "no text field"}])
    with pytest.raises(ValueError, match=r"document 1 of .*forget\.json"):
        load_muse_corpus(tmp_path, "raw/forget.json")


def test_empty_documents_are_skipped(tmp_path):
    write_json(tmp_path / "raw" / "forget.json", ["one", "", {"text": "  "}, "two", "three"])
    assert load_muse_corpus(tmp_path, "raw/forget.json") == ["one", "two", "three"]
    assert load_muse_corpus(tmp_path, "raw/forget.json", max_documents=2) == ["one", "two"]


def test_missing_corpus_names_the_path_and_the_key(tmp_path):
    with pytest.raises(MuseDataNotFoundError) as error:
        load_muse_corpus(tmp_path, "raw/forget.json", key="benchmark.forget_corpus")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert str((tmp_path / "raw" / "forget.json").resolve()) in message
    assert "benchmark.forget_corpus=raw/forget.json" in message and "benchmark.data_dir" in message
    assert "../shared/data" not in message  # not a partial MUSE-News copy: no stand-in hint
    # Without `key`, both corpus keys are named.
    with pytest.raises(MuseDataNotFoundError, match=r"benchmark\.forget_corpus / benchmark\.retain_corpus"):
        load_muse_corpus(tmp_path, "raw/forget.json")


def test_missing_raw_retain_of_muse_news_suggests_the_stand_in():
    with pytest.raises(MuseDataNotFoundError) as error:
        load_muse_corpus(muse_news_dir(), "raw/retain1.json", key="benchmark.retain_corpus")
    message = str(error.value)
    assert str(MUSE_NEWS_DIR.resolve() / "raw" / "retain1.json") in message
    assert "benchmark.retain_corpus=raw/retain1.json" in message
    assert "not in ../shared/data" in message
    assert "benchmark.retain_corpus=privleak/retain2.json" in message


# ---------------------------------------------------------------------------------------------- check_muse_folder
def test_required_files_are_the_corpora_and_the_eval_files():
    assert muse_required_files("raw/forget.json", "raw/retain1.json") == [
        "raw/forget.json",
        "raw/retain1.json",
        *EVAL_FILES,
    ]
    assert muse_required_files("raw/forget.json", "raw/forget.json")[:2] == [
        "raw/forget.json",
        "verbmem/forget.json",
    ]


def test_empty_folder_lists_every_missing_file_at_once(tmp_path):
    with pytest.raises(MuseDataNotFoundError) as error:
        check_muse_folder(tmp_path, "raw/forget.json", "raw/retain1.json")
    message = str(error.value)
    for relative_path in ["raw/forget.json", "raw/retain1.json", *EVAL_FILES]:
        assert str((tmp_path / relative_path).resolve()) in message
    assert "lacks 9 of the 9 files" in message
    assert f"benchmark.data_dir={tmp_path.resolve()}" in message
    assert "benchmark.forget_corpus=raw/forget.json" in message
    assert "benchmark.retain_corpus=raw/retain1.json" in message
    assert "forget_knowmem_ROUGE" in message  # what each eval file is needed for
    assert "muse-bench/MUSE-News or muse-bench/MUSE-Books" in message
    assert "not distributed with the project" in message and "muse-books/" in message
    assert "MSA_BENCH_DATA" in message
    assert "stand-in" not in message  # no raw forget corpus: not a partial MUSE-News copy


def test_missing_folder_is_named_with_the_given_key(tmp_path):
    with pytest.raises(
        MuseDataNotFoundError, match=r"metrics\.muse\.data_dir=.*nowhere \(the folder does not exist\)"
    ):
        check_muse_folder(
            tmp_path / "nowhere", "raw/forget.json", "raw/retain1.json", key="metrics.muse.data_dir"
        )


def test_muse_news_like_copy_lacks_only_the_raw_retain_corpus(tmp_path):
    write_small_muse_news_copy(tmp_path)
    with pytest.raises(MuseDataNotFoundError) as error:
        check_muse_folder(tmp_path, "raw/forget.json", "raw/retain1.json")
    message = str(error.value)
    assert "lacks 1 of the 9 files" in message
    missing_lines = [line for line in message.splitlines() if line.startswith("  - ")]
    assert missing_lines == [
        f"  - {(tmp_path / 'raw' / 'retain1.json').resolve()} "
        "(the retain corpus, benchmark.retain_corpus=raw/retain1.json)"
    ]
    assert "benchmark.retain_corpus=privleak/retain2.json" in message
    # The stand-in passes the check, and so does the real (partial) MUSE-News copy.
    check_muse_folder(tmp_path, "raw/forget.json", "privleak/retain2.json")
    if MUSE_NEWS_DIR.is_dir():
        check_muse_folder(MUSE_NEWS_DIR, "raw/forget.json", "privleak/retain2.json")


def test_hub_names_and_other_layouts_pass_the_check(tmp_path):
    write_small_muse_news_copy(tmp_path)
    # Rename to the hub's split names and other suffixes: the loaders accept them, so the check must too.
    knowmem = tmp_path / "knowmem"
    (knowmem / "retain2_qa.json").rename(knowmem / "retain_qa.json")
    (knowmem / "retain2_qa_icl.json").rename(knowmem / "retain_qa_icl.json")
    (tmp_path / "privleak" / "retain2.json").rename(tmp_path / "privleak" / "retain.json")
    verbmem = json.loads((tmp_path / "verbmem" / "forget.json").read_text())
    (tmp_path / "verbmem" / "forget.json").unlink()
    (tmp_path / "verbmem" / "forget.jsonl").write_text("\n".join(json.dumps(r) for r in verbmem))
    check_muse_folder(tmp_path, "raw/forget.json", "privleak/retain2.json")
    assert load_muse_corpus(tmp_path, "privleak/retain2.json") == ["retain2 text"]
    assert set(load_muse_eval_sets(tmp_path)) == set(MUSE_EVAL_SET_NAMES)


# --------------------------------------------------------------------------------------------------- download_muse
def test_download_without_network_names_hub_id_config_and_split(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError) as error:
        download_muse("muse-bench/MUSE-News", tmp_path)
    message = str(error.value)
    assert "could not load 'muse-bench/MUSE-News' config 'raw' split 'forget'" in message
    assert "ConnectionError: hub unreachable" in message
    assert "benchmark.data_dir" in message and "MSA_BENCH_DATA" in message
    assert isinstance(error.value, FileNotFoundError)


def fake_hub_record(config: str, split: str, index: int) -> dict:
    if config == "verbmem":
        return {"prompt": f"{split} prompt {index}", "gt": f"{split} continuation {index}"}
    if config == "knowmem":
        return {"question": f"{split} question {index}?", "answer": f"{split} answer {index}"}
    return {"text": f"{config} {split} document {index}", "extra": index}


def test_download_writes_the_layout_the_loaders_read(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        return [fake_hub_record(config, split, index) for index in range(3)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = download_muse("muse-bench/MUSE-Books", tmp_path)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(entry.path for entry in MUSE_HUB_FILES)
    assert written == sorted(
        [
            "raw/forget.json",
            "raw/retain1.json",
            "raw/retain2.json",
            "raw/holdout.json",
            "verbmem/forget.json",
            "knowmem/forget_qa.json",
            "knowmem/forget_qa_icl.json",
            "knowmem/retain2_qa.json",
            "knowmem/retain2_qa_icl.json",
            "privleak/forget.json",
            "privleak/retain2.json",
            "privleak/holdout.json",
            "train/forget.json",
            "train/retain1.json",
            "train/retain2.json",
        ]
    )
    assert ("muse-bench/MUSE-Books", "knowmem", "retain_qa") in calls
    assert ("muse-bench/MUSE-Books", "privleak", "retain") in calls
    assert result == {"hub_id": "muse-bench/MUSE-Books", "counts": dict.fromkeys(written, 3)}
    # Text splits are lists of strings, as in ../shared/data/muse-news.
    assert json.loads((tmp_path / "raw" / "retain1.json").read_text()) == [
        f"raw retain1 document {index}" for index in range(3)
    ]
    # Round trip through the loaders.
    check_muse_folder(tmp_path, "raw/forget.json", "raw/retain1.json")
    assert load_muse_corpus(tmp_path, "raw/forget.json", max_documents=2) == [
        "raw forget document 0",
        "raw forget document 1",
    ]
    assert load_muse_corpus(tmp_path, "train/retain2.json")[-1] == "train retain2 document 2"
    sets = load_muse_eval_sets(tmp_path)
    assert sets[KNOWMEM_RETAIN][0] == {"question": "retain_qa question 0?", "answer": "retain_qa answer 0"}
    assert sets[VERBMEM_FORGET][2] == {"prompt": "forget prompt 2", "gt": "forget continuation 2"}
    assert sets[PRIVLEAK_HOLDOUT] == [{"text": f"privleak holdout document {index}"} for index in range(3)]


def test_download_of_only_the_files_a_run_reads(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(hub_id, config, split):
        calls.append((config, split))
        return [fake_hub_record(config, split, 0)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    files = muse_required_files("raw/forget.json", "privleak/retain2.json")
    result = download_muse("muse-bench/MUSE-News", tmp_path, files=files)
    assert sorted(result["counts"]) == sorted(files)
    assert ("privleak", "retain") in calls and ("raw", "retain1") not in calls
    check_muse_folder(tmp_path, "raw/forget.json", "privleak/retain2.json")
    with pytest.raises(DataSourceError, match=r"'raw/extra\.json' is not a split of the MUSE hub dataset"):
        download_muse("muse-bench/MUSE-News", tmp_path, files=["raw/extra.json"])


def test_download_rejects_records_without_the_expected_fields(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, config, split: [{"body": "x"}])
    with pytest.raises(
        DataSourceError, match=r"'muse-bench/MUSE-News' config 'raw' split 'forget'.*\['text'\]"
    ):
        download_muse("muse-bench/MUSE-News", tmp_path, files=["raw/forget.json"])
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, config, split: [])
    with pytest.raises(DataSourceError, match="holds no records"):
        download_muse("muse-bench/MUSE-News", tmp_path, files=["raw/forget.json"])


def test_shared_muse_news_matches_the_download_layout():
    """The on-disk copy uses the file names download_muse writes (for the splits it has)."""
    folder = muse_news_dir()
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.json")}
    assert on_disk <= {entry.path for entry in MUSE_HUB_FILES}
