"""The `msa-bench` command: compose the Hydra config, validate it, run one job (or a sweep with -m)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from msa_bench.distributed import broadcast_object, init_process_group, is_distributed, is_main_process, rank
from msa_bench.errors import (
    ConfigError,
    InsufficientMemoryError,
    MSABenchError,
    RankZeroFailedError,
    RunFolderInUseError,
    RunInterrupted,
)
from msa_bench.interrupts import signals_raise_run_interrupted
from msa_bench.plugins import register_schemas
from msa_bench.quiet_imports import import_torchao_quietly
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


def config_error_text(error: ConfigError) -> str:
    """`msa-bench: config error: <problem>`, or a count and one indented line per problem when there are several."""
    problems = error.problems or (type(error).__name__,)
    if len(problems) == 1:
        return f"msa-bench: config error: {problems[0]}"
    return f"msa-bench: {len(problems)} config errors:\n" + "\n".join(f"  {problem}" for problem in problems)


def _execute(config, resolved: dict, output_dir: Path) -> dict:
    from msa_bench.progress import quiet_console_logging
    from msa_bench.runner import run

    with quiet_console_logging(config.progress):
        return run(config, resolved, output_dir)


def _log_traceback_to_file(message: str, error: BaseException, output_dir: Path) -> None:
    """The traceback of a failure reported in one line goes to the run's msa_bench.log, not to the console."""
    from msa_bench.progress import run_log_file

    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, message, (), (type(error), error, error.__traceback__)
    )
    log_file = run_log_file(output_dir)
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == log_file
    ]
    try:
        if handlers:  # Hydra's job log
            for handler in handlers:
                handler.handle(record)
        else:
            with log_file.open("a", encoding="utf-8") as handle:
                handle.write(logging.Formatter().format(record) + "\n")
    except OSError:  # a full disk can refuse the log too; the console line is what must get through
        pass


def _report_failure(error: BaseException, config, status, output_dir: Path) -> NoReturn:
    """End a failed job: one line for errors a user can fix and for known failures of the machine or the files
    (full disk, out of memory, a corrupt weights file: msa_bench/failures.py), a traceback for anything else."""
    from msa_bench.errors import ResourceError
    from msa_bench.failures import describe_known_failure, forget_failure_context

    try:
        known = describe_known_failure(error, config) if isinstance(error, Exception) else None
        if known is None and isinstance(error, ResourceError):
            known = str(error)
        if known is None and isinstance(error, MSABenchError | FileNotFoundError):
            # Errors a user can fix (a config value, a path, the data): one line, no traceback. FileNotFoundError
            # stays while some loaders still raise it unwrapped. A folder with nothing but logs is removed; one that
            # keeps files says in status.json that the run failed, and why.
            status.failed(error, with_traceback=False)
            _remove_empty_run_dir(output_dir)
            print(f"msa-bench: error: {error}", file=sys.stderr)
            sys.exit(2)
        if known is None:
            status.failed(error)
            raise error
        _log_traceback_to_file(known, error, output_dir)
        print(f"msa-bench: error: {known}", file=sys.stderr)
        try:  # best effort: on a full disk the status file may not be writable either
            status.failed(error)
        except OSError as status_error:
            print(
                f"msa-bench: also: could not mark {status.path} failed ({status_error.strerror or status_error}); "
                "it may still say running",
                file=sys.stderr,
            )
        sys.exit(2)
    finally:
        forget_failure_context()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def hydra_entry(cfg: DictConfig) -> float | None:
    # Before validation's registries load transformers' model classes, which import torchao: its import-time lines
    # are dropped (msa_bench/quiet_imports.py). Here, not at the command's start: a malformed override fails in
    # Hydra's composition without importing torch.
    import_torchao_quietly()
    # SIGTERM/SIGINT unwind the job (its finally blocks run, status.json says interrupted); main() sets the exit code.
    with signals_raise_run_interrupted():
        return _job(cfg)


def _job(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if sweep and is_distributed():
        # Rank 0 alone decides whether each job of a sweep runs (it may skip a finished one, or refuse its
        # config); the others join the process group first, to hear that decision and run the same jobs.
        from msa_bench.runner import resolve_device

        init_process_group(resolve_device(str(cfg.device)), float(cfg.get("dist_timeout_minutes", 720.0)))
    if not is_main_process():
        if sweep and broadcast_object(None) != "run":
            return None
        return _follower_job(cfg, output_dir, in_sweep=sweep)
    if sweep:
        # A sweep job records its failure (status.json, its log, the sweep summary) instead of stopping the sweep.
        from msa_bench.sweeps.jobs import run_sweep_job

        return run_sweep_job(
            cfg,
            output_dir,
            validate_config,
            _execute,
            config_errors=(ConfigError,),
            announce=broadcast_object,
        )

    try:
        config = validate_config(cfg)
    except ConfigError as error:
        _remove_empty_run_dir(output_dir)
        print(config_error_text(error), file=sys.stderr)
        sys.exit(2)

    from msa_bench.runner import resolved_container
    from msa_bench.sweeps.run_folder import check_run_folder, remove_replaced_results
    from msa_bench.sweeps.status import JobStatus, config_hash, mark_if_crashed

    resolved = resolved_container(cfg)
    try:  # the Hydra callback (msa_bench.sweeps.run_folder) refused already, unless it is not registered
        replaced = check_run_folder(output_dir, resolved, overwrite=config.overwrite)
    except RunFolderInUseError as error:
        print(f"msa-bench: error: {error}", file=sys.stderr)
        sys.exit(2)
    if replaced is not None:
        remove_replaced_results(output_dir, replaced)
    status = JobStatus(output_dir, overrides=[str(o) for o in hydra_cfg.overrides.task])
    crashed = mark_if_crashed(output_dir)
    if crashed is not None:
        log.warning(
            "the previous run in %s (pid %s, started %s) died without recording an end: marked crashed; completed "
            "stages come from the cache",
            output_dir,
            crashed.get("pid"),
            crashed.get("started_at"),
        )
        status.update(
            previous_attempt={k: crashed.get(k) for k in ("state", "pid", "started_at", "crashed_found_at")}
        )
    status.running(config_hash=config_hash(resolved))
    try:
        results = _execute(config, resolved, output_dir)
    except RunInterrupted as interrupt:
        status.interrupted(interrupt.signal_name)
        raise
    except BaseException as error:
        _report_failure(error, config, status, output_dir)
    status.done()
    return results["metrics"].get("forget_quality")


def _follower_job(cfg: DictConfig, output_dir: Path, in_sweep: bool = False) -> None:
    """A rank > 0 of a launch of several processes: the same job in lockstep with rank 0, which alone checks the run
    folder, writes status.json and the results (msa_bench/distributed.py). Errors: one line, exit 2, as on rank 0.
    In a sweep, a failure every rank shares (rank 0's, or a memory refusal the ranks agreed on) ends only this job,
    as it does on rank 0, which records it; the ranks then go on to the next job together."""
    try:
        config = validate_config(cfg)
    except ConfigError as error:
        print(config_error_text(error), file=sys.stderr)
        sys.exit(2)
    try:
        _execute(config, resolved_container_of(cfg), output_dir)
    except (RankZeroFailedError, InsufficientMemoryError) as error:
        print(f"msa-bench: error (rank {rank()}): {error}", file=sys.stderr)
        if not in_sweep:
            sys.exit(2)
    except MSABenchError as error:
        print(f"msa-bench: error (rank {rank()}): {error}", file=sys.stderr)
        sys.exit(2)
    return None


def resolved_container_of(cfg: DictConfig) -> dict:
    from msa_bench.runner import resolved_container

    return resolved_container(cfg)


def follower_run_folder_overrides(arguments: list[str]) -> list[str]:
    """Hydra overrides that give a rank > 0 its own scratch run folder (in the system temporary folder), so that a
    launch of N processes makes one run folder, rank 0's, with one results.json; a rank's own log stays there."""
    if is_main_process():
        return arguments
    folder = tempfile.mkdtemp(prefix=f"msa-bench-rank{rank()}-")
    kept = [a for a in arguments if not a.lstrip("+").startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    return [*kept, f"hydra.run.dir={folder}", f"hydra.sweep.dir={folder}"]


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
    sys.argv[1:] = follower_run_folder_overrides(sys.argv[1:])
    try:
        hydra_entry()
    except RunInterrupted as interrupt:
        print(
            f"msa-bench: {interrupt}. Run the same command again to go on: completed stages come from the cache.",
            file=sys.stderr,
        )
        sys.exit(interrupt.exit_code)
    except BaseException as stop:
        # Hydra prints its own error and exits; a multirun stopped that way still gets its summary (and one line).
        from msa_bench.sweeps.callbacks import close_stopped_sweep

        line = close_stopped_sweep(stop.__context__ if isinstance(stop, SystemExit) else stop)
        if line is not None:
            print(line, file=sys.stderr)
        raise
    from msa_bench.sweeps.callbacks import last_sweep_failed

    if last_sweep_failed():  # a multirun with failed jobs: the summary above lists them
        sys.exit(1)


if __name__ == "__main__":
    main()
