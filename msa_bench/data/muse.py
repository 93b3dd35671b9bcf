"""MUSE data: raw corpora and evaluation sets loaded from a MUSE-layout folder, or eval sets built from a TOFU-style
benchmark.

A MUSE folder holds one file per (subset, split) of the hub datasets muse-bench/MUSE-News and MUSE-Books, e.g.
`knowmem/forget_qa.json`, `verbmem/forget.json`, `privleak/holdout.json` (JSON lists as in the MUSE GitHub release;
`.jsonl` files and hub parquet shards are read too). The data is never copied into this repository: it is read from
the folder the caller names.

Every loader returns the same seven eval sets, named by `MUSE_EVAL_SET_NAMES`, with uniform records:

- `muse_verbmem_forget`: {prompt, gt}: a forget excerpt's beginning and its true continuation,
- `muse_knowmem_forget` / `muse_knowmem_retain`: {question, answer} about the forget / retain corpus,
- `muse_knowmem_forget_icl` / `muse_knowmem_retain_icl`: {question, answer} in-context examples for those,
- `muse_privleak_forget` / `muse_privleak_holdout`: {text}: member and non-member texts for membership inference.

The raw corpora a MUSE run trains on (`load_muse_corpus`: e.g. `raw/forget.json`, `raw/retain1.json`) are lists of
document strings; `check_muse_folder` checks that every file a run reads is there before anything trains, and
`MUSE_HUB_FILES` maps each hub (config, split) to its local file (see `msa_bench.data.sources.download_muse`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from msa_bench.data.formatting import format_answer, format_prompt
from msa_bench.errors import MuseDataNotFoundError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

VERBMEM_FORGET = "muse_verbmem_forget"
KNOWMEM_FORGET = "muse_knowmem_forget"
KNOWMEM_FORGET_ICL = "muse_knowmem_forget_icl"
KNOWMEM_RETAIN = "muse_knowmem_retain"
KNOWMEM_RETAIN_ICL = "muse_knowmem_retain_icl"
PRIVLEAK_FORGET = "muse_privleak_forget"
PRIVLEAK_HOLDOUT = "muse_privleak_holdout"

MUSE_EVAL_SET_NAMES: tuple[str, ...] = (
    VERBMEM_FORGET,
    KNOWMEM_FORGET,
    KNOWMEM_FORGET_ICL,
    KNOWMEM_RETAIN,
    KNOWMEM_RETAIN_ICL,
    PRIVLEAK_FORGET,
    PRIVLEAK_HOLDOUT,
)

# Which metrics read each set (for error messages: a missing file should say what it is needed for).
EVAL_SET_USERS: Mapping[str, str] = MappingProxyType(
    {
        VERBMEM_FORGET: "forget_verbmem_ROUGE, muse_extraction_strength and muse_exact_memorization",
        KNOWMEM_FORGET: "forget_knowmem_ROUGE",
        KNOWMEM_FORGET_ICL: "forget_knowmem_ROUGE (its in-context examples)",
        KNOWMEM_RETAIN: "retain_knowmem_ROUGE",
        KNOWMEM_RETAIN_ICL: "retain_knowmem_ROUGE (its in-context examples)",
        PRIVLEAK_FORGET: "the muse_mia_* attacks and muse_privleak (members)",
        PRIVLEAK_HOLDOUT: "the muse_mia_* attacks and muse_privleak (non-members)",
    }
)

# The fields each set's records carry.
RECORD_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        VERBMEM_FORGET: ("prompt", "gt"),
        KNOWMEM_FORGET: ("question", "answer"),
        KNOWMEM_FORGET_ICL: ("question", "answer"),
        KNOWMEM_RETAIN: ("question", "answer"),
        KNOWMEM_RETAIN_ICL: ("question", "answer"),
        PRIVLEAK_FORGET: ("text",),
        PRIVLEAK_HOLDOUT: ("text",),
    }
)

DEFAULT_ICL_EXAMPLES = 10  # MUSE's knowmem in-context sets have 10 examples


def _retain_qa_stems(knowmem_retain: str) -> list[str]:
    """File stems of the knowmem retain QA, preferred first.

    The hub calls the retain QA split `retain_qa` (it is about the `retain2` corpus); local copies may name it after
    the corpus (`retain2_qa`), so each name falls back to the other.
    """
    stems = [f"{knowmem_retain}_qa"]
    aliases = {"retain2": "retain_qa", "retain": "retain2_qa"}
    if knowmem_retain in aliases:
        stems.append(aliases[knowmem_retain])
    return stems


def _file_stems(knowmem_retain: str) -> dict[str, tuple[str, list[str]]]:
    """Eval set -> (subset folder, candidate split file stems)."""
    retain_stems = _retain_qa_stems(knowmem_retain)
    return {
        VERBMEM_FORGET: ("verbmem", ["forget"]),
        KNOWMEM_FORGET: ("knowmem", ["forget_qa"]),
        KNOWMEM_FORGET_ICL: ("knowmem", ["forget_qa_icl"]),
        KNOWMEM_RETAIN: ("knowmem", retain_stems),
        KNOWMEM_RETAIN_ICL: ("knowmem", [f"{stem}_icl" for stem in retain_stems]),
        PRIVLEAK_FORGET: ("privleak", ["forget"]),
        PRIVLEAK_HOLDOUT: ("privleak", ["holdout"]),
    }


def _split_files(subset_dir: Path, stem: str) -> list[Path]:
    """The file(s) holding one split, in the layouts we read; empty when there are none."""
    for suffix in (".json", ".jsonl", ".parquet"):
        path = subset_dir / f"{stem}{suffix}"
        if path.is_file():
            return [path]
    # Hub parquet shards: <subset>/<split>-00000-of-00001.parquet or <subset>/<split>/0000.parquet.
    shards = sorted(subset_dir.glob(f"{stem}-*.parquet")) or sorted((subset_dir / stem).glob("*.parquet"))
    return shards


def _read_records(path: Path) -> list:
    if path.suffix == ".json":
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"{path} must hold a JSON list of records, got {type(records).__name__}")
        return records
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # a dependency of `datasets`; only needed for hub snapshots

        return pq.read_table(path).to_pylist()
    raise ValueError(f"cannot read {path}: expected .json, .jsonl or .parquet")


def _normalise_records(eval_set: str, records: Sequence, source: str) -> list[dict]:
    """Uniform dict records with the set's fields as non-empty strings (privleak files may be bare strings)."""
    fields = RECORD_FIELDS[eval_set]
    normalised: list[dict] = []
    for index, record in enumerate(records):
        if isinstance(record, str) and fields == ("text",):
            record = {"text": record}
        if not isinstance(record, Mapping):
            raise ValueError(
                f"record {index} of {source} must be an object with {fields}, got {record!r:.80}"
            )
        for field_name in fields:
            value = record.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"record {index} of {source} needs a non-empty string '{field_name}' "
                    f"(for {EVAL_SET_USERS[eval_set]}), got {value!r:.80}"
                )
        normalised.append({field_name: record[field_name] for field_name in fields})
    if not normalised:
        raise ValueError(f"{source} holds no records, but {EVAL_SET_USERS[eval_set]} need(s) them")
    return normalised


def load_muse_eval_sets(
    data_dir: Path, *, knowmem_retain: str = "retain2", names: Iterable[str] | None = None
) -> dict[str, list[dict]]:
    """The MUSE eval sets (all of `MUSE_EVAL_SET_NAMES`, or only `names`) from a MUSE-layout folder.

    `knowmem_retain` names the corpus the retain QA is about: "retain2" reads knowmem/retain2_qa (or the hub's
    retain_qa) and its `_icl` file. A missing file raises FileNotFoundError with its full path and the metrics that
    need it.
    """
    data_dir = Path(data_dir)
    wanted = list(MUSE_EVAL_SET_NAMES if names is None else names)
    unknown = [name for name in wanted if name not in RECORD_FIELDS]
    if unknown:
        raise ValueError(f"unknown MUSE eval set(s) {unknown}; known: {', '.join(MUSE_EVAL_SET_NAMES)}")
    locations = _file_stems(knowmem_retain)
    sets: dict[str, list[dict]] = {}
    for eval_set in wanted:
        subset, stems = locations[eval_set]
        subset_dir = data_dir / subset
        files = next((found for stem in stems if (found := _split_files(subset_dir, stem))), [])
        if not files:
            expected = (subset_dir / f"{stems[0]}.json").resolve()
            alternatives = f" (or {', '.join(stems[1:])})" if len(stems) > 1 else ""
            raise FileNotFoundError(
                f"MUSE eval set '{eval_set}' not found: {expected}{alternatives} does not exist "
                f"(nor as .jsonl or parquet); it is needed by {EVAL_SET_USERS[eval_set]}"
            )
        records = [record for path in files for record in _read_records(path)]
        sets[eval_set] = _normalise_records(eval_set, records, str(files[0].resolve()))
    return sets


def qa_text(question: str, answer: str) -> str:
    """A QA pair as one text, the way the model is trained on it ("Question: q\\nAnswer: a")."""
    return format_prompt(question) + format_answer(answer)


def _verbmem_from_documents(documents: Sequence[str]) -> list[dict]:
    """MUSE-style excerpts: each document's first half of words is the prompt, the rest the true continuation."""
    records = []
    for index, document in enumerate(documents):
        words = document.split()
        if len(words) < 2:
            raise ValueError(
                f"pretraining text {index} has fewer than two words; it cannot be split into prompt + gt"
            )
        middle = len(words) // 2
        records.append({"prompt": " ".join(words[:middle]), "gt": " ".join(words[middle:])})
    return records


def muse_sets_from_tofu_items(
    forget_items: Sequence[Mapping],
    retain_items: Sequence[Mapping],
    holdout_items: Sequence[Mapping],
    icl_items: Sequence[Mapping],
    pretraining_texts: Sequence[str] | None = None,
    *,
    n_icl: int = DEFAULT_ICL_EXAMPLES,
) -> dict[str, list[dict]]:
    """The MUSE eval sets built from a TOFU-style benchmark (records with `question` and `answer`).

    - knowmem forget / retain: the forget / retain QA pairs;
    - knowmem ICL (both): the first `n_icl` of `icl_items`, which must share no question with the evaluated items
      (e.g. the instruct-stage QA), so that no answer is given away in context;
    - verbmem forget: prompt "Question: {q}\\nAnswer:" with gt the answer. A TOFU forget set has no raw documents,
      and the QA text is exactly what the model was trained on verbatim, so completing it is verbatim memorisation.
      When `pretraining_texts` (raw forget documents) are given, verbmem uses them instead: the first half of each
      document's words is the prompt and the rest the gt;
    - privleak forget / holdout: the QA texts "Question: {q}\\nAnswer: {a}" of the forget (member) and holdout
      (never trained on, non-member) items.
    """
    for label, items in (("forget", forget_items), ("retain", retain_items), ("holdout", holdout_items)):
        if not items:
            raise ValueError(f"muse_sets_from_tofu_items needs {label} items, got none")
    if n_icl < 0:
        raise ValueError(f"n_icl must be non-negative, got {n_icl}")
    icl = [{"question": item["question"], "answer": item["answer"]} for item in icl_items[:n_icl]]
    if len(icl) < n_icl:
        logger.warning("only %d in-context examples available (asked for %d)", len(icl), n_icl)
    evaluated_questions = {
        item["question"] for items in (forget_items, retain_items, holdout_items) for item in items
    }
    leaked = [example["question"] for example in icl if example["question"] in evaluated_questions]
    if leaked:
        raise ValueError(f"in-context examples must not be evaluated items, but these are: {leaked[:3]}")

    def qa_pairs(items: Sequence[Mapping]) -> list[dict]:
        return [{"question": item["question"], "answer": item["answer"]} for item in items]

    if pretraining_texts:
        verbmem = _verbmem_from_documents(pretraining_texts)
    else:
        verbmem = [{"prompt": format_prompt(item["question"]), "gt": item["answer"]} for item in forget_items]
    return {
        VERBMEM_FORGET: verbmem,
        KNOWMEM_FORGET: qa_pairs(forget_items),
        KNOWMEM_FORGET_ICL: icl,
        KNOWMEM_RETAIN: qa_pairs(retain_items),
        KNOWMEM_RETAIN_ICL: list(icl),
        PRIVLEAK_FORGET: [{"text": qa_text(item["question"], item["answer"])} for item in forget_items],
        PRIVLEAK_HOLDOUT: [{"text": qa_text(item["question"], item["answer"])} for item in holdout_items],
    }


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
    return next((found for candidate in stems if (found := _split_files(folder, candidate))), [])


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
        raise ValueError(
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
    records = (record for path in files for record in _read_records(path))
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
        raise ValueError(f"MUSE corpus {source} holds no documents; a corpus to train on needs at least one")
    return documents


def muse_required_files(
    forget_corpus: str, retain_corpus: str, *, knowmem_retain: str = "retain2"
) -> list[str]:
    """Every file (relative to the MUSE folder) one MUSE benchmark run reads: the forget and retain corpora it trains
    on, then the eval sets of `load_muse_eval_sets` (their canonical names; `_locate` also accepts the hub's)."""
    retain_qa = _retain_qa_stems(knowmem_retain)[0]
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
    for eval_set, (set_subset, stems) in _file_stems(knowmem_retain).items():
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
