"""A sweep that Hydra stops before its jobs run (an unknown group option) still gets a summary that lists why, and
`msa-bench` says so in one line (issue 12: "A sweep with an unknown group option writes no summary")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from msa_bench.sweeps import callbacks
from msa_bench.sweeps.callbacks import SweepStatusCallback, close_stopped_sweep, last_sweep_failed


def test_a_stopped_sweep_gets_a_summary_naming_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr(callbacks, "_OPEN_SWEEP", None)
    monkeypatch.setattr(callbacks, "LAST_SUMMARY", None)
    assert close_stopped_sweep(RuntimeError("x")) is None  # no multirun open: nothing to write

    config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"task": ["method=a,b"]}}}
    )
    SweepStatusCallback(print_summary=False).on_multirun_start(config)
    error = MissingConfigException(
        "In 'config': Could not find 'method/nosuch'\n\nAvailable options...", options=["a"]
    )
    line = close_stopped_sweep(error)

    assert line == (
        "msa-bench: the sweep stopped after 0 jobs: In 'config': Could not find 'method/nosuch' (options: a); "
        f"summary: {tmp_path / 'sweep_summary.md'}"
    )
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert summary["ok"] is False and summary["jobs"] == []
    assert summary["error"] == "In 'config': Could not find 'method/nosuch' (options: a)"
    assert (
        "the sweep stopped: In 'config': Could not find 'method/nosuch'"
        in (tmp_path / "sweep_summary.md").read_text()
    )
    assert last_sweep_failed()
    assert close_stopped_sweep(error) is None  # written once


def test_an_unknown_group_option_in_a_sweep_writes_the_summary(tmp_path):
    # Hydra's sweeper composes every job of a batch before launching any, so no job runs at all.
    sweep = tmp_path / "sweep"
    env = {
        **os.environ,
        "MSA_BENCH_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "msa_bench.cli",
            "-m",
            "experiment=smoke",
            "method=msa,nosuch",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        "msa-bench: the sweep stopped after 0 jobs: In 'config': Could not find 'method/nosuch'"
    )
    assert "options: grad_ascent, grad_diff, msa" in last_line
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["ok"] is False and "method/nosuch" in summary["error"]
    assert not (tmp_path / "cache").exists()
