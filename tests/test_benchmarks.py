"""RESTOR and MUSE as training benchmarks with the embedded model, on miniature folders in the real layouts, and
the errors a user gets for missing or misnamed data (always before anything is trained)."""

from __future__ import annotations

import pytest
import torch

from msa_bench.errors import DataSourceError, MuseDataNotFoundError
from msa_bench.pipeline.stages import StageError
from msa_bench.results import PerItemRecords
from msa_bench.validation import ConfigError, validate_config
from tests.benchmark_fixtures import write_tiny_muse, write_tiny_restor
from tests.conftest import compose_config
from tests.pipeline_runs import run_job

torch.set_num_threads(1)

RESTOR_SMOKE = [
    "benchmark=restor",
    "metrics=restor",
    "checkpoint=closest",
    "benchmark.clean_recipe.epochs=2",
    "benchmark.target_recipe.epochs=2",
    "benchmark.block_size=32",
]
MUSE_SMOKE = [
    "benchmark=muse_news",
    "metrics=muse",
    "checkpoint=closest",
    "benchmark.target_recipe.epochs=2",
    "benchmark.block_size=32",
    "metrics.muse.verbmem_max_new_tokens=8",
    "metrics.muse.knowmem_max_new_tokens=8",
    "metrics.muse.icl_shots=2",
]


@pytest.mark.slow
def test_restor_runs_end_to_end_with_the_clean_model_as_oracle(tmp_path):
    data = write_tiny_restor(tmp_path / "restor")
    results = run_job(
        tmp_path / "cache", tmp_path / "run", [*RESTOR_SMOKE, f"benchmark.data_dir={data}", "method.beta=0"]
    )
    assert set(results["metrics"]) == {"restor_accuracy"}
    for column in (results["metrics"], *results["reference_metrics"].values()):
        assert 0.0 <= column["restor_accuracy"] <= 100.0
    # The oracle is the clean model itself; the target was trained from it on the corruption documents.
    assert results["artifacts"]["oracle"] != results["artifacts"]["target"]
    assert {"clean", "target", "forget_vector"} <= set(results["cost"])
    per_item = PerItemRecords.read(tmp_path / "run" / "per_item.json")
    assert len(per_item.values("method", "restor_accuracy")) == 9  # 3 evaluated people x 3 relations


@pytest.mark.slow
def test_muse_runs_end_to_end_with_text_corpora(tmp_path):
    data = write_tiny_muse(tmp_path / "muse")
    results = run_job(tmp_path / "cache", tmp_path / "run", [*MUSE_SMOKE, f"benchmark.data_dir={data}"])
    assert {"forget_verbmem_ROUGE", "retain_knowmem_ROUGE", "muse_privleak"} <= set(results["metrics"])
    assert results["reference_metrics"]["oracle"]["muse_privleak"] == pytest.approx(0.0)
    assert {"target", "oracle", "forget_vector", "retain_vector"} <= set(results["cost"])


def test_restor_split_names_are_checked_at_composition(tmp_path):
    cfg = compose_config(["benchmark=restor", "benchmark.forget_split=forget01", "logger=none"], tmp_path)
    with pytest.raises(ConfigError, match=r"benchmark.forget_split='forget01' is not valid .*mix_a0"):
        validate_config(cfg)


def test_restor_missing_mix_lists_the_available_ones(tmp_path):
    data = write_tiny_restor(tmp_path / "restor")
    with pytest.raises(StageError, match=r"mix_a2.json.* not found .*\['mix_a0'\]"):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            [*RESTOR_SMOKE, f"benchmark.data_dir={data}", "benchmark.forget_split=mix_a2"],
        )
    assert not (tmp_path / "cache" / "history").exists()


def test_restor_without_a_folder_says_where_restor_comes_from(tmp_path):
    with pytest.raises(StageError, match="RESTOR is read from a local folder"):
        run_job(tmp_path / "cache", tmp_path / "run", [*RESTOR_SMOKE, "benchmark.data_dir=null"])


def test_muse_books_absent_is_a_clear_error_and_nothing_runs(tmp_path):
    missing = tmp_path / "data" / "muse-books"
    with pytest.raises(
        StageError, match=rf"benchmark.data_dir={missing} does not exist.*MUSE-Books is not distributed"
    ):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            ["benchmark=muse_books", "metrics=muse", f"benchmark.data_dir={missing}"],
        )
    assert not (tmp_path / "cache" / "history").exists()
    assert not (tmp_path / "run" / "results.json").exists()


def test_muse_folder_without_the_retain_corpus_lists_every_missing_file(tmp_path):
    data = write_tiny_muse(tmp_path / "muse", with_retain1=False)
    (data / "knowmem" / "forget_qa.json").unlink()
    with pytest.raises(MuseDataNotFoundError) as error:
        run_job(tmp_path / "cache", tmp_path / "run", [*MUSE_SMOKE, f"benchmark.data_dir={data}"])
    message = str(error.value)
    assert str(data / "raw" / "retain1.json") in message
    assert str(data / "knowmem" / "forget_qa.json") in message
    assert not (tmp_path / "cache" / "history").exists()


def test_muse_from_the_hub_without_network_names_the_dataset(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError, match=r"muse-bench/MUSE-Books.*set benchmark.data_dir"):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            ["benchmark=muse_books", "metrics=muse", "benchmark.data_dir=null"],
        )
    assert not (tmp_path / "cache" / "history").exists()


def test_benchmark_metrics_must_match_the_benchmark(tmp_path):
    data = write_tiny_restor(tmp_path / "restor")
    with pytest.raises(StageError, match=r"need the eval set\(s\) \['forget'\].*metrics=restor"):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            ["benchmark=restor", f"benchmark.data_dir={data}", "metrics.names=[forget_Q_A_Prob]"],
        )
    assert not (tmp_path / "cache" / "history").exists()


def test_restor_target_mixes_in_the_retain_pool_and_its_key_says_so(tmp_path):
    from msa_bench.pipeline.artifacts import ArtifactStore
    from msa_bench.pipeline.stages import Pipeline

    data = write_tiny_restor(tmp_path / "restor")

    def pipeline(mix: bool) -> Pipeline:
        overrides = [*RESTOR_SMOKE, f"benchmark.data_dir={data}", f"benchmark.mix_retain_into_target={mix}"]
        config = validate_config(compose_config(["experiment=smoke", "logger=none", *overrides], tmp_path))
        return Pipeline(config, ArtifactStore(tmp_path / "cache"), "cpu")

    mixed, forget_only = pipeline(True).benchmark, pipeline(False).benchmark
    n_forget, n_retain = len(mixed.forget_items()), len(mixed.retain_items())
    assert (n_forget, n_retain) == (12, 12)  # 4 documents x 3 evaluated people; 3 facts x 4 other people
    assert len(mixed.target_items()) == n_forget + n_retain
    assert forget_only.target_items() == forget_only.forget_items()
    assert mixed.data_id("target") != forget_only.data_id("target")
