"""status.json: what became of one job, written in its run directory.

    {"state": "running" | "done" | "failed" | "skipped" | "interrupted" | "crashed", "overrides": [...],
     "config_hash": "...", "wall_seconds": ..., "started_at": ..., "finished_at": ..., "job_num": ...,
     "log_file": ..., "host": ..., "pid": ...,
     "error": {"type": ..., "message": ..., "traceback": ...}        # failed only
     "signal": "SIGTERM" | "SIGINT"                                  # interrupted only
     "crashed_found_at": ...                                         # crashed only
     "previous_attempt": {"state": ..., "pid": ..., "started_at": ...}   # a reused folder's last run
     "done_in": "<run dir of the completed twin, relative to the sweep dir>"}   # skipped only

`interrupted`: the run got SIGTERM or SIGINT, ran its cleanup and exited with 128 + the signal number.
`crashed`: the status said `running`, but its process (same host, same pid) no longer exists: it was killed
(SIGKILL, out of memory) before it could record anything. A later run in the folder, a sweep at its start and the
sweep summary find such runs (`liveness`); a status written on another host is left as it is, since its process
cannot be checked from here.

The config hash identifies what a job computes: the SHA-256 of its resolved config without the keys that only say
where files go or how a run is displayed and logged (`paths`, `logger`, `progress`; Hydra's own `hydra` node is never
part of a job's config). Two jobs with the same hash produce the same results.json metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import traceback as traceback_module
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from msa_bench.errors import ReportError
from msa_bench.results import RESULTS_FILE, RunResults

STATUS_FILE = "status.json"
SWEEP_RUN_FILE = ".sweep_run.json"  # written by the callback at the start of a multirun

RUNNING, DONE, FAILED, SKIPPED = "running", "done", "failed", "skipped"
INTERRUPTED, CRASHED = "interrupted", "crashed"
STATES = (RUNNING, DONE, FAILED, SKIPPED, INTERRUPTED, CRASHED)

# Top-level config keys that do not change what a job computes (`overwrite` only says whether a run may replace
# another config's results in its folder; `cache` only how hard cached entries are checked; `preflight` only whether
# a stage that looks too large is refused).
HASH_EXCLUDED_KEYS = ("paths", "logger", "progress", "hydra", "overwrite", "cache", "preflight")
# Folders under a sweep directory that never hold jobs.
_NOT_JOB_FOLDERS = {".submitit", "wandb", ".hydra", "report"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write beside `path`, then rename: a reader (the summary, a parallel job) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def hashable_config(resolved: Mapping) -> dict:
    """The part of a resolved config that the config hash covers, normalised through JSON."""
    kept = {key: value for key, value in resolved.items() if key not in HASH_EXCLUDED_KEYS}
    return json.loads(json.dumps(kept, default=str))


def config_hash(resolved: Mapping) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of `hashable_config(resolved)`."""
    canonical = json.dumps(hashable_config(resolved), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def error_record(error: BaseException, with_traceback: bool = True) -> dict:
    record = {"type": type(error).__name__, "message": str(error)}
    if with_traceback:
        record["traceback"] = "".join(
            traceback_module.format_exception(type(error), error, error.__traceback__)
        )
    return record


class JobStatus:
    """The status.json of one run directory; every update rewrites the whole file atomically."""

    def __init__(self, run_dir: Path, **fields: Any):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATUS_FILE
        self._started = time.perf_counter()
        self.record: dict[str, Any] = {
            "state": RUNNING,
            "started_at": now_iso(),
            "host": platform.node(),
            "pid": os.getpid(),
            "run_dir": str(self.run_dir),
            **fields,
        }

    def update(self, **fields: Any) -> None:
        self.record.update(fields)

    def _write(self, state: str, **fields: Any) -> dict:
        self.record.update(fields)
        self.record["state"] = state
        if state != RUNNING:
            self.record["finished_at"] = now_iso()
            self.record["wall_seconds"] = round(time.perf_counter() - self._started, 3)
        write_json_atomically(self.path, self.record)
        return self.record

    def running(self, **fields: Any) -> dict:
        return self._write(RUNNING, **fields)

    def done(self, **fields: Any) -> dict:
        return self._write(DONE, **fields)

    def failed(self, error: BaseException, with_traceback: bool = True, **fields: Any) -> dict:
        return self._write(FAILED, error=error_record(error, with_traceback), **fields)

    def skipped(self, done_in: str, **fields: Any) -> dict:
        return self._write(SKIPPED, done_in=done_in, **fields)

    def interrupted(self, signal_name: str, **fields: Any) -> dict:
        return self._write(INTERRUPTED, signal=signal_name, **fields)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"


def liveness(status: Mapping) -> str:
    """Whether the process that wrote a `running` status still exists: alive, dead, or unknown (another host, or
    no pid recorded). A pid reused by an unrelated process reads as alive, the safe side."""
    if status.get("host") != platform.node() or not isinstance(status.get("pid"), int):
        return UNKNOWN
    try:
        os.kill(status["pid"], 0)
    except ProcessLookupError:
        return DEAD
    except PermissionError:  # it exists, under another user
        return ALIVE
    return ALIVE


def effective_state(status: Mapping) -> str:
    """The state a reader should show: `crashed` for a `running` status whose process is gone, else the state."""
    state = status.get("state")
    if state == RUNNING and liveness(status) == DEAD:
        return CRASHED
    return str(state)


def mark_if_crashed(run_dir: Path) -> dict | None:
    """Rewrite a status.json left `running` by a dead process of this host as `crashed`; returns the new record,
    or None when there was nothing to mark."""
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path)
    if status is None or status.get("state") != RUNNING or liveness(status) != DEAD:
        return None
    status.update(state=CRASHED, crashed_found_at=now_iso())
    write_json_atomically(path, status)
    return status


def mark_crashed_jobs(sweep_dir: Path) -> list[Path]:
    """`mark_if_crashed` in every job folder of a sweep; returns the folders it marked."""
    return [folder for folder in job_folders(sweep_dir) if mark_if_crashed(folder) is not None]


def job_folders(sweep_dir: Path) -> Iterator[Path]:
    """Every folder under the sweep directory that holds a status.json or a results.json (any subdir layout)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return
    seen: set[Path] = set()
    for name in (STATUS_FILE, RESULTS_FILE):
        for path in sorted(sweep_dir.rglob(name)):
            relative = path.parent.relative_to(sweep_dir)
            if any(part in _NOT_JOB_FOLDERS for part in relative.parts):
                continue
            if path.parent not in seen:
                seen.add(path.parent)
                yield path.parent


def completed_run(sweep_dir: Path, wanted_hash: str) -> Path | None:
    """A run directory in the sweep whose results.json was computed from a config with this hash, or None.

    The hash is recomputed from results.json's own resolved config, so a folder that was reused for another config
    never matches. A folder whose status says a later attempt is running, failed, was interrupted or crashed is not
    trusted."""
    for folder in job_folders(sweep_dir):
        try:
            record = RunResults.read(folder / RESULTS_FILE)
        except ReportError:  # missing or unreadable: not a completed run
            continue
        if not record.config:
            continue
        status = read_json(folder / STATUS_FILE) or {}
        if status.get("state") in (RUNNING, FAILED, INTERRUPTED, CRASHED):
            continue
        if config_hash(record.config) == wanted_hash:
            return folder
    return None


def relative_to(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve())) or "."
    except ValueError:
        return str(path)


def sweep_group_name(sweep_dir: str | Path) -> str:
    """The W&B group of a sweep's runs: the sweep directory's name, with its parent's name when the name alone is
    Hydra's default time of day (multirun/<date>/<time>), so two days' sweeps do not share a group."""
    path = Path(str(sweep_dir))
    name = path.name
    parts = name.split("-")
    if len(parts) == 3 and all(p.isdigit() and len(p) == 2 for p in parts) and path.parent.name:
        name = f"{path.parent.name}_{name}"
    return name[:128]
