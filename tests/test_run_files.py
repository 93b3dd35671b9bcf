"""The files a real (smoke-scale) run writes: results.json through `RunResults`, per_item.json with one record per
item holding its question, ground truth and the generations of the method, the target and the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.stages import Pipeline
from msa_bench.results import PER_ITEM_SCHEMA_VERSION, SCHEMA_VERSION, PerItemRecords, RunResults
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.pipeline_runs import run_job

pytestmark = pytest.mark.slow

# A cheaper run than the end-to-end tests' (short training; what is checked is the files, not the numbers), with an
# attack so that the holdout set, on which nothing is generated, has records too.
OVERRIDES = [
    "method=task_vector",
    "model.pretrain.recipe.epochs=2",
    "benchmark.target_recipe.epochs=1",
    "metrics.names=[forget_truth_ratio,forget_Q_A_ROUGE,forget_quality,retain_Q_A_Prob,mia_loss]",
]
ROLES = ("method", "target", "oracle")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, dict]:
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("run")
    return cache, out, run_job(cache, out, OVERRIDES)


def eval_set_items(cache: Path, out: Path, names: set[str]) -> dict[str, list[dict]]:
    """The items of the run's eval sets, loaded again from its (cached) benchmark."""
    cfg = compose_config(
        ["experiment=smoke", "logger=none", f"paths.cache_dir={cache}", *OVERRIDES], output_dir=out
    )
    typed = validate_config(cfg)
    return Pipeline(typed, ArtifactStore(cache), "cpu").eval_sets(names)


def test_results_json_is_a_current_record(run):
    _, out, results = run
    assert json.loads((out / "results.json").read_text())["schema_version"] == SCHEMA_VERSION
    record = RunResults.read(out / "results.json")
    assert record.to_json() == json.loads(json.dumps(results, default=str))
    assert record.method == "task_vector" and record.benchmark_kind == "synthetic_tofu"
    assert set(record.metrics) == {
        "forget_truth_ratio",
        "forget_Q_A_ROUGE",
        "forget_quality",
        "retain_Q_A_Prob",
        "mia_loss",
    }


def test_per_item_json_holds_each_items_question_truth_and_three_generations(run):
    cache, out, _ = run
    assert json.loads((out / "per_item.json").read_text())["schema_version"] == PER_ITEM_SCHEMA_VERSION
    records = PerItemRecords.read(out / "per_item.json")
    assert records.method == "task_vector"
    assert set(records.eval_sets) == {"forget", "retain", "holdout"}
    assert records.unaligned == []
    items = eval_set_items(cache, out, set(records.eval_sets))
    for eval_set, set_records in records.eval_sets.items():
        assert len(set_records) == len(items[eval_set]) > 0
        for index, (record, item) in enumerate(zip(set_records, items[eval_set], strict=True)):
            assert record.id == f"{eval_set}/{index}" and record.index == index
            assert record.question == item["question"]
            assert record.ground_truth == item["answer"]
            assert record.data_keys == {"subject": item["subject"], "attribute": item["attribute"]}
            assert set(record.outputs) == set(ROLES)
            for role in ROLES:
                generation = record.outputs[role].generation
                if eval_set == "forget":  # forget_Q_A_ROUGE generates; the other metrics only score
                    assert isinstance(generation, str)
                else:
                    assert generation is None
    expected_values = {
        "forget": {"forget_truth_ratio", "forget_Q_A_ROUGE", "mia_loss_forget"},
        "retain": {"retain_Q_A_Prob"},
        "holdout": {"mia_loss_holdout"},
    }
    for eval_set, keys in expected_values.items():
        for record in records.eval_sets[eval_set]:
            for role in ROLES:
                assert set(record.outputs[role].values) == keys, (eval_set, role)
    ratios = records.values("oracle", "forget_truth_ratio")  # what the report's histograms read
    assert len(ratios) == len(items["forget"]) and all(r > 0 for r in ratios)
