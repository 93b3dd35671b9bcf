"""Reading and writing the JSON files of a run's folder, so that a reader never sees half a file.

Both directions are strict JSON: NaN and ±Infinity, which Python's json module writes and reads by default, are not
JSON and would make a run look finished with numbers that are not numbers. A metric that is undefined is null (its
reason beside it), and a non-finite value fails the evaluation long before a file is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msa_bench.errors import ReportError, ResourceError
from msa_bench.failures import human_bytes


def _non_finite_path(value: Any, path: str) -> str | None:
    """The dotted path of the first NaN or ±inf float in `value`, None when it has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, Mapping):
        items = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for item_path, item in items:
        found = _non_finite_path(item, item_path)
        if found is not None:
            return found
    return None


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: a reader (the report, a parallel sweep
    job) sees the old file or the new one, never a partial one. Values JSON cannot hold are written as text.

    Raises:
        ValueError: `payload` holds NaN or ±inf (a bug upstream: such a value must fail its evaluation, or be null
            with a reason); nothing is written, and the message names the value's place.
    """
    path = Path(path)
    try:
        text = json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n"
    except ValueError as error:
        where = _non_finite_path(payload, "")
        raise ValueError(
            f"{path}: not written, {where or 'a value'} is not a finite number ({error}); strict JSON has no NaN "
            "or Infinity: a non-finite metric must fail the evaluation, an undefined one be null with its reason"
        ) from error
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise no_space_error(path, error) from error
        raise
    finally:
        # After any failure (a full disk, an interrupt): no partial temporary is left, and `path` is untouched.
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def no_space_error(path: Path, error: OSError) -> ResourceError:
    """The one-line error for a results file the disk had no room for."""
    try:
        free = f"{human_bytes(shutil.disk_usage(path.parent).free)} free"
    except OSError:
        free = "free space unknown"
    return ResourceError(
        f"no space left on device while writing {path} ({free}; the previous file, if any, is unchanged); free "
        "space there, or write the run elsewhere (hydra.run.dir=<a folder on a larger disk>)"
    )


class _NonFiniteLiteral(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _refuse_constant(literal: str) -> Any:
    raise _NonFiniteLiteral(literal)


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in `path`; a ReportError naming the file when it cannot be read, is not strict JSON (NaN and
    Infinity literals are refused) or is not an object."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except OSError as error:
        raise ReportError(f"{path}: cannot read this {what}: {error.strerror or error}") from error
    except _NonFiniteLiteral as error:
        where = _literal_path(path)
        raise ReportError(
            f"{path}: this {what} holds {error.literal}{f' at {where}' if where else ''}, which is not JSON: it "
            "was written by an msa_bench that let non-finite numbers through; rerun that configuration"
        ) from error
    except ValueError as error:
        raise ReportError(f"{path}: this {what} is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise ReportError(f"{path}: this {what} holds a JSON {type(payload).__name__}, not an object")
    return payload


def _literal_path(path: Path) -> str | None:
    """Where the first NaN or Infinity literal of a JSON file sits, read again leniently to name it."""
    try:
        return _non_finite_path(json.loads(path.read_text(encoding="utf-8")), "")
    except (OSError, ValueError):
        return None


def newer_version_error(path: Path | str, what: str, found: Any, supported: int) -> ReportError:
    return ReportError(
        f"{path}: schema_version {found!r} of this {what} is not one this msa_bench reads (it reads versions up "
        f"to {supported}); read it with the msa_bench version that wrote it (its `versions` field), or upgrade"
    )
