"""Known failures of the machine or the files, turned into one line that says what happened, where, and what to do.

Three failures are not bugs of msa_bench and need no traceback on the console (the traceback goes to the run's
msa_bench.log):

- a full disk (OSError ENOSPC, also when a library reports it in its own error, as safetensors does);
- accelerator out-of-memory (`torch.OutOfMemoryError`, alias `torch.cuda.OutOfMemoryError`);
- a corrupt safetensors file (`SafetensorError: Error while deserializing header ...`).

`describe_known_failure(error, config)` returns the line, or None for any other error. The stage it names is the
one the run's progress display was in when the error passed through it (`remember_failure_context`, called by
msa_bench/progress.py), and the batch size the one the trainer ran with (called by msa_bench/training/trainer.py).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_NO_SPACE_TEXTS = ("no space left on device", "os error 28", "code: 28", "storagefull")
_OOM_TEXTS = ("cuda out of memory", "out of memory", "cudnn_status_alloc_failed", "hip out of memory")
_CORRUPT_SAFETENSORS_TEXTS = (
    "error while deserializing header",
    "incomplete metadata",
    "metadataincompletebuffer",
    "header too large",
    "header too small",
    "invalidheader",
)
# Locals that hold the file or folder a failing call was reading or writing, innermost frame first.
_PATH_LOCALS = (
    "filename",
    "file_path",
    "checkpoint_file",
    "path",
    "temporary",
    "save_directory",
    "out_dir",
    "out",
)

# What the progress display and the trainer knew when an error passed through them: {id(error): {...}}. The CLI
# clears it once it has reported a failure (`forget_failure_context`); it is capped all the same, because an entry
# keeps its error's traceback, and so the frames' tensors, alive.
_contexts: dict[int, dict[str, Any]] = {}
_MAX_CONTEXTS = 8


# The memory preflight's summary of the stage it checked last (figures and options), for an out-of-memory error:
# stages run one after another, so the stage that runs out of memory is the one checked last.
_latest_memory_estimate: str | None = None


def remember_memory_estimate(summary: str | None) -> None:
    """Called by the memory preflight (pipeline/stage_memory.py) with each stage's estimate, before it loads."""
    global _latest_memory_estimate
    _latest_memory_estimate = summary


def remember_failure_context(error: BaseException, **context: Any) -> None:
    """Record what the code an error passes through knows (its `stage`, its `batch_size`); inner calls win."""
    if id(error) not in _contexts and len(_contexts) >= _MAX_CONTEXTS:
        del _contexts[next(iter(_contexts))]
    entry = _contexts.setdefault(id(error), {"error": error})
    for key, value in context.items():
        entry.setdefault(key, value)


def forget_failure_context() -> None:
    _contexts.clear()


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _context(error: BaseException) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for link in _chain(error):
        entry = _contexts.get(id(link))
        if entry is not None and entry["error"] is link:
            for key, value in entry.items():
                merged.setdefault(key, value)
    return merged


def _text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".lower()


def _find(error: BaseException, matches) -> BaseException | None:
    return next((link for link in _chain(error) if matches(link)), None)


def _is_no_space(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return any(text in _text(error) for text in _NO_SPACE_TEXTS)


def _is_out_of_memory(error: BaseException) -> bool:
    try:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch is a dependency
        pass
    return isinstance(error, RuntimeError | MemoryError) and any(text in _text(error) for text in _OOM_TEXTS)


def _is_corrupt_safetensors(error: BaseException) -> bool:
    return type(error).__name__ == "SafetensorError" and any(
        text in _text(error) for text in _CORRUPT_SAFETENSORS_TEXTS
    )


def _paths_in_traceback(error: BaseException, suffix: str | None) -> Iterator[Path]:
    """File or folder paths held by the locals of the failing frames, innermost first: any local naming a file
    with `suffix`, or without one, the locals that usually hold the file being written (`_PATH_LOCALS`)."""
    frames = []
    traceback = error.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):
        if suffix is None:
            values = [frame.f_locals.get(name) for name in _PATH_LOCALS]
        else:
            values = list(frame.f_locals.values())
        for value in values:
            if isinstance(value, str | os.PathLike) and str(value):
                path = Path(value)
                if suffix is None or path.name.endswith(suffix):
                    yield path


def _failing_path(error: BaseException, suffix: str | None = None) -> Path | None:
    if isinstance(error, OSError) and error.filename:
        return Path(error.filename)
    return next(_paths_in_traceback(error, suffix), None)


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'; the binary units `df -h` uses."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _free_space(path: Path | None) -> str:
    if path is None:
        return ""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return f"{human_bytes(shutil.disk_usage(candidate).free)} free"
            except OSError:
                return ""
    return ""


def _stage_phrase(context: dict[str, Any]) -> str:
    stage = context.get("stage")
    return f"while {stage}" if stage else "while running"


def no_space_message(error: BaseException, stage: str | None, cache_dir: str | None = None) -> str:
    """`no space left on device while <stage> writing <path> (<free> free); <what to do>`"""
    path = _failing_path(error)
    free = _free_space(path)
    text = "no space left on device"
    if stage:
        text += f" while {stage}"
    if path:
        text += f"{',' if stage else ''} writing {path}"
    if free:
        text += f" ({free})"
    in_run_dir = (
        path is not None and cache_dir is not None and Path(cache_dir).resolve() not in path.resolve().parents
    )
    fix = (
        "free space there, or write the run elsewhere (hydra.run.dir=...) and keep the cache on a disk with room "
        "(MSA_BENCH_CACHE / paths.cache_dir)"
        if in_run_dir
        else "free space there, or point MSA_BENCH_CACHE (paths.cache_dir) at a larger disk"
    )
    return f"{text}; {fix}"


def _batch_phrase(context: dict[str, Any], config: Any) -> tuple[str, str]:
    """(the batch size in effect, the keys that set it) for an out-of-memory error."""
    stage = str(context.get("stage") or "")
    if "batch_size" in context:
        size = f"batch size {context['batch_size']}"
        if context.get("gradient_accumulation_steps") is not None:
            size += f" × gradient_accumulation_steps {context['gradient_accumulation_steps']}"
        keys = (
            "the recipe of that stage: benchmark.target_recipe.batch_size / .gradient_accumulation_steps for the "
            "target, oracle and MSA's vectors (method.forget_recipe / method.retain_recipe when set), "
            "method.recipe.* for gradient methods, model.instruct.* and model.pretrain.recipe.* for the embedded "
            "history"
        )
        return size, keys
    if "(evaluate" in stage and config is not None:
        return f"metrics.batch_size={config.metrics.batch_size}", "metrics.batch_size"
    return "the configured batch size", "the stage's batch_size (metrics.batch_size when evaluating)"


def out_of_memory_message(error: BaseException, context: dict[str, Any], config: Any = None) -> str:
    device = "GPU" if "cuda" in _text(error) or type(error).__name__ == "OutOfMemoryError" else "device"
    size, keys = _batch_phrase(context, config)
    estimate = f"; {_latest_memory_estimate}" if _latest_memory_estimate else ""
    return (
        f"out of {device} memory {_stage_phrase(context)} at {size}{estimate}; lower the batch size ({keys}) and "
        "raise gradient_accumulation_steps by the same factor to keep the effective batch, or set the recipe's "
        "gradient_checkpointing=true, optimizer=adamw_8bit or peft=lora, or run on a GPU with more memory or on "
        "more GPUs (FSDP, docs/distributed.md)"
    )


def corrupt_safetensors_message(error: BaseException, context: dict[str, Any]) -> str:
    path = _failing_path(error, ".safetensors")
    what = f"{path} is" if path else "a safetensors weights file is"
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"{what} corrupt ({reason}) {_stage_phrase(context)}; run `msa-bench cache verify` to find and set aside "
        "damaged cache entries, or delete that entry's folder so it is rebuilt"
        + ("" if path is None else f" ({path.parent})")
    )


def describe_known_failure(error: BaseException, config: Any = None) -> str | None:
    """The one-line message for a full disk, out-of-memory or a corrupt safetensors file; None for other errors,
    and for msa_bench's own errors, whose message already says what happened (a ResourceError on a full disk)."""
    from msa_bench.errors import MSABenchError

    if isinstance(error, MSABenchError):
        return None
    context = _context(error)
    found = _find(error, _is_no_space)
    if found is not None:
        cache_dir = getattr(getattr(config, "paths", None), "cache_dir", None)
        return no_space_message(found, context.get("stage"), cache_dir)
    found = _find(error, _is_out_of_memory)
    if found is not None:
        return out_of_memory_message(found, context, config)
    found = _find(error, _is_corrupt_safetensors)
    if found is not None:
        return corrupt_safetensors_message(found, context)
    return None


def is_no_space_error(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a full disk."""
    return _find(error, _is_no_space) is not None
