"""A metric that comes out NaN or inf fails the run naming the metric and the model; a metric that is undefined by its
definition is null with the reason in metric_provenance (issue 12, item 2)."""

from __future__ import annotations

import math

import pytest

from msa_bench.errors import MetricUndefinedError, NonFiniteMetricError
from msa_bench.metrics import privacy
from msa_bench.metrics.registry import (
    CROSS_MODEL_METRICS,
    CrossModelMetric,
    Direction,
    MetricInfo,
    discover_suites,
)
from msa_bench.pipeline.evaluation import (
    final_metrics,
    refuse_non_finite_evaluation,
    undefined_reference_reasons,
)
from msa_bench.results import ReferenceMetrics, RunResults


def evaluation(metrics: dict, **sections) -> dict:
    return {"metrics": metrics, "per_item": {}, "generations": {}, "skipped": {}, **sections}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_per_model_metric_fails_naming_the_metric_and_the_model(value: float) -> None:
    model_eval = evaluation({"forget_Q_A_Prob": value, "model_utility": 0.5})
    with pytest.raises(NonFiniteMetricError) as raised:
        final_metrics(model_eval, evaluation({}), ["model_utility", "forget_Q_A_Prob"], None, model="msa")
    message = str(raised.value)
    assert f"metric 'forget_Q_A_Prob' of msa is {value}" in message and "method.alpha" in message


def test_a_cross_model_metric_that_returns_nan_fails_naming_it(monkeypatch) -> None:
    discover_suites()
    broken = CrossModelMetric(
        info=MetricInfo("broken_ratio", Direction.HIGHER, "Broken"), needs=(), compute=lambda *args: math.nan
    )
    monkeypatch.setitem(CROSS_MODEL_METRICS, "broken_ratio", broken)
    with pytest.raises(NonFiniteMetricError, match="metric 'broken_ratio' of target is nan"):
        final_metrics(evaluation({}), evaluation({}), ["broken_ratio"], None, model="target")


def test_privleak_against_an_oracle_auc_of_1_is_null_with_the_reason() -> None:
    discover_suites()
    with pytest.raises(MetricUndefinedError, match="reference AUC of 1"):
        privacy.privleak(0.7, reference_auc=1.0)
    oracle_eval = evaluation({"mia_min_k": 1.0})
    metrics, provenance = final_metrics(
        evaluation({"mia_min_k": 0.7}), oracle_eval, ["privleak"], None, model="msa"
    )
    assert metrics == {"privleak": None}
    assert provenance["privleak"].startswith("undefined: privleak is undefined for a reference AUC of 1")
    # The oracle against itself: undefined too, and its reason lands where its null value is.
    oracle_metrics, oracle_provenance = final_metrics(
        oracle_eval, oracle_eval, ["privleak"], None, model="oracle"
    )
    reasons = undefined_reference_reasons({"oracle": (oracle_metrics, oracle_provenance), "target": ({}, {})})
    assert list(reasons) == ["reference_metrics.oracle.privleak"]


def test_a_suite_breakdown_part_it_skipped_is_null_with_the_suite_reason() -> None:
    model_eval = evaluation(
        {"lm_eval": 0.5, "lm_eval/arc/acc": 0.5},
        skipped={
            "lm_eval/arc/acc_stderr": "lm-eval reported nan (e.g. a standard error of a single document)"
        },
    )
    metrics, provenance = final_metrics(model_eval, evaluation({}), ["lm_eval"], None, model="msa")
    assert metrics == {"lm_eval": 0.5, "lm_eval/arc/acc": 0.5, "lm_eval/arc/acc_stderr": None}
    assert provenance == {
        "lm_eval/arc/acc_stderr": "undefined: lm-eval reported nan (e.g. a standard error of a single document)"
    }


def test_an_evaluation_with_a_non_finite_value_is_refused_before_it_is_cached() -> None:
    refuse_non_finite_evaluation(evaluation({"x": 1.0}, per_item={"forget_truth_ratio": [0.5, 1.0]}), "msa")
    with pytest.raises(
        NonFiniteMetricError, match=r"evaluation of msa gives inf for per_item\.forget_truth_ratio\[2\]"
    ):
        refuse_non_finite_evaluation(
            evaluation({"x": 1.0}, per_item={"forget_truth_ratio": [0.5, 1.0, math.inf]}), "msa"
        )
    with pytest.raises(
        NonFiniteMetricError, match=r"evaluation of oracle gives nan for metrics\.model_utility"
    ):
        refuse_non_finite_evaluation(evaluation({"model_utility": math.nan}), "oracle")


def test_an_undefined_metric_is_written_as_null_and_read_back(tmp_path) -> None:
    record = RunResults(
        method="msa",
        benchmark="synthetic_tofu",
        metrics={"privleak": None, "forget_quality": 0.5},
        metric_provenance={"privleak": "undefined: privleak is undefined for a reference AUC of 1"},
        reference_metrics=ReferenceMetrics(oracle={"privleak": None}),
    )
    record.write(tmp_path / "results.json")
    assert '"privleak": null' in (tmp_path / "results.json").read_text()
    assert RunResults.read(tmp_path / "results.json") == record
