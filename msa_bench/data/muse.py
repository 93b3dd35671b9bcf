"""MUSE data, the one import for its callers: the seven evaluation sets (muse_eval_sets.py) and the raw corpora a
MUSE run trains on, with the check that a MUSE folder holds every file a run reads (muse_corpus.py).

A MUSE folder holds one file per (subset, split) of the hub datasets muse-bench/MUSE-News and MUSE-Books, e.g.
`knowmem/forget_qa.json`, `raw/forget.json`, `privleak/holdout.json`. The data is never copied into this
repository: it is read from the folder the caller names.
"""

from msa_bench.data.muse_corpus import (
    DATA_DIR_KEY,
    FORGET_CORPUS_KEY,
    MUSE_HUB_FILES,
    RETAIN_CORPUS_KEY,
    MuseHubFile,
    check_muse_folder,
    load_muse_corpus,
    muse_hub_file,
    muse_required_files,
)
from msa_bench.data.muse_eval_sets import (
    DEFAULT_ICL_EXAMPLES,
    EVAL_SET_USERS,
    KNOWMEM_FORGET,
    KNOWMEM_FORGET_ICL,
    KNOWMEM_RETAIN,
    KNOWMEM_RETAIN_ICL,
    MUSE_EVAL_SET_NAMES,
    PRIVLEAK_FORGET,
    PRIVLEAK_HOLDOUT,
    RECORD_FIELDS,
    VERBMEM_FORGET,
    load_muse_eval_sets,
    muse_sets_from_tofu_items,
    qa_text,
)
from msa_bench.errors import MuseDataNotFoundError

__all__ = [
    "DATA_DIR_KEY",
    "DEFAULT_ICL_EXAMPLES",
    "EVAL_SET_USERS",
    "FORGET_CORPUS_KEY",
    "KNOWMEM_FORGET",
    "KNOWMEM_FORGET_ICL",
    "KNOWMEM_RETAIN",
    "KNOWMEM_RETAIN_ICL",
    "MUSE_EVAL_SET_NAMES",
    "MUSE_HUB_FILES",
    "PRIVLEAK_FORGET",
    "PRIVLEAK_HOLDOUT",
    "RECORD_FIELDS",
    "RETAIN_CORPUS_KEY",
    "VERBMEM_FORGET",
    "MuseDataNotFoundError",
    "MuseHubFile",
    "check_muse_folder",
    "load_muse_corpus",
    "load_muse_eval_sets",
    "muse_hub_file",
    "muse_required_files",
    "muse_sets_from_tofu_items",
    "qa_text",
]
