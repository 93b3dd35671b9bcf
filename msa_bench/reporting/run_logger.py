"""Logging a run's results to Weights & Biases (offline by default) or nowhere.

results.json in the run directory is the record of truth; W&B mirrors it. The WANDB_MODE environment variable, when
set, wins over `logger.mode`, so CI and tests can disable W&B for every job of a sweep. The runs of one sweep share a
W&B group: `logger.group`, or by default the sweep directory's name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from msa_bench.config.schema import LoggerConfig

log = logging.getLogger("msa_bench.logger")


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


class WandbRunLogger:
    def __init__(self, cfg: LoggerConfig, output_dir: Path, run_name: str, config: dict):
        import wandb

        self._wandb = wandb
        mode = os.environ.get("WANDB_MODE") or cfg.mode
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
        summary = {f"metrics/{k}": v for k, v in results["metrics"].items()}
        for stage, cost in results["cost"].items():
            for key, value in cost.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    summary[f"cost/{stage}/{key}"] = value
        for model, metrics in table_rows.items():
            for name, value in metrics.items():
                summary[f"compare/{model}/{name}"] = value
        self.run.summary.update(summary)
        columns = ["metric", *table_rows]
        names = list(results["metrics"])
        table = self._wandb.Table(
            columns=columns, data=[[n, *(table_rows[m].get(n) for m in table_rows)] for n in names]
        )
        self.run.log({"comparison": table})

    def finish(self) -> None:
        self.run.finish()


def make_run_logger(cfg: LoggerConfig, output_dir: Path, run_name: str, config: dict):
    if cfg.backend == "none":
        return NullRunLogger()
    return WandbRunLogger(cfg, output_dir, run_name, config)
