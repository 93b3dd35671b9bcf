"""The Hydra callback that makes a sweep's outcome visible (registered in conf/hydra/default.yaml).

on_multirun_start (the launching process): give this multirun an id in <sweep dir>/.sweep_run.json, which every job
copies into its status.json, so the summary lists this invocation's jobs only.
on_job_end (wherever the job ran): if an exception escaped the job (msa_bench's own jobs record their failures, so
this only catches failures outside them), record it in the job's status.json.
on_multirun_end (the launching process): write sweep_summary.json / .md into the sweep directory, print the summary,
and remember whether any job failed; `msa-bench` then exits with status 1.

Hydra calls no hook when the sweep itself fails: its sweeper composes every job of a batch before launching any
(`method=msa,nosuch` fails there, before the first job). `msa-bench` then calls `close_stopped_sweep`, which writes the
summary with that error and the jobs that did run, and gives the one-line message to print.

Every launcher calls these hooks (basic, joblib, submitit local and slurm): the job hooks run in the job's process. The
job hook acts in multiruns only; a single run reports its own errors.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from msa_bench.sweeps.status import (
    FAILED,
    STATUS_FILE,
    SWEEP_RUN_FILE,
    error_record,
    now_iso,
    read_json,
    write_json_atomically,
)
from msa_bench.sweeps.summary import to_text, write_summary

log = logging.getLogger("msa_bench.sweeps")

# The summary of the last multirun in this process (None before any); read by msa_bench.cli.main for the exit code.
LAST_SUMMARY: dict | None = None
# The multirun this process started and has not ended: (sweep dir, sweep run id, start time).
_OPEN_SWEEP: tuple[Path, str, str] | None = None


def last_sweep_failed() -> bool:
    return LAST_SUMMARY is not None and not LAST_SUMMARY["ok"]


class SweepStatusCallback(Callback):
    def __init__(self, print_summary: bool = True) -> None:
        self.print_summary = print_summary
        self.sweep_run: str | None = None
        self.started_at: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST_SUMMARY
        LAST_SUMMARY = None
        global _OPEN_SWEEP
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.sweep_run = uuid.uuid4().hex[:12]
        self.started_at = now_iso()
        _OPEN_SWEEP = (sweep_dir, self.sweep_run, self.started_at)
        write_json_atomically(
            sweep_dir / SWEEP_RUN_FILE,
            {
                "id": self.sweep_run,
                "started_at": self.started_at,
                "overrides": OmegaConf.to_container(config.hydra.overrides.task),
            },
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or str(OmegaConf.select(config, "hydra.mode")) != "MULTIRUN":
            return
        output_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
        if output_dir is None:
            return
        path = Path(str(output_dir)) / STATUS_FILE
        status = read_json(path) or {}
        if status.get("state") == FAILED:
            return
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", default=None)
        sweep_run = read_json(Path(str(sweep_dir)) / SWEEP_RUN_FILE) if sweep_dir else None
        error = job_return._return_value
        status.update(
            state=FAILED,
            finished_at=now_iso(),
            job_num=OmegaConf.select(config, "hydra.job.num", default=None),
            sweep_run=(sweep_run or {}).get("id"),
            overrides=[str(o) for o in (OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])],
            error=error_record(error) if isinstance(error, BaseException) else {"message": str(error)},
        )
        write_json_atomically(path, status)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST_SUMMARY, _OPEN_SWEEP
        _OPEN_SWEEP = None
        sweep_dir = Path(str(config.hydra.sweep.dir))
        summary = write_summary(sweep_dir, self.sweep_run, self.started_at)
        LAST_SUMMARY = summary
        if self.print_summary:
            print("\n" + to_text(summary) + "\n", flush=True)
        if not summary["ok"]:
            log.error("the sweep has failed jobs: see %s", sweep_dir / "sweep_summary.md")


def _one_line(error: BaseException | None) -> str:
    if error is None:
        return "the sweep stopped before it finished (see the messages above)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    options = getattr(error, "options", None)  # hydra.errors.MissingConfigException: the group's options
    if options:
        text += f" (options: {', '.join(options)})"
    return text


def close_stopped_sweep(error: BaseException | None) -> str | None:
    """After a multirun of this process stopped without reaching on_multirun_end: write its summary, listing `error`
    and the jobs that did run, and return the line to print (None when no multirun is open)."""
    global LAST_SUMMARY, _OPEN_SWEEP
    if _OPEN_SWEEP is None:
        return None
    sweep_dir, sweep_run, started_at = _OPEN_SWEEP
    _OPEN_SWEEP = None
    reason = _one_line(error)
    LAST_SUMMARY = write_summary(sweep_dir, sweep_run, started_at, error=reason)
    ran = LAST_SUMMARY["n_jobs"]
    return (
        f"msa-bench: the sweep stopped after {ran} job{'s' if ran != 1 else ''}: {reason}; "
        f"summary: {sweep_dir / 'sweep_summary.md'}"
    )
