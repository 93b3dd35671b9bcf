"""Metric metadata (registry.MetricInfo): every metric of every suite has it, reporting reads it, and the evaluation
stage asks the suites, not a list of its own, what enters an evaluation's cache key."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from msa_bench.config.schema import JudgeConfig, MetricsConfig
from msa_bench.errors import MetricError
from msa_bench.metrics.registry import (
    CROSS_MODEL_METRICS,
    Direction,
    all_metric_names,
    discover_suites,
    metric_info,
)
from msa_bench.pipeline.evaluation import evaluation_plan
from msa_bench.reporting import tables as T

EXPECTED_SUITES = {"tofu", "muse", "restor", "lm_eval"}


def test_suites_are_discovered_from_the_package():
    assert EXPECTED_SUITES <= set(discover_suites())


def test_every_metric_of_every_suite_has_metadata():
    names = all_metric_names()
    assert {"forget_quality", "privleak", "muse_privleak", "acc_recover"} <= set(names)
    for name in names:
        info = metric_info(name)
        assert info.name == name
        assert isinstance(info.direction, Direction)
        assert info.label.strip(), name
    for suite in discover_suites().values():
        assert len(set(suite.metric_names)) == len(suite.metrics), f"{suite.name} lists a metric twice"
    for name, metric in CROSS_MODEL_METRICS.items():
        assert metric.info.name == name


def test_a_metric_without_metadata_is_an_error_naming_it():
    with pytest.raises(MetricError, match="no_such_metric"):
        metric_info("no_such_metric")
    with pytest.raises(MetricError, match="no_such_metric"):
        T.metric_label("no_such_metric")
    with pytest.raises(MetricError, match="nothing/here"):
        metric_info("nothing/here")


def test_a_suites_breakdown_takes_its_familys_direction():
    info = metric_info("lm_eval/msa_world_facts_mc/acc")
    assert info.direction is metric_info("lm_eval").direction is Direction.HIGHER
    assert info.label == "lm_eval/msa_world_facts_mc/acc"


def test_the_reported_tofu_metrics_keep_their_labels_and_directions():
    assert metric_info("forget_quality").direction is Direction.HIGHER
    assert metric_info("forget_quality").latex == r"FQ$\uparrow$"
    assert (metric_info("model_utility").label, metric_info("model_utility").latex) == (
        "Model utility",
        r"MU$\uparrow$",
    )
    assert metric_info("forget_truth_ratio").label == "Forget truth ratio"
    assert metric_info("forget_Q_A_Prob").direction is Direction.TOWARD_ORACLE
    assert metric_info("retain_Truth_Ratio").direction is Direction.HIGHER
    assert metric_info("extraction_strength").direction is Direction.LOWER
    assert metric_info("muse_mia_min_k").direction is Direction.LOWER  # MUSE's tables: Min-k% ↓
    assert metric_info("restor_accuracy").direction is Direction.HIGHER


def _one_column_table(column: str, values: dict[str, float]) -> T.Table:
    rows = [
        T.Row(
            label,
            "reference" if label in ("target", "oracle") else "method",
            {column: T.Cell(value, None, 1)},
            1,
        )
        for label, value in values.items()
    ]
    return T.Table("t", "t", "tofu", "tofu", "forget10", "m", [column], rows)


@pytest.mark.parametrize("attack", ["loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm"])
def test_tofu_attack_aucs_are_scored_by_their_distance_to_the_oracle(attack):
    # The oracle never saw the forget authors (AUC about 0.5); the target still recognises them (0.9). A method at
    # 0.6 has closed three quarters of the gap; one at 0.2 overshot the oracle by 0.3 and closed only a quarter of it.
    # Read as "higher is better" (the old default), both would have been scored 100%.
    name = f"mia_{attack}"
    assert metric_info(name).direction is Direction.TOWARD_ORACLE
    table = _one_column_table(name, {"target": 0.9, "oracle": 0.5, "close": 0.6, "overshot": 0.2})
    relative = T.relative_to_ideal(table)
    assert relative.row("close").cells[name].mean == pytest.approx(75.0)
    assert relative.row("overshot").cells[name].mean == pytest.approx(25.0)
    assert relative.row("target").cells[name].mean == pytest.approx(0.0)


def test_latex_headers_come_from_the_metadata():
    table = _one_column_table("forget_quality", {"target": 0.1, "oracle": 1.0})
    assert r"FQ$\uparrow$" in T.to_latex(table)
    table = _one_column_table("mia_min_k", {"target": 0.9, "oracle": 0.5})
    assert r"Min-k\% AUC" in T.to_latex(table)


def test_a_suite_adds_to_the_cache_key_only_what_changes_its_numbers():
    suites = discover_suites()
    settings = MetricsConfig(name="restor", names=["restor_accuracy"])
    plan = evaluation_plan(["restor_accuracy"])
    assert plan == {"restor": ["restor_accuracy"]}
    # Alias matching (the default judge kind) is fixed code: nothing beyond the settings.
    assert suites["restor"].cache_spec(plan["restor"], settings) == {}
    # An LLM judge decides RESTOR's accuracy per model, so it keys the evaluation (as "restor_judge", as before).
    judged = MetricsConfig(
        name="restor", names=["restor_accuracy"], judge=JudgeConfig(kind="openai", model="m")
    )
    assert suites["restor"].cache_spec(plan["restor"], judged) == {"restor_judge": asdict(judged.judge)}
    # TOFU's judged accuracies are cross-model (never cached): the judge does not key TOFU's evaluation.
    assert suites["tofu"].cache_spec(["forget_Q_A_ROUGE"], judged) == {}
