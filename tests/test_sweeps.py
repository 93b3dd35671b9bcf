"""Sweeps: a failing job is isolated and visible, re-runs skip finished jobs, and every launcher completes.

The end-to-end tests run `python -m msa_bench.cli -m experiment=smoke ...` in a subprocess (cwd a temporary folder,
W&B disabled, offline), sharing one stage cache so that only the first job trains the history, target and oracle.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from msa_bench.sweeps import jobs
from msa_bench.sweeps.run_folder import RunFolderCallback
from msa_bench.sweeps.status import (
    JobStatus,
    completed_run,
    config_hash,
    sweep_group_name,
    write_json_atomically,
)
from msa_bench.sweeps.summary import build_summary, to_markdown
from tests.pipeline_runs import cli_environment

SMOKE = ["experiment=smoke", "logger=none", "progress=false"]


@pytest.fixture(scope="module")
def sweep_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep_cache")


def msa_bench(args: list[str], cwd: Path, cache: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "msa_bench.cli", *args],
        cwd=cwd,
        env=cli_environment(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def summary_of(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep_summary.json").read_text())


# --- unit tests (no runs) -----------------------------------------------------------------------------------------


def test_config_hash_ignores_where_files_go_and_logging():
    config = {"method": {"name": "msa", "alpha": 1.0}, "seed": 0, "paths": {"output_dir": "/a"}, "logger": {}}
    moved = {**config, "paths": {"output_dir": "/b"}, "logger": {"name": "wandb"}, "progress": False}
    assert config_hash(config) == config_hash(moved)
    assert config_hash(config) != config_hash({**config, "seed": 1})
    assert config_hash(config) != config_hash({**config, "method": {"name": "msa", "alpha": 2.0}})


def test_completed_run_matches_on_the_hash_of_results_config(tmp_path):
    config = {"method": {"name": "msa", "alpha": 1.0}, "seed": 0}
    done = tmp_path / "0"
    write_json_atomically(done / "results.json", {"config": config, "metrics": {}})
    JobStatus(done).done(config_hash=config_hash(config))
    assert completed_run(tmp_path, config_hash(config)) == done
    assert completed_run(tmp_path, config_hash({**config, "seed": 1})) is None
    JobStatus(done).running()  # a later attempt in that folder is in progress: not trusted
    assert completed_run(tmp_path, config_hash(config)) is None


def test_summary_counts_states_and_flags_incomplete_jobs(tmp_path):
    JobStatus(tmp_path / "0", job_num=0, overrides=["a=1"], sweep_run="x").done()
    JobStatus(tmp_path / "1", job_num=1, overrides=["a=2"], sweep_run="x").failed(ValueError("boom"))
    JobStatus(tmp_path / "2", job_num=2, overrides=["a=3"], sweep_run="x").running()
    JobStatus(tmp_path / "3", job_num=3, overrides=["a=4"], sweep_run="x").skipped(done_in="0")
    JobStatus(tmp_path / "4", job_num=0, overrides=["a=1"], sweep_run="older").done()
    summary = build_summary(tmp_path, sweep_run="x")
    assert [j["state"] for j in summary["jobs"]] == ["done", "failed", "incomplete", "skipped"]
    assert summary["counts"] == {"done": 1, "skipped": 1, "failed": 1, "incomplete": 1}
    assert not summary["ok"]
    assert summary["jobs"][1]["error"] == "ValueError: boom"
    assert "same config already done in 0" in to_markdown(summary)
    failed = json.loads((tmp_path / "1" / "status.json").read_text())
    assert failed["error"]["traceback"].strip().endswith("ValueError: boom")


def test_summary_shows_a_dead_running_job_as_crashed_and_counts_interrupted_jobs(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    JobStatus(tmp_path / "0", job_num=0, sweep_run="x").done()
    JobStatus(tmp_path / "1", job_num=1, sweep_run="x").running()  # this process: alive, so incomplete
    JobStatus(tmp_path / "2", job_num=2, sweep_run="x", pid=gone.pid).running()
    JobStatus(tmp_path / "3", job_num=3, sweep_run="x").interrupted("SIGTERM")
    summary = build_summary(tmp_path, sweep_run="x")
    assert [j["state"] for j in summary["jobs"]] == ["done", "incomplete", "crashed", "interrupted"]
    assert f"pid {gone.pid}" in summary["jobs"][2]["error"]
    assert summary["jobs"][3]["error"] == "interrupted by SIGTERM"
    assert not summary["ok"]
    assert status_of(tmp_path / "2")["state"] == "running"  # a reader computes it without writing

    RunFolderCallback().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert status_of(tmp_path / "2")["state"] == "crashed" and status_of(tmp_path / "2")["crashed_found_at"]
    assert status_of(tmp_path / "1")["state"] == "running"


def test_interrupted_sweep_job_records_the_signal_and_stops_the_sweep(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from msa_bench.errors import RunInterrupted

    HydraConfig.instance().cfg = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path)}, "job": {"num": 0}, "overrides": {"task": ["seed=1"]}}}
    )

    def killed(config, resolved, output_dir):
        raise RunInterrupted(signal.SIGTERM)

    try:
        with pytest.raises(RunInterrupted):
            jobs.run_sweep_job(
                OmegaConf.create({"seed": 1}), tmp_path / "0", lambda c: c, killed, (ValueError,)
            )
    finally:
        HydraConfig.instance().cfg = None
    status = status_of(tmp_path / "0")
    assert status["state"] == "interrupted" and status["signal"] == "SIGTERM"


def test_sweep_group_name_keeps_the_date_of_default_sweep_dirs():
    assert sweep_group_name("multirun/2026-11-29/10-31-00") == "2026-11-29_10-31-00"
    assert sweep_group_name("/somewhere/alpha_sweep") == "alpha_sweep"


def test_wandb_group_is_none_outside_a_sweep():
    from hydra.core.hydra_config import HydraConfig

    from msa_bench.reporting.run_logger import sweep_group

    HydraConfig.instance().cfg = None  # as in a runner called from Python, outside any Hydra job
    assert sweep_group() is None


@pytest.mark.parametrize(
    ("launcher", "overrides", "expected"),
    [
        ({"_target_": "x.JoblibLauncher", "n_jobs": 2}, [], 1),
        ({"_target_": "x.JoblibLauncher", "n_jobs": 1}, [], 2),
        ({"_target_": "x.JoblibLauncher", "n_jobs": 2}, ["num_threads=2"], 2),
        ({"_target_": "x.LocalLauncher"}, [], 1),
        ({"_target_": "x.BasicLauncher"}, [], 2),
        ({"_target_": "x.SlurmLauncher"}, [], 2),
    ],
)
def test_parallel_local_launchers_get_one_thread_per_job(launcher, overrides, expected):
    cfg = OmegaConf.create({"num_threads": 2})
    hydra_cfg = OmegaConf.create({"launcher": launcher, "overrides": {"task": overrides}})
    jobs.one_thread_per_parallel_job(cfg, hydra_cfg)
    assert cfg.num_threads == expected


def test_saved_hydra_config_records_the_adjusted_thread_count(tmp_path):
    saved = tmp_path / ".hydra" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text("num_threads: 2\n")
    cfg = OmegaConf.create({"num_threads": 2})
    hydra_cfg = OmegaConf.create(
        {
            "launcher": {"_target_": "x.JoblibLauncher", "n_jobs": 2},
            "overrides": {"task": []},
            "output_subdir": ".hydra",
        }
    )
    assert jobs.one_thread_per_parallel_job(cfg, hydra_cfg)
    jobs.rewrite_saved_config(cfg, hydra_cfg, tmp_path)
    assert OmegaConf.load(saved).num_threads == 1
    assert list(saved.parent.iterdir()) == [saved]


# --- end-to-end sweeps --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_failing_job_is_isolated_visible_and_skipped_on_rerun(tmp_path, sweep_cache):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMOKE, "num_threads=1", "method.alpha=0.5,-1,-2", f"hydra.sweep.dir={sweep}"]
    first = msa_bench(args, tmp_path, sweep_cache)

    assert first.returncode != 0, first.stdout[-2000:]
    assert (sweep / "0" / "results.json").is_file(), first.stderr[-3000:]
    assert status_of(sweep / "0")["state"] == "done"
    for job, alpha in (
        ("1", "-1"),
        ("2", "-2"),
    ):  # both failures are visible, not only the first (Hydra 1.3.8)
        assert not (sweep / job / "results.json").exists()
        failed = status_of(sweep / job)
        assert failed["state"] == "failed" and failed["error"]["type"] == "ConfigError"
        assert (
            "method.alpha" in failed["error"]["message"]
            and failed["overrides"][-1] == f"method.alpha={alpha}"
        )
        assert "method.alpha" in (sweep / job / "msa_bench.log").read_text()  # each job's own log says why
    assert first.stderr.count("config error") == 2
    summary = summary_of(sweep)
    assert [(j["job"], j["state"]) for j in summary["jobs"]] == [(0, "done"), (1, "failed"), (2, "failed")]
    assert not summary["ok"]
    assert (sweep / "sweep_summary.md").read_text().count("| failed |") == 2
    assert "sweep summary" in first.stdout and "1 done, 2 failed" in first.stdout
    assert "method=msa" in (sweep / "0" / "msa_bench.log").read_text()

    results_before = (sweep / "0" / "results.json").read_text()
    done_hash = status_of(sweep / "0")["config_hash"]
    second = msa_bench(args, tmp_path, sweep_cache)
    assert second.returncode != 0
    skipped = status_of(sweep / "0")
    assert skipped["state"] == "skipped" and skipped["done_in"] == "0"
    assert skipped["config_hash"] == done_hash and skipped["completed"]["wall_seconds"] > 0
    assert (sweep / "0" / "results.json").read_text() == results_before  # not re-run, not duplicated
    assert [(j["job"], j["state"]) for j in summary_of(sweep)["jobs"]] == [
        (0, "skipped"),
        (1, "failed"),
        (2, "failed"),
    ]
    assert len(list(sweep.rglob("results.json"))) == 1


@pytest.mark.slow
def test_runtime_failure_records_its_traceback(tmp_path, sweep_cache):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *SMOKE,
        "num_threads=1",
        "checkpoint=pretrain_step",
        "checkpoint.step=5,7",
        f"hydra.sweep.dir={sweep}",
    ]
    completed = msa_bench(args, tmp_path, sweep_cache)
    assert completed.returncode == 1
    assert (sweep / "0" / "results.json").is_file(), completed.stderr[-3000:]
    failed = status_of(sweep / "1")
    assert failed["state"] == "failed" and "was never saved" in failed["error"]["message"]
    assert "Traceback (most recent call last)" in failed["error"]["traceback"]
    log_text = (sweep / "1" / "msa_bench.log").read_text()
    assert "Traceback (most recent call last)" in log_text and "was never saved" in log_text
    assert failed["log_file"] == str(sweep / "1" / "msa_bench.log")


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_with_one_thread_each(tmp_path, sweep_cache):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMOKE, "method.alpha=0.5,2"]
    completed = msa_bench([*args, f"hydra.sweep.dir={sweep}"], tmp_path, sweep_cache)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        assert results["config"]["num_threads"] == 1
        assert "num_threads: 1" in (sweep / job / ".hydra" / "config.yaml").read_text()
        assert "num_threads=1" in status_of(sweep / job)["note"]
        assert (sweep / job / "msa_bench.log").stat().st_size > 0
    assert [j["state"] for j in summary_of(sweep)["jobs"]] == ["done", "done"]
    assert "is validated against ConfigStore schema" not in completed.stderr


@pytest.mark.slow
def test_submitit_local_sweep_completes(tmp_path, sweep_cache):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", *SMOKE, "method.alpha=0.5,2", f"hydra.sweep.dir={sweep}"]
    completed = msa_bench(args, tmp_path, sweep_cache)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "results.json").is_file()
        assert status_of(sweep / job)["state"] == "done"
    summary = summary_of(sweep)
    assert summary["ok"] and summary["counts"]["done"] == 2
