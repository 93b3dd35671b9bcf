"""Reading and writing the JSON files of a run's folder, so that a reader never sees half a file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from msa_bench.errors import ReportError, ResourceError
from msa_bench.failures import human_bytes


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: a reader (the report, a parallel sweep
    job) sees the old file or the new one, never a partial one. Values JSON cannot hold are written as text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
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


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in `path`; a ReportError naming the file when it cannot be read or is not an object."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportError(f"{path}: cannot read this {what}: {error.strerror or error}") from error
    except ValueError as error:
        raise ReportError(f"{path}: this {what} is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise ReportError(f"{path}: this {what} holds a JSON {type(payload).__name__}, not an object")
    return payload


def newer_version_error(path: Path | str, what: str, found: Any, supported: int) -> ReportError:
    return ReportError(
        f"{path}: schema_version {found!r} of this {what} is not one this msa_bench reads (it reads versions up "
        f"to {supported}); read it with the msa_bench version that wrote it (its `versions` field), or upgrade"
    )
