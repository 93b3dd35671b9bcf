"""Reusing a run folder: never over another configuration's finished results, and never over a dead run's status.

A single run (`msa-bench ... hydra.run.dir=<folder>`) into a folder that holds a finished results.json of another
configuration (another config hash, `status.config_hash`) is refused, unless `overwrite=true`. The same config may
rerun there: every stage comes from the cache and the results are the same. The check runs in the Hydra callback's
`on_run_start`, before Hydra's `run_job` creates the folder and rewrites `.hydra/config.yaml`, `hydra.yaml` and
`overrides.yaml`, so a refused run leaves the folder byte-identical.

Sweeps keep their own rule (msa_bench/sweeps/jobs.py): a job folder holding another config's results has them
renamed to `results.stale-<hash>.json` and `per_item.stale-<hash>.json`, so nothing is lost and a re-run sweep with
other values goes on. At the start of a multirun, every job folder whose status was left `running` by a dead process
is marked `crashed`.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from msa_bench.errors import RunFolderInUseError
from msa_bench.results import PER_ITEM_FILE
from msa_bench.sweeps.status import (
    RESULTS_FILE,
    config_hash,
    hashable_config,
    mark_crashed_jobs,
    read_json,
    relative_to,
)

log = logging.getLogger("msa_bench.sweeps")

# At most this many differing keys are named in the refusal; the rest are counted.
_MAX_NAMED_KEYS = 5


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two JSON-like configs (a key present in one only counts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                keys.append(dotted)
            else:
                keys += differing_keys(old[key], new[key], dotted)
        return keys
    return [] if old == new else [prefix or "<config>"]


def _has_key(config: dict, dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _describe(keys: list[str], old: dict, new: dict) -> str:
    def value(config: dict, dotted: str) -> str:
        node: Any = config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return "(absent)"
            node = node[part]
        return repr(node)

    named = [f"{key}: {value(old, key)} -> {value(new, key)}" for key in keys[:_MAX_NAMED_KEYS]]
    more = len(keys) - len(named)
    return "; ".join(named) + (f"; and {more} more" if more > 0 else "")


def check_run_folder(run_dir: Path, resolved: dict, overwrite: bool) -> str | None:
    """Raise RunFolderInUseError when `run_dir` holds a results.json of another config and `overwrite` is false.

    Returns the hash of the other config's results when they are to be replaced (overwrite=true), else None.
    """
    results_path = Path(run_dir) / RESULTS_FILE
    if not results_path.exists():
        return None
    previous = read_json(results_path)
    old_config = (previous or {}).get("config")
    new_hash = config_hash(resolved)
    if isinstance(old_config, dict):
        old_hash = config_hash(old_config)
        if old_hash == new_hash:
            return None
        old_kept, new_kept = hashable_config(old_config), hashable_config(resolved)
        # A key the old results lack entirely is a field added to msa_bench since they were written (strict keys
        # refuse any other): the same command rerun after an upgrade is not another configuration.
        keys = [key for key in differing_keys(old_kept, new_kept) if _has_key(old_kept, key)]
        if not keys:
            return None
        changes = _describe(keys, old_kept, new_kept)
        what = f"a finished results.json of another configuration (config hash {old_hash}; {changes})"
    else:
        old_hash = "unknown"
        what = "a results.json that cannot be read as a run's results (no resolved config in it)"
    if overwrite:
        return old_hash
    raise RunFolderInUseError(
        f"{run_dir} holds {what}, and this run (config hash {new_hash}) would replace it. Choose another "
        "hydra.run.dir, or add overwrite=true to replace those results."
    )


def remove_replaced_results(run_dir: Path, old_hash: str) -> None:
    """overwrite=true: remove the other config's results before this run starts, so that a failure of this run
    cannot leave them looking like its own."""
    for name in (RESULTS_FILE, PER_ITEM_FILE):
        (Path(run_dir) / name).unlink(missing_ok=True)
    log.warning(
        "overwrite=true: removed the results of another configuration (config hash %s) from %s; this run's results "
        "replace them",
        old_hash,
        run_dir,
    )


def resolved_task_config(config: DictConfig, run_dir: Path) -> dict:
    """The job's resolved config (what results.json records), computed as Hydra's run_job will: with
    hydra.runtime.output_dir set to the run folder, and without the `hydra` node."""
    probe = copy.deepcopy(config)
    with read_write(probe.hydra.runtime), open_dict(probe.hydra.runtime):
        probe.hydra.runtime.output_dir = str(run_dir)
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(probe)
    try:
        with read_write(probe), open_dict(probe):
            del probe["hydra"]
        try:
            return OmegaConf.to_container(probe, resolve=True)
        except Exception:  # an unresolvable interpolation: the run's own validation reports it
            return OmegaConf.to_container(probe, resolve=False)
    finally:
        hydra_config.cfg = previous


class RunFolderCallback(Callback):
    """Registered in conf/hydra/default.yaml: guards a single run's folder, and marks a sweep's crashed jobs."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
        if not (run_dir / RESULTS_FILE).exists():
            return
        overwrite = bool(OmegaConf.select(config, "overwrite", default=False))
        try:
            check_run_folder(run_dir, resolved_task_config(config, run_dir), overwrite)
        except RunFolderInUseError as error:
            # Hydra's run_and_report would print a traceback and exit 1 for an exception; msa-bench's errors are
            # one line and exit 2.
            print(f"msa-bench: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from error

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        for folder in mark_crashed_jobs(sweep_dir):
            log.warning(
                "%s: its last run died without recording an end; status.json now says crashed",
                relative_to(folder, sweep_dir),
            )
