"""Real benchmarks from a local folder (MSA_BENCH_DATA) or the hub, and the errors when data is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from msa_bench.data.sources import DataSourceError, download_tofu, local_data_source, tofu_hub_configs
from msa_bench.runner import resolved_container, run
from msa_bench.validation import validate_config
from tests.conftest import compose_config

SHARED_TOFU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu"
needs_tofu = pytest.mark.skipif(not SHARED_TOFU.is_dir(), reason=f"real TOFU data not found at {SHARED_TOFU}")


def test_msa_bench_data_locates_the_tofu_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MSA_BENCH_DATA", str(tmp_path))
    config = validate_config(compose_config(["benchmark=tofu"]))
    assert config.benchmark.data_dir == str(tmp_path / "tofu")
    monkeypatch.delenv("MSA_BENCH_DATA")
    assert validate_config(compose_config(["benchmark=tofu"])).benchmark.data_dir is None


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(DataSourceError, match=r"benchmark.data_dir=.*nowhere does not exist.*MSA_BENCH_DATA"):
        local_data_source(tmp_path / "nowhere", "benchmark.data_dir")


def test_hub_without_network_names_the_hub_id_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(
        DataSourceError, match=r"could not load 'locuslab/TOFU' config 'full'.*benchmark.data_dir"
    ):
        download_tofu("locuslab/TOFU", ["full"], tmp_path)


def test_hub_configs_of_a_forget_split():
    assert tofu_hub_configs("forget05") == [
        "full",
        "forget05",
        "retain95",
        "forget05_perturbed",
        "retain_perturbed",
        "holdout05",
        "real_authors_perturbed",
        "world_facts_perturbed",
    ]


@needs_tofu
def test_fingerprint_follows_content(tmp_path):
    copy = tmp_path / "tofu"
    shutil.copytree(SHARED_TOFU, copy)
    _, before = local_data_source(copy, "benchmark.data_dir")
    with (copy / "forget01.jsonl").open("a") as handle:
        handle.write(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert local_data_source(copy, "benchmark.data_dir")[1] != before


def tofu_smoke(cache: Path, out: Path, data_dir: Path, extra: list[str] = ()) -> dict:
    cfg = compose_config(
        [
            "experiment=smoke",
            "benchmark=tofu",
            f"benchmark.data_dir={data_dir}",
            "benchmark.target_recipe.epochs=1",
            "benchmark.retain_eval_size=40",
            "logger=none",
            "progress=false",
            "num_threads=1",
            f"paths.cache_dir={cache}",
            *extra,
        ],
        output_dir=out,
    )
    return run(validate_config(cfg), resolved_container(cfg), out)


@needs_tofu
@pytest.mark.slow
def test_real_tofu_runs_end_to_end_at_smoke_scale(tmp_path):
    results = tofu_smoke(tmp_path / "cache", tmp_path / "run", SHARED_TOFU)
    assert results["benchmark"] == "tofu" and results["forget_split"] == "forget01"
    assert 0 <= results["metrics"]["forget_quality"] <= 1
    assert (tmp_path / "run" / "results.json").exists()


@needs_tofu
def test_renamed_file_is_an_error_naming_the_path(tmp_path):
    copy = tmp_path / "tofu"
    shutil.copytree(SHARED_TOFU, copy)
    (copy / "forget01_perturbed.jsonl").rename(copy / "forget01_perturbed.renamed.jsonl")
    from msa_bench.pipeline.stages import StageError

    with pytest.raises(
        StageError, match=r"TOFU split\(s\) \['forget01_perturbed'\] not found .*forget01_perturbed.jsonl"
    ):
        tofu_smoke(tmp_path / "cache", tmp_path / "run", copy, ["metrics.names=[forget_Q_A_Prob]"])
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "cache" / "history").exists()  # refused before any training
