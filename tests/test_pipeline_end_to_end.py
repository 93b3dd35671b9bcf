"""The whole pipeline on a miniature of the default (experiment=smoke): stages, caching, methods, results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from msa_bench.models.build import load_model
from msa_bench.pipeline.stages import StageError
from msa_bench.results import PerItemRecords
from tests.pipeline_runs import run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("msa_cache")


@pytest.fixture(scope="module")
def msa_results(cache_dir, tmp_path_factory) -> dict:
    return run_job(cache_dir, tmp_path_factory.mktemp("msa_run"), ["method=msa"])


def test_msa_run_writes_complete_results(msa_results):
    out = Path(msa_results["config"]["paths"]["output_dir"])
    on_disk = json.loads((out / "results.json").read_text())
    for key in ["method", "benchmark", "checkpoint", "metrics", "cost", "seed", "versions", "config"]:
        assert key in on_disk
    assert on_disk["method"] == "msa" and on_disk["checkpoint"] == "instruct"
    assert set(on_disk["metrics"]) == set(on_disk["config"]["metrics"]["names"])
    assert all(isinstance(v, float) for v in on_disk["metrics"].values())
    for stage in [
        "world",
        "pretrain",
        "instruct",
        "target",
        "oracle",
        "forget_vector",
        "retain_vector",
        "arithmetic",
    ]:
        assert stage in on_disk["cost"], stage
    assert on_disk["cost"]["target"]["tokens"] > 0 and on_disk["cost"]["target"]["flops"] > 0
    assert on_disk["cost"]["target"]["wall_seconds"] > 0 and on_disk["cost"]["target"]["peak_memory_mb"] > 0
    per_item = PerItemRecords.read(out / "per_item.json")
    assert len(per_item.values("method", "forget_truth_ratio")) == len(
        per_item.values("oracle", "forget_truth_ratio")
    )
    # The oracle compared with itself is a perfect match.
    assert on_disk["reference_metrics"]["oracle"]["forget_quality"] == 1.0


def test_second_run_with_other_alpha_retrains_nothing(cache_dir, msa_results, tmp_path):
    results = run_job(cache_dir, tmp_path, ["method=msa", "method.alpha=2"])
    for stage in ["world", "pretrain", "instruct", "target", "oracle", "forget_vector", "retain_vector"]:
        assert results["cost"][stage]["reused"], stage
    assert not results["cost"]["arithmetic"]["reused"]
    assert results["metrics"] != msa_results["metrics"]


def test_zero_coefficients_reproduce_the_target(cache_dir, msa_results, tmp_path):
    results = run_job(cache_dir, tmp_path, ["method=msa", "method.alpha=0", "method.beta=0"])
    target = load_model(Path(results["artifacts"]["target"]))
    unlearned = load_model(Path(results["artifacts"]["model"]))
    for (name, a), (_, b) in zip(target.state_dict().items(), unlearned.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert results["metrics"] == results["reference_metrics"]["target"]


def test_msa_from_target_is_task_vector(cache_dir, msa_results, tmp_path):
    msa = run_job(cache_dir, tmp_path / "a", ["method=msa", "checkpoint=target", "method.beta=0"])
    tv = run_job(cache_dir, tmp_path / "b", ["method=task_vector"])
    assert tv["cost"]["task_vector_finetune"]["reused"]  # the same fine-tune of θ_D on the forget set
    assert msa["metrics"] == tv["metrics"]


@pytest.mark.parametrize("method", ["grad_ascent", "npo", "target", "oracle"])
def test_other_methods_run(cache_dir, msa_results, tmp_path, method):
    results = run_job(cache_dir, tmp_path, [f"method={method}"])
    assert results["method"] == method
    assert (tmp_path / "results.json").exists()
    if method in {"target", "oracle"}:
        assert results["metrics"] == results["reference_metrics"][method]


def test_gradient_methods_change_the_target(cache_dir, msa_results, tmp_path):
    results = run_job(cache_dir, tmp_path, ["method=grad_ascent"])
    target = load_model(Path(results["artifacts"]["target"]))
    unlearned = load_model(Path(results["artifacts"]["model"]))
    changed = [
        name
        for (name, a), (_, b) in zip(target.named_parameters(), unlearned.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    assert len(changed) == len(list(target.named_parameters()))
    # Ascent on the forget set lowers its answer probability.
    assert results["metrics"]["forget_Q_A_Prob"] < results["reference_metrics"]["target"]["forget_Q_A_Prob"]


def test_pretraining_checkpoint_as_theta0(cache_dir, msa_results, tmp_path):
    results = run_job(cache_dir, tmp_path, ["method=msa", "checkpoint=pretrain_step", "checkpoint.step=10"])
    assert results["checkpoint"] == "pretrain_step"
    assert results["cost"]["pretrain"]["reused"]


def test_unsaved_checkpoint_step_lists_saved_steps(cache_dir, msa_results, tmp_path):
    with pytest.raises(
        StageError, match=r"checkpoint.step=7 was never saved; the saved pretraining steps are \[5, 10, 15\]"
    ):
        run_job(cache_dir, tmp_path, ["method=msa", "checkpoint=pretrain_step", "checkpoint.step=7"])
    assert not (tmp_path / "results.json").exists()


def test_resolved_config_is_recorded(msa_results):
    cfg = OmegaConf.create(msa_results["config"])
    assert cfg.method.name == "msa" and cfg.benchmark.forget_split == "forget10"


def test_crashed_run_resumes_from_completed_stages(cache_dir, msa_results, tmp_path, monkeypatch):
    from msa_bench.methods import task_vector

    def crash(self, pipeline):
        pipeline.target()
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(task_vector.TaskVector, "produce", crash)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        run_job(cache_dir, tmp_path / "crashed", ["method=task_vector", "method.alpha=3"])
    assert not (tmp_path / "crashed" / "results.json").exists()
    monkeypatch.undo()
    results = run_job(cache_dir, tmp_path / "rerun", ["method=task_vector", "method.alpha=3"])
    assert results["cost"]["target"]["reused"] and results["cost"]["pretrain"]["reused"]


def test_cli_multirun_sweep_reuses_every_stage(cache_dir, msa_results, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MSA_BENCH_CACHE": str(cache_dir), "WANDB_MODE": "disabled"}
    command = [
        sys.executable,
        "-m",
        "msa_bench.cli",
        "-m",
        "experiment=smoke",
        "progress=false",
        "num_threads=1",
        "method.alpha=0.5,1.5",
        f"hydra.sweep.dir={tmp_path}",
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    runs = [json.loads((tmp_path / str(i) / "results.json").read_text()) for i in range(2)]
    assert [r["config"]["method"]["alpha"] for r in runs] == [0.5, 1.5]
    for results in runs:
        for stage in ["pretrain", "instruct", "target", "oracle", "forget_vector", "retain_vector"]:
            assert results["cost"][stage]["reused"], stage
    assert "forget_quality" in completed.stdout  # the comparison table was printed
