"""MUSE evaluation sets: loaded from a MUSE-layout folder, or built from a TOFU-style benchmark.

A MUSE folder holds one file per (subset, split) of the hub datasets muse-bench/MUSE-News and MUSE-Books, e.g.
`knowmem/forget_qa.json`, `verbmem/forget.json`, `privleak/holdout.json` (JSON lists as in the MUSE GitHub release;
`.jsonl` files and hub parquet shards are read too). The data is never copied into this repository: it is read from
the folder the caller names.

Every loader returns the same seven eval sets, named by `MUSE_EVAL_SET_NAMES`, with uniform records:

- `muse_verbmem_forget`: {prompt, gt}: a forget excerpt's beginning and its true continuation,
- `muse_knowmem_forget` / `muse_knowmem_retain`: {question, answer} about the forget / retain corpus,
- `muse_knowmem_forget_icl` / `muse_knowmem_retain_icl`: {question, answer} in-context examples for those,
- `muse_privleak_forget` / `muse_privleak_holdout`: {text}: member and non-member texts for membership inference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from msa_bench.data.formatting import format_answer, format_prompt
from msa_bench.data.records import RESTORE_HINT, read_json_list, read_jsonl
from msa_bench.errors import MalformedDataError, MuseDataNotFoundError

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


def retain_qa_stems(knowmem_retain: str) -> list[str]:
    """File stems of the knowmem retain QA, preferred first.

    The hub calls the retain QA split `retain_qa` (it is about the `retain2` corpus); local copies may name it after
    the corpus (`retain2_qa`), so each name falls back to the other.
    """
    stems = [f"{knowmem_retain}_qa"]
    aliases = {"retain2": "retain_qa", "retain": "retain2_qa"}
    if knowmem_retain in aliases:
        stems.append(aliases[knowmem_retain])
    return stems


def eval_set_file_stems(knowmem_retain: str) -> dict[str, tuple[str, list[str]]]:
    """Eval set -> (subset folder, candidate split file stems)."""
    retain_stems = retain_qa_stems(knowmem_retain)
    return {
        VERBMEM_FORGET: ("verbmem", ["forget"]),
        KNOWMEM_FORGET: ("knowmem", ["forget_qa"]),
        KNOWMEM_FORGET_ICL: ("knowmem", ["forget_qa_icl"]),
        KNOWMEM_RETAIN: ("knowmem", retain_stems),
        KNOWMEM_RETAIN_ICL: ("knowmem", [f"{stem}_icl" for stem in retain_stems]),
        PRIVLEAK_FORGET: ("privleak", ["forget"]),
        PRIVLEAK_HOLDOUT: ("privleak", ["holdout"]),
    }


def split_files(subset_dir: Path, stem: str) -> list[Path]:
    """The file(s) holding one split, in the layouts we read; empty when there are none."""
    for suffix in (".json", ".jsonl", ".parquet"):
        path = subset_dir / f"{stem}{suffix}"
        if path.is_file():
            return [path]
    # Hub parquet shards: <subset>/<split>-00000-of-00001.parquet or <subset>/<split>/0000.parquet.
    shards = sorted(subset_dir.glob(f"{stem}-*.parquet")) or sorted((subset_dir / stem).glob("*.parquet"))
    return shards


def read_records(path: Path) -> list:
    """The records of one MUSE file, read in full; a DataError names the file and line when it is malformed."""
    what = "MUSE data file"
    if path.suffix == ".json":
        return read_json_list(path, what=what, allow_empty=True)
    if path.suffix == ".jsonl":
        return read_jsonl(path, what=what, allow_empty=True)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # a dependency of `datasets`; only needed for hub snapshots

        try:
            return pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
            raise MalformedDataError(
                f"{path}: not a readable parquet file ({type(error).__name__}: {error}); {RESTORE_HINT}"
            ) from error
    raise MalformedDataError(f"cannot read {path}: expected .json, .jsonl or .parquet")


def _normalise_records(eval_set: str, records: Sequence, source: str) -> list[dict]:
    """Uniform dict records with the set's fields as non-empty strings (privleak files may be bare strings)."""
    fields = RECORD_FIELDS[eval_set]
    normalised: list[dict] = []
    for index, record in enumerate(records):
        if isinstance(record, str) and fields == ("text",):
            record = {"text": record}
        if not isinstance(record, Mapping):
            raise MalformedDataError(
                f"record {index} of {source} must be an object with {fields}, got {record!r:.80}"
            )
        for field_name in fields:
            value = record.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise MalformedDataError(
                    f"record {index} of {source} needs a non-empty string '{field_name}' "
                    f"(for {EVAL_SET_USERS[eval_set]}), got {value!r:.80}"
                )
        normalised.append({field_name: record[field_name] for field_name in fields})
    if not normalised:
        raise MalformedDataError(f"{source} holds no records, but {EVAL_SET_USERS[eval_set]} need(s) them")
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
    locations = eval_set_file_stems(knowmem_retain)
    sets: dict[str, list[dict]] = {}
    for eval_set in wanted:
        subset, stems = locations[eval_set]
        subset_dir = data_dir / subset
        files = next((found for stem in stems if (found := split_files(subset_dir, stem))), [])
        if not files:
            expected = (subset_dir / f"{stems[0]}.json").resolve()
            alternatives = f" (or {', '.join(stems[1:])})" if len(stems) > 1 else ""
            raise MuseDataNotFoundError(
                f"MUSE eval set '{eval_set}' not found: {expected}{alternatives} does not exist "
                f"(nor as .jsonl or parquet); it is needed by {EVAL_SET_USERS[eval_set]}"
            )
        records = [record for path in files for record in read_records(path)]
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
