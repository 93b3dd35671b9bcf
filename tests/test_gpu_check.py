"""scripts/gpu_check.py, the GPU acceptance command, in the mode the tests can run: `--device cpu --tiny`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline_runs import cli_environment

REPO = Path(__file__).resolve().parents[1]
TRAINING_STAGES = ("target", "oracle", "forget_vector", "retain_vector")


@pytest.mark.slow
def test_gpu_check_runs_the_paper_pipeline_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    completed = subprocess.run(
        [
            sys.executable,
            "scripts/gpu_check.py",
            "--device",
            "cpu",
            "--tiny",
            "--steps",
            "4",
            "--eval-items",
            "8",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=cli_environment(tmp_path / "unused-cache", OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] and report["mode"] == "tiny" and report["device"] == "cpu"
    checks = {check["check"]: check for check in report["checks"]}
    assert set(checks) == {"dense", "lora"}  # lora_8b and ddp need CUDA
    dense = {stage["stage"]: stage for stage in checks["dense"]["stages"]}
    assert {*TRAINING_STAGES, "arithmetic", "eval:oracle", "eval:target", "eval:msa"} <= set(dense)
    for name in TRAINING_STAGES:
        assert dense[name]["tokens_per_second"] > 0
        assert dense[name]["estimated_peak_memory_mb"] > 0  # the preflight ran before the stage
    assert dense["eval:msa"]["estimated_peak_memory_mb"] > 0
    # The LoRA check reuses the cached target and oracle, and trains θ1 and θ2 through adapters that moved.
    lora = {stage["stage"]: stage for stage in checks["lora"]["stages"]}
    assert "target" not in lora and {"forget_vector", "retain_vector", "arithmetic", "eval:msa"} <= set(lora)
    assert lora["forget_vector"]["lora"]["lora_B_norm"] > 0 and report["adapters_changed"]
    assert checks["lora"]["metrics"] != checks["dense"]["metrics"]
    # CPU peaks are RSS (the runtime included), so no estimate is compared; the note says so.
    assert report["estimates_checked"] == 0 and "CUDA" in report["estimate_note"]
