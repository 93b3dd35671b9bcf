"""Sequential deletion requests (benchmark.requests, docs/sequential_requests.md): the split into requests, the
refusals, the arithmetic of the request vectors, loss-based methods continuing from their previous model, the
per-request results keys, and the per-step oracles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msa_bench.benchmarks.base import split_into_requests
from msa_bench.errors import BenchmarkError, ConfigError
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.pipeline_runs import run_job


class _Context:
    """The BenchmarkContext a TOFU benchmark needs to read a folder of splits."""

    def __init__(self, folder: Path, cfg):
        self.cfg, self._folder = cfg, folder

    def source_folder(self):
        return self._folder

    def split(self, name):
        from msa_bench.data.synthetic import load_benchmark_split

        return load_benchmark_split(self._folder, name)


def _tofu(tmp_path, overrides=()):
    from msa_bench.benchmarks.tofu import TofuBenchmark
    from tests.benchmark_fixtures import write_tiny_tofu

    folder = write_tiny_tofu(tmp_path / "tofu")
    cfg = validate_config(compose_config(["benchmark=tofu", f"benchmark.data_dir={folder}", *overrides]))
    return TofuBenchmark(_Context(folder, cfg))


def test_the_requests_are_disjoint_cover_the_forget_set_and_keep_authors_whole(tmp_path):
    benchmark = _tofu(tmp_path, ["benchmark.forget_split=forget10"])
    forget = benchmark.forget_items()
    authors = {item["subject"] for item in forget}
    assert len(authors) == 2  # the tiny world's forget10
    requests = benchmark.deletion_requests(2)
    assert [r.index for r in requests] == [1, 2]
    assert [item for r in requests for item in r.items] == forget  # in order, each item once
    subjects = [{item["subject"] for item in r.items} for r in requests]
    assert all(len(s) == 1 for s in subjects) and subjects[0].isdisjoint(subjects[1])
    assert requests[0].data_id != requests[1].data_id


def test_the_split_is_by_contiguous_units_of_near_equal_size():
    units = [(f"a{i}", [{"question": f"q{i}-{j}"} for j in range(2)]) for i in range(7)]
    requests = split_into_requests(units, 3, "forget10", "author")
    assert [r.units for r in requests] == [("a0", "a1", "a2"), ("a3", "a4"), ("a5", "a6")]
    assert sum(len(r.items) for r in requests) == 14


def test_real_tofu_authors_are_blocks_of_twenty(tmp_path):
    benchmark = _tofu(tmp_path, ["benchmark.forget_split=forget10"])
    items = [{"question": f"q{i}", "answer": "a"} for i in range(60)]
    benchmark.forget_items = lambda: items  # real TOFU's items name no author
    units = benchmark.request_units()
    assert [len(u[1]) for u in units] == [20, 20, 20]
    assert units[1][1][0]["question"] == "q20"
    benchmark.forget_items = lambda: items[:50]
    with pytest.raises(BenchmarkError, match="not a multiple of TOFU's 20"):
        benchmark.request_units()


def test_more_requests_than_authors_is_an_error_giving_the_maximum(tmp_path):
    benchmark = _tofu(tmp_path, ["benchmark.forget_split=forget10"])
    with pytest.raises(BenchmarkError) as error:
        benchmark.deletion_requests(3)
    assert "benchmark.requests=3" in str(error.value)
    assert "maximum is benchmark.requests=2" in str(error.value)


def test_a_request_view_keeps_only_its_forget_items_and_every_utility_item(tmp_path):
    benchmark = _tofu(tmp_path, ["benchmark.forget_split=forget10"])
    first, second = benchmark.deletion_requests(2)
    sets = benchmark.eval_sets({"forget", "retain", "real_authors"})
    narrowed = benchmark.request_eval_sets(sets, first.items)
    assert {i["question"] for i in narrowed["forget"]} == {i["question"] for i in first.items}
    assert narrowed["retain"] == sets["retain"] and narrowed["real_authors"] == sets["real_authors"]
    both = benchmark.request_eval_sets(sets, first.items + second.items)
    assert both["forget"] == sets["forget"]


def test_forget_metrics_are_those_read_on_a_forget_set():
    from omegaconf import OmegaConf

    from msa_bench.benchmarks.muse import MuseBenchmark
    from msa_bench.benchmarks.tofu import TofuBenchmark
    from msa_bench.metrics.registry import discover_suites
    from msa_bench.sequential.driver import forget_metric_names

    discover_suites()
    names = list(OmegaConf.load(Path(__file__).parents[1] / "conf/metrics/tofu_full.yaml").names)
    forget = forget_metric_names(names, TofuBenchmark)
    for name in ("extraction_strength", "exact_memorization", "mia_loss", "mia_gradnorm", "privleak"):
        assert name in forget, name
    assert {"mia_reference", "forget_quality", "forget_Q_A_Prob"} <= set(forget)
    assert not {"model_utility", "retain_Q_A_Prob", "ra_Q_A_ROUGE", "wf_Truth_Ratio"} & set(forget)
    muse = ["forget_verbmem_ROUGE", "retain_knowmem_ROUGE", "muse_exact_memorization", "muse_privleak"]
    assert forget_metric_names(muse, MuseBenchmark) == [
        "forget_verbmem_ROUGE",
        "muse_exact_memorization",
        "muse_privleak",
    ]


def test_too_many_requests_fail_before_anything_trains(tmp_path, monkeypatch):
    from msa_bench.pipeline.stages import Pipeline

    def trains(self):
        raise AssertionError("a model was trained before the requests were checked")

    monkeypatch.setattr(Pipeline, "target", trains)
    monkeypatch.setattr(Pipeline, "oracle", trains)
    # Smoke's forget10 has 3 authors.
    with pytest.raises(BenchmarkError, match="maximum is benchmark.requests=3"):
        run_job(tmp_path / "cache", tmp_path / "run", ["benchmark.requests=4"])
    assert not (tmp_path / "cache" / "finetune").exists()


def test_sequential_msa_checks_the_layer_scale_before_training_any_request(tmp_path):
    from dataclasses import replace
    from types import SimpleNamespace

    from msa_bench.methods.registry import get_method
    from tests.test_arithmetic_family import StandInPipeline
    from tests.test_arithmetic_streaming import save_family

    pipeline = StandInPipeline(
        save_family(tmp_path / "in", tied=False, dtype=torch.float32), tmp_path / "out"
    )

    def finetune(*args, **kwargs):
        raise AssertionError("a request's forget vector was trained before the layer scale was checked")

    pipeline.finetune = finetune
    msa = get_method("msa")
    method = msa(replace(msa.config_class(), alpha=0.7, beta=0.0, layer_scale={"transformer[.]h[.]": 0.5}))
    requests = [SimpleNamespace(index=k, items=[], data_id=f"request-{k}") for k in (1, 2)]
    with pytest.raises(ConfigError, match="match no tensor"):
        method.produce_after_requests(pipeline, requests, None)


def test_results_json_records_what_each_request_deletes(tmp_path):
    from msa_bench.results.record import RunResults

    requests = [{"index": 1, "units": ["author a"], "n_items": 20, "data_id": "forget10:request1"}]
    record = RunResults(method="msa", benchmark="tofu", metrics={}, requests=requests)
    record.write(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["requests"] == requests
    assert RunResults.read(tmp_path / "results.json").requests == requests
    assert "requests" not in RunResults(method="msa", benchmark="tofu", metrics={}).to_json()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["benchmark.requests=0"], "benchmark.requests=0 must be an integer >= 1"),
        # The reference models define no sequential run (the runner evaluates the target and each step's oracle).
        (
            ["benchmark.requests=2", "method=target"],
            "method=target cannot unlearn sequential deletion requests",
        ),
        (["benchmark.requests=2", "method=oracle"], "method=oracle cannot unlearn sequential"),
    ],
)
def test_bad_request_settings_name_the_key_or_the_method(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config(compose_config(overrides))


def test_a_bool_is_not_a_number_of_requests():
    from types import SimpleNamespace

    from msa_bench.validation import _request_problems

    config = SimpleNamespace(benchmark=SimpleNamespace(requests=True), method=SimpleNamespace(name="msa"))
    assert _request_problems(config) == [
        "benchmark.requests=True must be an integer >= 1 (or null for one request)"
    ]


def test_methods_declare_how_they_run_sequentially():
    from msa_bench.methods.registry import CONTINUES, SUMS, discover_methods

    methods = discover_methods()
    for name in ("msa", "task_vector", "msa_ties", "msa_projected", "msa_fisher"):
        assert methods[name].sequential == SUMS, name
    assert methods["target"].sequential is methods["oracle"].sequential is None
    for name in ("grad_ascent", "grad_diff", "npo", "simnpo", "rmu", "undial", "satimp"):
        assert methods[name].sequential == CONTINUES, name


# ---------------------------------------------------------------- end to end, on the smoke pipeline (2 forget authors)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequential")
    cache = root / "cache"

    def job(name, overrides):
        results = run_job(cache, root / name, overrides)
        return results, json.loads((root / name / "results.json").read_text())

    return {
        "plain": job("plain", []),
        "one": job("one", ["benchmark.requests=1"]),
        "msa": job("msa", ["benchmark.requests=2"]),
        "ga": job("ga", ["benchmark.requests=2", "method=grad_ascent"]),
        "cache": cache,
    }


@pytest.mark.slow
def test_one_request_is_todays_run_with_todays_cache_keys(runs):
    (plain, _), (one, _) = runs["plain"], runs["one"]
    assert one["metrics"] == plain["metrics"]
    assert {s: c["artifact"] for s, c in one["cost"].items()} == {
        s: c["artifact"] for s, c in plain["cost"].items()
    }
    assert not any(key.startswith("request/") for key in one["metrics"])


@pytest.mark.slow
def test_per_request_keys_are_in_results_json(runs):
    _, on_disk = runs["msa"]
    metrics = on_disk["metrics"]
    for k in (1, 2):
        assert isinstance(metrics[f"request/{k}/forget/forget_Q_A_Prob"], float)
        assert isinstance(metrics[f"request/{k}/forget/forget_quality"], float)
        assert isinstance(metrics[f"request/{k}/utility/model_utility"], float)
        assert metrics[f"request/{k}/cost/wall_seconds"] >= 0
    assert isinstance(metrics["request/2/persistence/forget_Q_A_Prob"], float)
    assert "request/1/persistence/forget_Q_A_Prob" not in metrics
    # The final request's model is the run's model: its utility is the top-level one.
    assert metrics["request/2/utility/model_utility"] == pytest.approx(metrics["model_utility"])
    for reference in ("target", "oracle"):
        assert isinstance(on_disk["reference_metrics"][reference]["request/1/forget/forget_Q_A_Prob"], float)
    assert [r["index"] for r in on_disk["requests"]] == [1, 2]
    # Smoke's forget10 has 3 authors: 2 requests take 2 and 1 (the larger first).
    assert [len(r["units"]) for r in on_disk["requests"]] == [2, 1]
    assert all(r["n_items"] > 0 and r["data_id"] for r in on_disk["requests"])
    assert "requests" not in runs["plain"][1]


def _tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def _stage_model(runs, results, stage) -> dict[str, torch.Tensor]:
    return _tensors(runs["cache"] / results["cost"][stage]["artifact"])


def _pipeline(runs, overrides):
    """The smoke run's pipeline over the same cache: its cached stages, rebuilt by none of these calls."""
    from msa_bench.pipeline.artifacts import ArtifactStore
    from msa_bench.pipeline.stages import Pipeline

    cfg = validate_config(
        compose_config(["experiment=smoke", "logger=none", f"paths.cache_dir={runs['cache']}", *overrides])
    )
    return Pipeline(cfg, ArtifactStore(Path(cfg.paths.cache_dir)), "cpu")


@pytest.mark.slow
def test_the_arithmetic_after_k_requests_is_the_sum_of_the_request_vectors(runs):
    results, _ = runs["msa"]
    theta0 = _tensors(_pipeline(runs, ["benchmark.requests=2"]).checkpoint().path)
    target = _stage_model(runs, results, "target")
    vectors = [_stage_model(runs, results, f"forget_vector (request {k})") for k in (1, 2)]
    retain = _stage_model(runs, results, "retain_vector")  # applied once (method.retain_per_request=false)
    alpha, beta = results["config"]["method"]["alpha"], results["config"]["method"]["beta"]
    for k in (1, 2):
        model = _stage_model(runs, results, f"arithmetic (request {k})")
        for name, value in model.items():
            expected = target[name].double() + beta * (retain[name].double() - theta0[name].double())
            for vector in vectors[:k]:
                expected -= alpha * (vector[name].double() - theta0[name].double())
            torch.testing.assert_close(value.double(), expected, atol=1e-5, rtol=1e-5)
    # Request 1's forget vector is trained on request 1's items only: not the single-request θ1.
    plain, _ = runs["plain"]
    assert (
        results["cost"]["forget_vector (request 1)"]["artifact"] != plain["cost"]["forget_vector"]["artifact"]
    )
    assert results["cost"]["retain_vector"]["artifact"] == plain["cost"]["retain_vector"]["artifact"]


@pytest.mark.slow
def test_a_loss_based_method_continues_from_its_previous_model(runs):
    results, on_disk = runs["ga"]
    target = _stage_model(runs, results, "target")
    first = _stage_model(runs, results, "unlearning (request 1)")
    second = _stage_model(runs, results, "unlearning (request 2)")
    name = next(n for n in target if n.endswith("mlp.down_proj.weight"))
    assert not torch.equal(first[name], target[name])
    assert not torch.equal(second[name], first[name])
    # Request 2's model was trained from request 1's: its cache entry says so.
    record = json.loads(
        (runs["cache"] / results["cost"]["unlearning (request 2)"]["artifact"] / "_artifact.json").read_text()
    )
    spec = record.get("spec", record)
    first_key = results["cost"]["unlearning (request 1)"]["artifact"].split("/", 1)[1]
    assert first_key in json.dumps(spec["target"])
    assert spec["forget"].startswith("forget10[request 2 of 2")
    assert on_disk["artifacts"]["model"].endswith(
        results["cost"]["unlearning (request 2)"]["artifact"].split("/", 1)[1]
    )


@pytest.mark.slow
def test_each_step_oracle_is_trained_without_requests_1_to_k(runs):
    results, _ = runs["msa"]
    pipeline = _pipeline(runs, ["benchmark.requests=2"])
    requests = pipeline.benchmark.deletion_requests(2)
    # Step 1: the oracle's data plus request 2's items, a cached stage of its own; step 2 (the last): the oracle.
    assert "oracle (request 1)" in results["cost"]
    assert pipeline.oracle_after_requests(requests, 2).key == pipeline.oracle().key
    record = json.loads(
        (runs["cache"] / results["cost"]["oracle (request 1)"]["artifact"] / "_artifact.json").read_text()
    )
    data_id = record.get("spec", record)["data"]
    assert "requests 2-2 of 2" in data_id and f"{len(requests[1].items)} items" in data_id
    trained = [item["question"] for item in pipeline.benchmark.oracle_items()] + [
        item["question"] for item in requests[1].items
    ]
    assert not set(trained) & {item["question"] for item in requests[0].items}
