"""MUSE raw corpora and folder checks.

The raw corpora a MUSE run trains on (`load_muse_corpus`: e.g. `raw/forget.json`, `raw/retain1.json`) are lists of
document strings; `check_muse_folder` checks that every file a run reads is there before anything trains, and
`MUSE_HUB_FILES` maps each hub (config, split) to its local file (see `msa_bench.data.sources.download_muse`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from msa_bench.data.muse_eval_sets import (
    EVAL_SET_USERS,
    eval_set_file_stems,
    read_records,
    retain_qa_stems,
    split_files,
)
from msa_bench.errors import MalformedDataError, MuseDataNotFoundError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- raw corpora
# A MUSE benchmark run trains on two raw corpora (the forget corpus and a retain corpus), named relative to the MUSE
# folder by these config keys, and evaluates on the seven eval sets above.
FORGET_CORPUS_KEY = "benchmark.forget_corpus"
RETAIN_CORPUS_KEY = "benchmark.retain_corpus"
DATA_DIR_KEY = "benchmark.data_dir"

_RAW_RETAIN_STEMS = ("retain1", "retain2", "holdout")
_RETAIN_STAND_IN = "privleak/retain2.json"

# Other names a split's file may carry: the hub names the knowmem retain QA `retain_qa` and the privleak retain
# split `retain` (both are about the retain2 corpus); local copies name them after the corpus.
_STEM_ALIASES: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("knowmem", "retain2_qa"): "retain_qa",
        ("knowmem", "retain_qa"): "retain2_qa",
        ("knowmem", "retain2_qa_icl"): "retain_qa_icl",
        ("knowmem", "retain_qa_icl"): "retain2_qa_icl",
        ("privleak", "retain2"): "retain",
        ("privleak", "retain"): "retain2",
    }
)


class MuseHubFile(NamedTuple):
    """One split of the hub datasets muse-bench/MUSE-News and MUSE-Books, and the file it is kept as locally."""

    config: str
    split: str
    path: str  # relative to the MUSE folder
    fields: tuple[str, ...]  # ("text",) splits are written as a JSON list of strings


# Every hub split and its local file. The retain QA and privleak retain splits are named after the corpus they are
# about (retain2), as in ../shared/data/muse-news; the loaders accept the hub names too.
MUSE_HUB_FILES: tuple[MuseHubFile, ...] = (
    MuseHubFile("raw", "forget", "raw/forget.json", ("text",)),
    MuseHubFile("raw", "retain1", "raw/retain1.json", ("text",)),
    MuseHubFile("raw", "retain2", "raw/retain2.json", ("text",)),
    MuseHubFile("raw", "holdout", "raw/holdout.json", ("text",)),
    MuseHubFile("verbmem", "forget", "verbmem/forget.json", ("prompt", "gt")),
    MuseHubFile("knowmem", "forget_qa", "knowmem/forget_qa.json", ("question", "answer")),
    MuseHubFile("knowmem", "forget_qa_icl", "knowmem/forget_qa_icl.json", ("question", "answer")),
    MuseHubFile("knowmem", "retain_qa", "knowmem/retain2_qa.json", ("question", "answer")),
    MuseHubFile("knowmem", "retain_qa_icl", "knowmem/retain2_qa_icl.json", ("question", "answer")),
    MuseHubFile("privleak", "forget", "privleak/forget.json", ("text",)),
    MuseHubFile("privleak", "retain", "privleak/retain2.json", ("text",)),
    MuseHubFile("privleak", "holdout", "privleak/holdout.json", ("text",)),
    MuseHubFile("train", "forget", "train/forget.json", ("text",)),
    MuseHubFile("train", "retain1", "train/retain1.json", ("text",)),
    MuseHubFile("train", "retain2", "train/retain2.json", ("text",)),
)


def _path_stem(relative_path: str | Path) -> tuple[Path, str]:
    """(folder, split stem) of a relative path such as "raw/forget.json" (the suffix is optional)."""
    path = Path(relative_path)
    stem = path.stem if path.suffix in {".json", ".jsonl", ".parquet"} else path.name
    return path.parent, stem


def muse_hub_file(relative_path: str | Path) -> MuseHubFile | None:
    """The hub split a local file holds ("knowmem/retain_qa.json" and "knowmem/retain2_qa" both name the hub's
    knowmem retain_qa), or None when it is not a hub split."""
    folder, stem = _path_stem(relative_path)
    subset = folder.as_posix()
    for entry in MUSE_HUB_FILES:
        entry_folder, entry_stem = _path_stem(entry.path)
        if subset == entry_folder.as_posix() and stem in {entry_stem, entry.split}:
            return entry
    return None


def _locate(data_dir: Path, relative_path: str | Path) -> list[Path]:
    """The file(s) holding `relative_path` of a MUSE folder: the file itself, a folder of parquet shards, or the same
    split as .json / .jsonl / .parquet / hub shards, under its own name or the hub's. Empty when there are none."""
    path = Path(data_dir) / relative_path
    if path.is_file():
        return [path]
    if path.is_dir():
        shards = sorted(path.glob("*.parquet"))
        if shards:
            return shards
    folder, stem = _path_stem(path)
    stems = [stem]
    alias = _STEM_ALIASES.get((folder.name, stem))
    if alias:
        stems.append(alias)
    return next((found for candidate in stems if (found := split_files(folder, candidate))), [])


def _is_partial_muse_news(data_dir: Path, relative_path: str | Path) -> bool:
    """Whether a missing `relative_path` is a raw retain/holdout corpus of a folder that has the raw forget corpus,
    as ../shared/data/muse-news (raw/forget.json only) is."""
    folder, stem = _path_stem(relative_path)
    return (
        folder.as_posix() == "raw"
        and stem in _RAW_RETAIN_STEMS
        and bool(_locate(data_dir, "raw/forget.json"))
    )


def _raw_retain_hint(data_dir: Path) -> str:
    hint = (
        " This looks like the partial MUSE-News copy in ../shared/data: it has raw/forget.json, but the raw "
        "retain1/retain2/holdout corpora are not in ../shared/data."
    )
    if _locate(data_dir, _RETAIN_STAND_IN):
        hint += (
            f" As a stand-in retain corpus, set {RETAIN_CORPUS_KEY}={_RETAIN_STAND_IN} (the privleak sample of the "
            "retain2 corpus)."
        )
    return hint + (
        f" The full corpora come from the hub (leave {DATA_DIR_KEY} unset, with network) or a complete local copy."
    )


def _corpus_text(record: object, index: int, source: str) -> str:
    """A corpus record's text ("" for an empty document, which is skipped)."""
    if isinstance(record, Mapping):
        record = record.get("text")
    if not isinstance(record, str):
        raise MalformedDataError(
            f"document {index} of {source} must be a string or an object with a string 'text', got {record!r:.80}"
        )
    return record if record.strip() else ""


def load_muse_corpus(
    data_dir: Path,
    relative_path: str,
    *,
    max_documents: int | None = None,
    key: str | None = None,
) -> list[str]:
    """The documents of a raw MUSE corpus, e.g. "raw/forget.json" or "privleak/retain2.json" of a MUSE folder.

    The file is a JSON list of strings or of {"text"} records, a .jsonl of either, or hub parquet shards (the same
    split is also found under another suffix or as shards). Empty documents are skipped (MUSE-News raw/forget has
    one). `max_documents` keeps the first N documents. `key` names the config key that set `relative_path`, for the
    error message (default: both corpus keys).

    Raises MuseDataNotFoundError (a FileNotFoundError) naming the full path looked for when the corpus is missing, and
    ValueError when it is malformed or holds no documents.
    """
    data_dir = Path(data_dir)
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be a positive number of documents or None, got {max_documents}")
    files = _locate(data_dir, relative_path)
    if not files:
        expected = (data_dir / relative_path).resolve()
        setting = f"{key}={relative_path}" if key else f"{FORGET_CORPUS_KEY} / {RETAIN_CORPUS_KEY}"
        message = (
            f"MUSE corpus not found: {expected} does not exist (nor as .json, .jsonl or parquet shards); it is set "
            f"by {setting}, relative to {DATA_DIR_KEY}={data_dir.resolve()}."
        )
        if _is_partial_muse_news(data_dir, relative_path):
            message += _raw_retain_hint(data_dir)
        raise MuseDataNotFoundError(message)
    source = str(files[0].resolve())
    records = (record for path in files for record in read_records(path))
    documents: list[str] = []
    skipped = 0
    for index, record in enumerate(records):
        text = _corpus_text(record, index, source)
        if not text:
            skipped += 1
            continue
        documents.append(text)
        if max_documents is not None and len(documents) >= max_documents:
            break
    if skipped:
        logger.info("skipped %d empty document(s) of %s", skipped, source)
    if not documents:
        raise MalformedDataError(
            f"MUSE corpus {source} holds no documents; a corpus to train on needs at least one"
        )
    return documents


def muse_required_files(
    forget_corpus: str, retain_corpus: str, *, knowmem_retain: str = "retain2"
) -> list[str]:
    """Every file (relative to the MUSE folder) one MUSE benchmark run reads: the forget and retain corpora it trains
    on, then the eval sets of `load_muse_eval_sets` (their canonical names; `_locate` also accepts the hub's)."""
    retain_qa = retain_qa_stems(knowmem_retain)[0]
    files = [
        forget_corpus,
        retain_corpus,
        "verbmem/forget.json",
        "knowmem/forget_qa.json",
        "knowmem/forget_qa_icl.json",
        f"knowmem/{retain_qa}.json",
        f"knowmem/{retain_qa}_icl.json",
        "privleak/forget.json",
        "privleak/holdout.json",
    ]
    return list(dict.fromkeys(files))  # forget == retain corpus is read once


def _file_role(relative_path: str, forget_corpus: str, retain_corpus: str, knowmem_retain: str) -> str:
    if relative_path == forget_corpus:
        return f"the forget corpus, {FORGET_CORPUS_KEY}={forget_corpus}"
    if relative_path == retain_corpus:
        return f"the retain corpus, {RETAIN_CORPUS_KEY}={retain_corpus}"
    folder, stem = _path_stem(relative_path)
    subset = folder.as_posix()
    for eval_set, (set_subset, stems) in eval_set_file_stems(knowmem_retain).items():
        if subset == set_subset and stem in stems:
            return f"for {EVAL_SET_USERS[eval_set]}"
    return "an eval set"


def check_muse_folder(
    data_dir: Path,
    forget_corpus: str,
    retain_corpus: str,
    key: str = DATA_DIR_KEY,
    *,
    knowmem_retain: str = "retain2",
) -> None:
    """Check, before anything trains, that every file one MUSE run reads (`muse_required_files`) is in `data_dir`.

    Raises one MuseDataNotFoundError listing the full path of every missing file and what needs it.
    """
    data_dir = Path(data_dir)
    required = muse_required_files(forget_corpus, retain_corpus, knowmem_retain=knowmem_retain)
    missing = [path for path in required if not _locate(data_dir, path)]
    if not missing:
        return
    resolved = data_dir.resolve()
    where = f"{key}={resolved}" + ("" if data_dir.is_dir() else " (the folder does not exist)")
    lines = [
        f"{where} lacks {len(missing)} of the {len(required)} files a MUSE run reads (each may also be .jsonl or "
        "hub parquet shards):"
    ]
    lines += [
        f"  - {(data_dir / path).resolve()} ({_file_role(path, forget_corpus, retain_corpus, knowmem_retain)})"
        for path in missing
    ]
    lines.append(
        "The folder must be laid out like the hub dataset muse-bench/MUSE-News or muse-bench/MUSE-Books "
        "(raw/, verbmem/, knowmem/, privleak/ with one file per split). MUSE-Books (the Harry Potter corpus) is not "
        "distributed with the project: fetch it from the hub (with network, leave "
        f"{DATA_DIR_KEY} unset) or set {DATA_DIR_KEY} to a local copy, or MSA_BENCH_DATA to a folder that holds "
        "one as muse-books/."
    )
    if any(_is_partial_muse_news(data_dir, path) for path in missing):
        lines.append(_raw_retain_hint(data_dir).strip())
    raise MuseDataNotFoundError("\n".join(lines))
