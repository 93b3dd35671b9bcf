"""The Hydra callback that makes a sweep's outcome visible (registered in conf/hydra/default.yaml).

on_multirun_start (the launching process): give this multirun an id in <sweep dir>/.sweep_run.json, which every job
copies into its status.json, so the summary lists this invocation's jobs only.
on_job_end (wherever the job ran): if an exception escaped the job (msa_bench's own jobs record their failures, so
this only catches failures outside them), record it in the job's status.json.
on_multirun_end (the launching process): write sweep_summary.json / .md into the sweep directory, print the summary,
and remember whether any job failed; `msa-bench` then exits with status 1.

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
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.sweep_run = uuid.uuid4().hex[:12]
        self.started_at = now_iso()
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
        global LAST_SUMMARY
        sweep_dir = Path(str(config.hydra.sweep.dir))
        summary = write_summary(sweep_dir, self.sweep_run, self.started_at)
        LAST_SUMMARY = summary
        if self.print_summary:
            print("\n" + to_text(summary) + "\n", flush=True)
        if not summary["ok"]:
            log.error("the sweep has failed jobs: see %s", sweep_dir / "sweep_summary.md")
