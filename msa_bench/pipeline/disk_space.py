"""Free-disk-space checks before a stage writes: a full disk fails in one line before the work, not as ENOSPC after it.

A stage that writes model states (fine-tunes, the pretraining history, hub-model dtype copies, the arithmetic output)
needs about parameters × bytes per parameter for each state it saves, plus a margin for the tokenizer and config
files and for the filesystem (`model_states_bytes`). `require_free_space` compares an estimate with what
`shutil.disk_usage` reports for the folder (the artifact cache, the run directory) and raises a ResourceError giving
both, in bytes and in human units, with the path and what to do.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from msa_bench.arithmetic.checkpoint_files import read_layout
from msa_bench.errors import ResourceError
from msa_bench.failures import human_bytes

BYTES_PER_PARAMETER = {"float32": 4, "bfloat16": 2, "float16": 2}
# Bytes per element of the safetensors dtypes a stored state may hold.
_SAFETENSORS_ELEMENT_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
}
# Beyond the tensors: the tokenizer, the config and the cache's marker files of one state, and room for the
# filesystem's own bookkeeping (10% more).
PER_STATE_FILES_BYTES = 32 * 2**20
MARGIN_FRACTION = 0.10
# A run directory's results.json, per_item.json, status.json and log; per_item.json is the large one (a few MB for
# TOFU forget10 with every generation).
RUN_FILES_BYTES = 64 * 2**20

CACHE_FIX = "free space there, or point MSA_BENCH_CACHE (paths.cache_dir) at a larger disk"
RUN_DIR_FIX = "free space there, or write the run elsewhere (hydra.run.dir=<a folder on a larger disk>)"


def stored_parameter_count(model_dir: Path) -> int:
    """The number of parameters in a saved model state, read from its safetensors headers only (tied tensors are
    stored once, so counted once)."""
    return sum(math.prod(info.shape) for info in read_layout(Path(model_dir)).tensors.values())


def stored_state_bytes(model_dir: Path) -> int:
    """The bytes of the tensors of a saved model state in the dtypes they are stored in (headers only)."""
    return sum(
        math.prod(info.shape) * _SAFETENSORS_ELEMENT_BYTES.get(info.dtype, 4)
        for info in read_layout(Path(model_dir)).tensors.values()
    )


def model_states_bytes(n_parameters: int, dtype: str, n_states: int = 1) -> int:
    """The disk space `n_states` saved states of an `n_parameters` model in `dtype` need, with the margin."""
    return _with_margin(n_parameters * BYTES_PER_PARAMETER.get(dtype, 4), n_states)


def _with_margin(tensor_bytes: int, n_states: int) -> int:
    return int(math.ceil(n_states * (tensor_bytes + PER_STATE_FILES_BYTES) * (1 + MARGIN_FRACTION)))


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent (the folder a build will create lies on the same disk)."""
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def require_free_space(path: Path, required: int, what: str, *, fix: str = CACHE_FIX) -> None:
    """Raise ResourceError when the disk holding `path` has less than `required` bytes free for `what`."""
    where = _existing(Path(path))
    free = shutil.disk_usage(where).free
    if free < required:
        raise ResourceError(
            f"not enough free disk space for {what}: it needs about {required:,} bytes "
            f"({human_bytes(required)}) and {where} has {free:,} bytes ({human_bytes(free)}) free; {fix}"
        )


def require_space_for_states(
    cache_root: Path, stage: str, n_parameters: int, dtype: str, n_states: int = 1
) -> None:
    """The check a build that saves `n_states` model states makes before it starts (see `model_states_bytes`)."""
    states = "1 model state" if n_states == 1 else f"{n_states} model states"
    what = f"{stage} ({states} of {n_parameters:,} parameters in {dtype})"
    require_free_space(cache_root, model_states_bytes(n_parameters, dtype, n_states), what)


def require_space_for_state_like(cache_root: Path, stage: str, model_dir: Path, n_states: int = 1) -> None:
    """The check before writing `n_states` states laid out like the saved state in `model_dir` (the arithmetic
    output has the target's tensors and dtypes; an unlearning run with its dynamics saves several)."""
    tensors = stored_state_bytes(model_dir)
    states = "1 model state" if n_states == 1 else f"{n_states} model states"
    what = f"{stage} ({states} of {human_bytes(tensors)} like {model_dir})"
    require_free_space(cache_root, _with_margin(tensors, n_states), what)
