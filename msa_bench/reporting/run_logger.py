"""Logging a run's results to Weights & Biases (offline by default), to a local JSONL file, or nowhere.

results.json in the run directory is the record of truth; W&B mirrors it. The WANDB_MODE environment variable, when
set, wins over `logger.mode`, so CI and tests can disable W&B for every job of a sweep. The runs of one sweep share a
W&B group: `logger.group`, or by default the sweep directory's name.

When wandb.init fails (a timeout, a CommError, no login, any exception), the run goes on with a warning and logs what
W&B would have received to <run dir>/metrics.jsonl, unless `logger.require_online=true` (then it is an error). There is
no second wandb.init in the process, neither an offline retry nor the next job of a sweep: after a failed online
init, a later init in the same process times out too (wandb issue #9865).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from msa_bench.config.schema import LoggerConfig
from msa_bench.distributed import is_main_process
from msa_bench.errors import RunLoggerError

log = logging.getLogger("msa_bench.logger")

METRICS_FILE = "metrics.jsonl"

# Why wandb.init failed in this process, once it has; later runs in the process go straight to the local log.
_wandb_init_failure: str | None = None


def sweep_group() -> str | None:
    """In a multirun, the W&B group its runs share when `logger.group` is null: the sweep directory's name."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # not inside a Hydra job (e.g. the runner called from Python)
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    from msa_bench.sweeps.status import sweep_group_name

    return sweep_group_name(hydra_cfg.sweep.dir)


class NullRunLogger:
    def log_results(self, results: dict, table_rows: dict) -> None:
        pass

    def finish(self) -> None:
        pass


def flat_summary(results: dict, table_rows: dict) -> dict:
    """The run's numbers under W&B summary keys: metrics/<name>, cost/<stage>/<key>, compare/<model>/<name>."""
    summary = {f"metrics/{k}": v for k, v in results["metrics"].items()}
    for stage, cost in results["cost"].items():
        for key, value in cost.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                summary[f"cost/{stage}/{key}"] = value
    for model, metrics in table_rows.items():
        for name, value in metrics.items():
            summary[f"compare/{model}/{name}"] = value
    return summary


class JsonlRunLogger:
    """The local metrics log: one JSON object per line in <run dir>/metrics.jsonl, with what W&B would receive."""

    def __init__(self, output_dir: Path, run_name: str, config: dict):
        self.path = Path(output_dir) / METRICS_FILE
        self.run_name = run_name
        self._append({"event": "start", "run_name": run_name, "config": config})

    def _append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="seconds"), **record}, default=str)
        with open(self.path, "a") as stream:
            stream.write(line + "\n")

    def log_results(self, results: dict, table_rows: dict) -> None:
        self._append(
            {"event": "results", "run_name": self.run_name, "summary": flat_summary(results, table_rows)}
        )

    def finish(self) -> None:
        pass


class WandbRunLogger:
    def __init__(self, cfg: LoggerConfig, output_dir: Path, run_name: str, config: dict, mode: str):
        import wandb

        self._wandb = wandb
        if mode == "online":
            log.info("W&B online: make sure you are logged in (`wandb login`), or use logger.mode=offline")
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or sweep_group(),
            tags=list(cfg.tags),
            name=run_name,
            config=config,
            dir=str(output_dir),
            mode=mode,
            reinit="finish_previous",  # a Hydra sweep runs several jobs in one process
        )

    def log_results(self, results: dict, table_rows: dict) -> None:
        self.run.summary.update(flat_summary(results, table_rows))
        columns = ["metric", *table_rows]
        names = list(results["metrics"])
        table = self._wandb.Table(
            columns=columns, data=[[n, *(table_rows[m].get(n) for m in table_rows)] for n in names]
        )
        self.run.log({"comparison": table})

    def finish(self) -> None:
        self.run.finish()


def make_run_logger(cfg: LoggerConfig, output_dir: Path, run_name: str, config: dict):
    """The run's logger. Raises RunLoggerError when W&B cannot start online and `logger.require_online` is true."""
    global _wandb_init_failure
    if cfg.backend == "none" or not is_main_process():  # with several processes, rank 0 alone logs
        return NullRunLogger()
    mode = os.environ.get("WANDB_MODE") or cfg.mode
    if _wandb_init_failure is None:
        try:
            return WandbRunLogger(cfg, output_dir, run_name, config, mode)
        except Exception as error:  # whatever wandb raises (CommError, a timeout, no login): fall back below
            _wandb_init_failure = f"{type(error).__name__}: {error}"
            reason = f"wandb.init failed: {_wandb_init_failure}"
    else:
        reason = f"wandb.init failed earlier in this process ({_wandb_init_failure}); it is not tried again"
    local = Path(output_dir) / METRICS_FILE
    if cfg.require_online and mode == "online":
        raise RunLoggerError(
            f"W&B could not start online ({reason}), and logger.require_online=true forbids the local fallback: "
            f"check the network and `wandb login`, or set logger.require_online=false to log to {local} instead"
        )
    log.warning(
        "W&B could not start (%s); this run logs to %s instead, and results.json holds every number. To upload it "
        "later, run the same command again once W&B is reachable (every stage and evaluation comes from the cache, "
        "so only the upload runs), or use logger.mode=offline and `wandb sync <run dir>/wandb/offline-run-*`.",
        reason,
        local,
    )
    return JsonlRunLogger(output_dir, run_name, config)
