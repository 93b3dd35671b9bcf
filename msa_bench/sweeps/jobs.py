"""One job of a multirun: validate, skip if an identical job already completed in this sweep, run, and record.

A sweep job never raises (Hydra 1.3.8 would report only the first failure, and stop a `max_batch_size=1` sweep at
it). A failure is written to the job's status.json with its traceback, logged to the job's own log file, printed to
stderr, and counted in the sweep summary, which makes the process exit non-zero at the end of the sweep.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, read_write

from msa_bench.errors import RunInterrupted
from msa_bench.failures import describe_known_failure, forget_failure_context
from msa_bench.sweeps.status import (
    RESULTS_FILE,
    SKIPPED,
    STATUS_FILE,
    SWEEP_RUN_FILE,
    JobStatus,
    completed_run,
    config_hash,
    read_json,
    relative_to,
)

log = logging.getLogger("msa_bench.sweeps")

# Launchers that run a sweep's jobs side by side on one machine: each job gets one torch thread unless the sweep
# sets num_threads itself.
_PARALLEL_LOCAL_LAUNCHERS = ("JoblibLauncher", "LocalLauncher")


def runs_in_parallel_locally(hydra_cfg) -> bool:
    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if not target.endswith(_PARALLEL_LOCAL_LAUNCHERS):
        return False
    if target.endswith("JoblibLauncher"):
        return OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=-1) != 1
    return True


def one_thread_per_parallel_job(cfg: DictConfig, hydra_cfg) -> str | None:
    """Set num_threads=1 when the launcher runs jobs side by side and the command line did not choose num_threads.
    Returns a note for status.json when it did."""
    overrides = [str(o) for o in (OmegaConf.select(hydra_cfg, "overrides.task", default=[]) or [])]
    if not runs_in_parallel_locally(hydra_cfg) or any(
        o.lstrip("+~").startswith("num_threads=") for o in overrides
    ):
        return None
    if cfg.get("num_threads") == 1:
        return None
    with read_write(cfg):
        cfg.num_threads = 1
    return "num_threads=1: the launcher runs jobs in parallel (override num_threads=N to choose)"


def rewrite_saved_config(cfg: DictConfig, hydra_cfg, output_dir: Path) -> None:
    """Hydra saved the job's config before msa_bench adjusted it; the saved copy must be the config that ran."""
    subdir = OmegaConf.select(hydra_cfg, "output_subdir", default=".hydra")
    if not subdir:  # hydra.output_subdir=null: Hydra saved nothing
        return
    path = Path(output_dir) / str(subdir) / "config.yaml"
    if not path.parent.is_dir():
        return
    partial = path.with_name(path.name + ".partial")
    OmegaConf.save(cfg, partial)
    partial.replace(path)


def _resolved_or_raw(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an unresolvable interpolation is itself the config error being reported
        return OmegaConf.to_container(cfg, resolve=False)


def _close_wandb() -> None:
    """A failed job must not leave a W&B run open for the next job in the same process."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=1)
        except Exception as error:  # closing is best effort; the job's own failure is what matters
            log.warning("could not close the W&B run: %s", error)


def _move_stale_results(output_dir: Path, wanted_hash: str) -> None:
    """A reused run directory may hold results of another config (a sweep re-run with other values): keep them
    under another name, so a failure of this job cannot leave them looking like its results."""
    results = read_json(output_dir / RESULTS_FILE)
    if results is None or config_hash(results.get("config") or {}) == wanted_hash:
        return
    stale_hash = config_hash(results.get("config") or {})
    for name in (RESULTS_FILE, "per_item.json"):
        path = output_dir / name
        if path.exists():
            path.rename(path.with_name(f"{path.stem}.stale-{stale_hash}{path.suffix}"))
    log.warning(
        "%s held results of another config (hash %s); renamed them to *.stale-<hash>.json",
        output_dir,
        stale_hash,
    )


def run_sweep_job(
    cfg: DictConfig,
    output_dir: Path,
    validate: Callable[[DictConfig], object],
    execute: Callable[[object, dict, Path], dict],
    config_errors: tuple[type[BaseException], ...],
    announce: Callable[[str], None] = lambda decision: None,
) -> float | None:
    """Run one multirun job; returns its forget_quality (the value an Optuna sweep optimises), None on failure.

    validate(cfg) -> typed config (raises one of `config_errors`); execute(config, resolved, output_dir) -> results.
    announce(decision) tells the other ranks of a launch of several processes whether this job runs ("run") or not
    ("config error", "skipped"), so that they run the same jobs (msa_bench/cli.py).
    """
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(str(hydra_cfg.sweep.dir)).resolve()
    output_dir = Path(output_dir).resolve()
    sweep_run = read_json(sweep_dir / SWEEP_RUN_FILE) or {}
    job_num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    log_file = OmegaConf.select(hydra_cfg, "job_logging.handlers.file.filename", default=None)
    status = JobStatus(
        output_dir,
        job_num=job_num,
        job_id=OmegaConf.select(hydra_cfg, "job.id", default=None),
        sweep_dir=str(sweep_dir),
        sweep_run=sweep_run.get("id"),
        overrides=[str(o) for o in hydra_cfg.overrides.task],
        log_file=str(log_file) if log_file else None,
    )
    label = f"job {job_num} ({' '.join(status.record['overrides']) or 'no overrides'})"

    note = one_thread_per_parallel_job(cfg, hydra_cfg)
    if note:
        status.update(note=note)
        log.info(note)
        rewrite_saved_config(cfg, hydra_cfg, output_dir)
    try:
        config = validate(cfg)
    except config_errors as error:
        status.failed(error, with_traceback=False, config_hash=config_hash(_resolved_or_raw(cfg)))
        log.error("config error: %s", error)
        print(f"msa-bench: {label}: config error: {error}", file=sys.stderr, flush=True)
        announce("config error")
        return None

    resolved = OmegaConf.to_container(cfg, resolve=True)
    wanted_hash = config_hash(resolved)
    status.update(config_hash=wanted_hash)
    previous = completed_run(sweep_dir, wanted_hash)
    if previous is not None:
        done_in = relative_to(previous, sweep_dir)
        earlier = read_json(previous / STATUS_FILE) or {}
        if earlier.get("state") == SKIPPED:  # the folder was itself skipped into on an earlier re-run
            earlier = earlier.get("completed") or {}
        status.skipped(
            done_in=done_in,
            reason="a job with the same config hash already completed in this sweep",
            completed={k: earlier[k] for k in ("started_at", "finished_at", "wall_seconds") if k in earlier},
        )
        log.info("skipped: the same config (hash %s) already completed in %s", wanted_hash, previous)
        print(f"msa-bench: {label}: skipped, already done in {previous}", flush=True)
        announce("skipped")
        results = read_json(previous / RESULTS_FILE) or {}
        return (results.get("metrics") or {}).get("forget_quality")

    _move_stale_results(output_dir, wanted_hash)
    announce("run")
    status.running()
    try:
        results = execute(config, resolved, output_dir)
    except Exception as error:
        log.exception("%s failed", label)
        _close_wandb()
        # A full disk, out-of-memory or a corrupt weights file gets the same one line as a single run (failures.py).
        known = describe_known_failure(error, config)
        forget_failure_context()
        try:
            status.failed(error)
        except (
            OSError
        ) as status_error:  # a full disk can refuse status.json too; the line below must get through
            log.error("could not mark %s failed: %s", status.path, status_error)
        line = known or f"{type(error).__name__}: {error}"
        print(f"msa-bench: {label}: failed: {line}", file=sys.stderr, flush=True)
        return None
    except RunInterrupted as interrupt:  # SIGTERM/SIGINT: record, let it stop the sweep
        status.interrupted(interrupt.signal_name)
        raise
    except BaseException as error:  # KeyboardInterrupt, SystemExit: record, then let it stop the sweep
        status.failed(error)
        raise
    status.done()
    return results["metrics"].get("forget_quality")
