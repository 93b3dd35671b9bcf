"""The `msa-bench` command: compose the Hydra config, validate it, run one job (or a sweep with -m)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from msa_bench.errors import ConfigError, MSABenchError
from msa_bench.plugins import register_schemas
from msa_bench.sweeps import silence_launcher_schema_warning
from msa_bench.validation import validate_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"

log = logging.getLogger("msa_bench")


def _data_subfolder(name: str) -> str | None:
    """`${msa_bench_data:tofu}`: <MSA_BENCH_DATA>/tofu when that variable is set, else null."""
    root = os.environ.get("MSA_BENCH_DATA")
    return str(Path(root).expanduser() / name) if root else None


if not OmegaConf.has_resolver("msa_bench_root"):
    OmegaConf.register_new_resolver("msa_bench_root", lambda: str(PROJECT_ROOT))
    OmegaConf.register_new_resolver("msa_bench_data", _data_subfolder)
register_schemas()
silence_launcher_schema_warning()


def _remove_empty_run_dir(output_dir: Path) -> None:
    """Hydra creates the run directory before the job starts; a config error leaves nothing behind."""
    if not output_dir.is_dir():
        return
    leftovers = [
        p
        for p in output_dir.iterdir()
        if p.name not in {".hydra", "status.json"} and not p.name.endswith(".log")
    ]
    if leftovers:
        return
    shutil.rmtree(output_dir, ignore_errors=True)
    # Also the empty `outputs/<date>` folders Hydra made for it, but never anything outside the working directory.
    cwd = Path.cwd().resolve()
    for parent in list(output_dir.resolve().parents)[:2]:
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def _execute(config, resolved: dict, output_dir: Path) -> dict:
    from msa_bench.progress import quiet_console_logging
    from msa_bench.runner import run

    with quiet_console_logging(config.progress):
        return run(config, resolved, output_dir)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def hydra_entry(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # A sweep job records its failure (status.json, its log, the sweep summary) instead of stopping the sweep.
        from msa_bench.sweeps.jobs import run_sweep_job

        return run_sweep_job(cfg, output_dir, validate_config, _execute, config_errors=(ConfigError,))

    try:
        config = validate_config(cfg)
    except ConfigError as error:
        _remove_empty_run_dir(output_dir)
        print(f"msa-bench: config error: {error}", file=sys.stderr)
        sys.exit(2)

    from msa_bench.runner import resolved_container
    from msa_bench.sweeps.status import JobStatus, config_hash

    resolved = resolved_container(cfg)
    status = JobStatus(output_dir, overrides=[str(o) for o in hydra_cfg.overrides.task])
    status.running(config_hash=config_hash(resolved))
    try:
        results = _execute(config, resolved, output_dir)
    except (MSABenchError, FileNotFoundError) as error:
        # Errors a user can fix (a config value, a path, the data): one line, no traceback. FileNotFoundError stays
        # while some loaders still raise it unwrapped.
        status.discard()
        _remove_empty_run_dir(output_dir)
        print(f"msa-bench: error: {error}", file=sys.stderr)
        sys.exit(2)
    except BaseException as error:
        status.failed(error)
        raise
    status.done()
    return results["metrics"].get("forget_quality")


def main() -> None:
    # Subcommands that are not Hydra jobs; everything else is a Hydra run (or sweep with -m).
    if len(sys.argv) > 1 and sys.argv[1] == "parity":
        from msa_bench.parity.command import main as parity_main

        sys.exit(parity_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "cache":
        from msa_bench.pipeline.cache_command import main as cache_main

        sys.exit(cache_main(sys.argv[2:], default_root=PROJECT_ROOT / ".cache" / "msa_bench"))
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from msa_bench.reporting.command import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    if any(argument in ("--help", "-h") for argument in sys.argv[1:]):
        # Our page instead of Hydra's generic one (which lists the internal schema/* groups); --hydra-help is Hydra's.
        from msa_bench.cli_help import help_text

        print(help_text(CONFIG_DIR))
        return
    hydra_entry()
    from msa_bench.sweeps.callbacks import last_sweep_failed

    if last_sweep_failed():  # a multirun with failed jobs: the summary above lists them
        sys.exit(1)


if __name__ == "__main__":
    main()
