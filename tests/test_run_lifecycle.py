"""A run's life cycle: same seed same model, no silent overwrite of a finished run, SIGTERM/SIGINT mark it
interrupted, a killed run is found crashed and its rerun reuses the completed stages, W&B falls back to a local log.

The end-to-end tests run `python -m msa_bench.cli experiment=smoke ...` in subprocesses (real signals, real exit
codes). One uninterrupted run fills a shared cache; the killed run trains in a cache of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from msa_bench.config.schema import LoggerConfig, TrainRecipe
from msa_bench.errors import RunFolderInUseError, RunInterrupted, RunLoggerError
from msa_bench.interrupts import signals_raise_run_interrupted
from msa_bench.reporting import run_logger
from msa_bench.sweeps.run_folder import check_run_folder, differing_keys
from msa_bench.sweeps.status import (
    CRASHED,
    RUNNING,
    config_hash,
    effective_state,
    liveness,
    mark_if_crashed,
    write_json_atomically,
)
from msa_bench.training.data import ExampleDataset, qa_examples
from msa_bench.training.trainer import run_training
from tests.pipeline_runs import cli_environment
from tests.tiny_models import tiny_llama, tiny_tokenizer

SMOKE = ["experiment=smoke", "logger=none", "num_threads=1"]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --- status of dead runs ------------------------------------------------------------------------------------------


def test_running_status_of_a_dead_process_reads_and_is_marked_crashed(tmp_path):
    status = {"state": RUNNING, "host": platform.node(), "pid": dead_pid()}
    assert liveness(status) == "dead" and effective_state(status) == CRASHED
    assert liveness({**status, "pid": os.getpid()}) == "alive"
    assert effective_state({**status, "pid": os.getpid()}) == RUNNING

    write_json_atomically(tmp_path / "status.json", status)
    marked = mark_if_crashed(tmp_path)
    assert marked["state"] == CRASHED and marked["crashed_found_at"]
    assert json.loads((tmp_path / "status.json").read_text())["state"] == CRASHED
    assert mark_if_crashed(tmp_path) is None  # already marked


def test_running_status_of_another_host_is_left_alone(tmp_path):
    status = {"state": RUNNING, "host": "some-other-node", "pid": dead_pid()}
    write_json_atomically(tmp_path / "status.json", status)
    before = (tmp_path / "status.json").read_bytes()
    assert liveness(status) == "unknown" and effective_state(status) == RUNNING
    assert mark_if_crashed(tmp_path) is None
    assert (tmp_path / "status.json").read_bytes() == before


# --- no silent overwrite (Part B 12) ------------------------------------------------------------------------------


def test_run_folder_check_refuses_another_config_and_allows_the_same(tmp_path):
    config = {"method": {"name": "msa", "alpha": 1.0}, "seed": 0, "paths": {"output_dir": str(tmp_path)}}
    write_json_atomically(tmp_path / "results.json", {"config": config, "metrics": {}})
    assert (
        check_run_folder(tmp_path, {**config, "paths": {"output_dir": "/elsewhere"}}, overwrite=False) is None
    )
    assert check_run_folder(tmp_path, {**config, "overwrite": True}, overwrite=True) is None  # not hashed

    other = {**config, "method": {"name": "msa", "alpha": 2.0}}
    with pytest.raises(RunFolderInUseError) as refused:
        check_run_folder(tmp_path, other, overwrite=False)
    message = str(refused.value)
    assert str(tmp_path) in message and "method.alpha: 1.0 -> 2.0" in message and "overwrite=true" in message
    assert config_hash(config) in message and config_hash(other) in message
    assert check_run_folder(tmp_path, other, overwrite=True) == config_hash(config)

    # The same command after an upgrade that added a field: the old results lack the key, nothing else differs.
    upgraded = {**config, "method": {"name": "msa", "alpha": 1.0, "new_field": False}}
    assert check_run_folder(tmp_path, upgraded, overwrite=False) is None

    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(RunFolderInUseError, match="cannot be read"):
        check_run_folder(tmp_path, config, overwrite=False)


def test_differing_keys_are_dotted_and_include_keys_of_one_side_only():
    old = {"method": {"alpha": 1.0, "beta": 1.0}, "seed": 0, "gone": 1}
    new = {"method": {"alpha": 2.0, "beta": 1.0}, "seed": 0, "added": {"x": 1}}
    assert differing_keys(old, new) == ["added", "gone", "method.alpha"]


# --- signals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_raises_run_interrupted_runs_finally_and_restores_the_handlers(signum, code):
    before = signal.getsignal(signum)
    cleaned = []
    with pytest.raises(RunInterrupted) as interrupted:
        with signals_raise_run_interrupted():
            try:
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler runs at the next bytecode; this is never reached in full
            finally:
                cleaned.append(True)
    assert interrupted.value.signum == signum and interrupted.value.exit_code == code
    assert not isinstance(interrupted.value, Exception)  # `except Exception` on the way does not swallow it
    assert cleaned == [True]
    assert signal.getsignal(signum) is before


# --- W&B falls back (Part B 19) -----------------------------------------------------------------------------------


@pytest.fixture
def failing_wandb_init(monkeypatch):
    """wandb.init raises as it does when the server cannot be reached; the calls are counted."""
    import wandb

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise wandb.errors.CommError("Run initialization has timed out after 90.0 sec.")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(run_logger, "_wandb_init_failure", None)
    return calls


ONLINE = LoggerConfig(name="wandb", backend="wandb", mode="online")


def test_failed_wandb_init_falls_back_to_the_local_log_without_a_second_init(
    tmp_path, failing_wandb_init, caplog
):
    with caplog.at_level(logging.WARNING, logger="msa_bench.logger"):
        first = run_logger.make_run_logger(ONLINE, tmp_path / "a", run_name="a", config={"seed": 0})
        second = run_logger.make_run_logger(ONLINE, tmp_path / "b", run_name="b", config={"seed": 0})
    assert isinstance(first, run_logger.JsonlRunLogger) and isinstance(second, run_logger.JsonlRunLogger)
    assert len(failing_wandb_init) == 1  # the next job of a sweep does not try again (wandb issue #9865)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "CommError" in warnings[0] and "not tried again" in warnings[1]
    assert str(tmp_path / "a" / "metrics.jsonl") in warnings[0] and "wandb sync" in warnings[0]


def test_require_online_makes_a_failed_wandb_init_an_error(tmp_path, failing_wandb_init):
    strict = LoggerConfig(name="wandb", backend="wandb", mode="online", require_online=True)
    with pytest.raises(RunLoggerError, match=r"CommError.*logger\.require_online=true forbids"):
        run_logger.make_run_logger(strict, tmp_path, run_name="a", config={})
    assert not (tmp_path / "metrics.jsonl").exists()


# --- same seed, same model (Part B 6) -----------------------------------------------------------------------------

ITEMS = [
    {"question": "Where was Ilo Varn born?", "answer": "She was born in Tarsk."},
    {"question": "What does Ilo Varn write?", "answer": "She writes sea poems."},
    {"question": "Which prize did Ilo Varn win?", "answer": "She won the Amber Quill."},
    {"question": "Where did Ilo Varn study?", "answer": "She studied at Morrow College."},
]


def _fine_tune(seed: int) -> tuple[dict[str, torch.Tensor], object]:
    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer([f"Question: {i['question']}\nAnswer: {i['answer']}" for i in ITEMS] * 3, 300)
    model = tiny_llama(len(tokenizer), seed=0, max_position_embeddings=64)
    stats = run_training(
        model,
        ExampleDataset(qa_examples(tokenizer, ITEMS, 64)),
        TrainRecipe(
            epochs=3, learning_rate=5e-3, batch_size=2
        ),  # 6 steps; the order of the batches is seeded
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
        device="cpu",
        progress=False,
    )
    return {n: p.detach().clone() for n, p in model.state_dict().items()}, stats


def test_same_seed_same_weights_and_another_seed_differs():
    first, first_stats = _fine_tune(seed=0)
    again, again_stats = _fine_tune(seed=0)
    other, _ = _fine_tune(seed=1)
    assert first_stats.steps == 6
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert (first_stats.tokens, first_stats.final_loss) == (again_stats.tokens, again_stats.final_loss)
    assert any(not torch.equal(first[name], other[name]) for name in first)


# --- end to end: subprocesses, real signals -----------------------------------------------------------------------


def _env(cache: Path, tmp: Path | None = None) -> dict:
    env = cli_environment(cache, PYTHONUNBUFFERED="1")
    if tmp is not None:  # the trainer's scratch folders (tempfile) land here, where the test can see them
        env["TMPDIR"] = str(tmp)
    return env


def msa_bench(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "msa_bench.cli", *args],
        cwd=cwd,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=900,
    )


def start_msa_bench(args: list[str], cache: Path, cwd: Path, tmp: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "msa_bench.cli", *args],
        cwd=cwd,
        env=_env(cache, tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(
                f"msa-bench ended (rc {process.returncode}) first: {process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.2)


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lifecycle_cache")


@pytest.fixture(scope="module")
def finished_run(shared_cache, tmp_path_factory) -> Path:
    """An uninterrupted smoke run (which also fills the shared cache)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    completed = msa_bench(
        [*SMOKE, "progress=false", f"hydra.run.dir={run_dir}"], shared_cache, run_dir.parent
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_killed_run_is_found_crashed_and_its_rerun_reuses_stages_with_identical_results(
    finished_run, tmp_path
):
    """Part B 7 at msa_bench's granularity: the stage. SIGKILL once the target is cached; the rerun in the same
    folder marks the dead run crashed, reuses the target and ends with the uninterrupted run's numbers."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run_dir.mkdir()
    args = [*SMOKE, f"hydra.run.dir={run_dir}"]
    killed = start_msa_bench([*args, "progress=auto"], cache, tmp_path)
    printed = ""
    while not printed.startswith("stage 1 of 8: target"):  # progress prints a line as each stage ends
        printed = killed.stdout.readline()
        assert printed, f"msa-bench ended first: {killed.stderr.read()[-3000:]}"
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "results.json").exists()
    assert status_of(run_dir)["state"] == RUNNING
    assert effective_state(status_of(run_dir)) == CRASHED  # what a reader shows, without writing

    rerun = msa_bench([*args, "progress=false"], cache, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    status = status_of(run_dir)
    assert status["state"] == "done" and status["previous_attempt"]["state"] == CRASHED
    assert status["previous_attempt"]["pid"] == killed.pid
    assert "died without recording an end: marked crashed" in (run_dir / "msa_bench.log").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["cost"]["target"]["reused"] and not results["cost"]["oracle"]["reused"]
    straight = json.loads((finished_run / "results.json").read_text())
    assert results["metrics"] == straight["metrics"]
    assert results["reference_metrics"] == straight["reference_metrics"]
    assert results["seed"] == results["config"]["seed"] == 0


@pytest.mark.slow
def test_sigterm_while_training_marks_the_run_interrupted_and_cleans_up(finished_run, shared_cache, tmp_path):
    run_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    # A longer target recipe: the target trains again (everything before it comes from the cache).
    args = [*SMOKE, "progress=false", "benchmark.target_recipe.epochs=60", f"hydra.run.dir={run_dir}"]
    process = start_msa_bench(args, shared_cache, tmp_path, tmp=scratch)
    log_file = run_dir / "msa_bench.log"

    def training_the_target() -> bool:
        text = log_file.read_text() if log_file.exists() else ""
        return "fine-tuning target" in text and "'loss'" in text.split("fine-tuning target", 1)[1]

    wait_for(training_the_target, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    status = status_of(run_dir)
    assert status["state"] == "interrupted" and status["signal"] == "SIGTERM" and status["finished_at"]
    assert not (run_dir / "results.json").exists()
    # The finally blocks ran: no half-built cache entry, no trainer scratch folder.
    assert not [p for p in shared_cache.rglob(".tmp-*")]
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_run_into_a_finished_folder_of_another_config_is_refused_byte_identical(
    finished_run, shared_cache, tmp_path
):
    """Part B 12 / issue 12 reproduction 6: `hydra.run.dir=<a finished run> method.alpha=2`."""
    before = folder_digest(finished_run)
    assert ".hydra/config.yaml" in before and ".hydra/overrides.yaml" in before
    args = [*SMOKE, "progress=false", f"hydra.run.dir={finished_run}", "method.alpha=2"]
    refused = msa_bench(args, shared_cache, tmp_path)
    assert refused.returncode == 2
    error = refused.stderr.strip()
    assert len(error.splitlines()) == 1 and error.startswith("msa-bench: error:")
    assert str(finished_run) in error and "method.alpha: 1.0 -> 2.0" in error and "overwrite=true" in error
    assert folder_digest(finished_run) == before

    replaced = msa_bench([*args, "overwrite=true"], shared_cache, tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert json.loads((finished_run / "results.json").read_text())["config"]["method"]["alpha"] == 2.0
    assert (
        "overwrite=true: removed the results of another configuration"
        in (finished_run / "msa_bench.log").read_text()
    )


@pytest.mark.slow
def test_run_with_wandb_unreachable_completes_and_logs_locally(
    finished_run, shared_cache, tmp_path, failing_wandb_init
):
    """Part B 19: logger=wandb online, wandb.init raises; the run completes on its cached stages."""
    from msa_bench.runner import resolved_container, run
    from msa_bench.validation import validate_config
    from tests.conftest import compose_config

    cfg = compose_config(
        [
            "experiment=smoke",
            "logger=wandb",
            "logger.mode=online",
            "progress=false",
            "num_threads=1",
            f"paths.cache_dir={shared_cache}",
        ],
        output_dir=tmp_path,
    )
    results = run(validate_config(cfg), resolved_container(cfg), tmp_path)
    assert len(failing_wandb_init) == 1
    assert (tmp_path / "results.json").is_file()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "results"]
    logged = events[1]["summary"]
    assert logged["metrics/forget_quality"] == results["metrics"]["forget_quality"]
    assert "compare/target/forget_quality" in logged
