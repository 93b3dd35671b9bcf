"""open-unlearning's aggregate scores (msa_bench/metrics/aggregates.py) on hand-computed cases, through the
pipeline's final_metrics, and rebuilt from open-unlearning's published component values (../shared/reference)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from msa_bench.errors import MetricUnavailableError, MetricUndefinedError
from msa_bench.metrics import aggregates, privacy
from msa_bench.metrics.aggregates import (
    MEMORIZATION_COMPONENTS,
    PRIVACY_ATTACKS,
    harmonic_mean,
    memorization_score,
    overall_score,
    privacy_score,
    smia,
    utility_score,
)
from msa_bench.metrics.registry import CROSS_MODEL_METRICS, Direction, metric_info
from msa_bench.pipeline.evaluation import evaluation_plan, final_metrics

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "open-unlearning"
needs_reference_logs = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"open-unlearning reference logs not found at {REFERENCE}"
)

# --- the harmonic mean ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.7], 0.7),
        ([0.4, 0.4, 0.4], 0.4),
        ([1.0, 0.5], 2 / 3),  # 2 / (1 + 2)
        ([0.2, 0.4, 0.8], 3 / 8.75),  # 3 / (5 + 2.5 + 1.25)
    ],
)
def test_harmonic_mean_of_hand_computed_cases(values, expected):
    components = {f"c{i}": value for i, value in enumerate(values)}
    assert harmonic_mean(components, "score") == pytest.approx(expected)


def test_a_zero_component_makes_the_harmonic_mean_zero():
    assert harmonic_mean({"a": 0.9, "b": 0.0, "c": 0.8}, "score") == 0.0


def test_a_nan_component_makes_the_score_undefined_naming_it():
    with pytest.raises(MetricUndefinedError, match=r"memorization_score is undefined.*'b'"):
        harmonic_mean({"a": 0.9, "b": math.nan}, "memorization_score")


def test_negative_or_no_components_are_errors():
    with pytest.raises(ValueError, match="non-negative"):
        harmonic_mean({"a": 0.9, "b": -0.1}, "score")
    with pytest.raises(ValueError, match="at least one"):
        harmonic_mean({}, "score")


# --- sMIA ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auc", "oracle_auc", "expected"),
    [
        (0.38, 0.38, 1.0),  # as hard to attack as the oracle
        (1.0, 0.5, 0.0),  # forget set fully exposed, oracle at chance
        (0.0, 0.5, 0.0),  # forget set fully exposed the other way (under-fitted)
        (0.7, 0.4, 0.5),  # 1 - 0.3 / 0.6
        (0.1, 0.4, 0.5),  # the same distance below the oracle
        (1.0, 0.4, 0.0),  # the farthest AUC from 0.4
        (0.0, 0.7, 0.0),  # the farthest AUC from 0.7
        (1.0, 0.7, 1 - 0.3 / 0.7),
    ],
)
def test_smia_of_hand_computed_cases(auc, oracle_auc, expected):
    assert smia(auc, oracle_auc) == pytest.approx(expected)


@pytest.mark.parametrize("oracle_auc", [0.05, 0.3, 0.5])
@pytest.mark.parametrize("auc", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_smia_is_one_minus_privleak_share_for_an_oracle_at_or_below_chance(auc, oracle_auc):
    assert smia(auc, oracle_auc) == pytest.approx(1 - abs(privacy.privleak(auc, oracle_auc)) / 100)


def test_smia_stays_in_the_unit_interval_without_clipping():
    grid = np.linspace(0, 1, 21)
    values = [smia(auc, oracle) for auc in grid for oracle in grid]
    assert min(values) == pytest.approx(0.0) and max(values) == 1.0
    assert all(0.0 <= value <= 1.0 for value in values)


def test_smia_rejects_values_that_are_not_aucs():
    with pytest.raises(ValueError, match="oracle_auc"):
        smia(0.5, 1.2)
    with pytest.raises(ValueError, match="auc"):
        smia(-0.1, 0.5)


# --- each score from given components ------------------------------------------------------------------------------


def memorization_components(es=0.2, em=0.5, para_prob=0.1, truth_ratio=0.6) -> dict[str, float]:
    return dict(zip(MEMORIZATION_COMPONENTS, (es, em, para_prob, truth_ratio), strict=True))


def test_memorization_score_of_hand_computed_components():
    # Complements 0.8, 0.5, 0.9, 0.4: 4 / (1.25 + 2 + 1.1111 + 2.5).
    assert memorization_score(memorization_components()) == pytest.approx(4 / (1.25 + 2 + 1 / 0.9 + 2.5))
    # A model that still reproduces every forget answer (extraction strength 1) has memorised it: 0.
    assert memorization_score(memorization_components(es=1.0)) == 0.0


def test_privacy_score_of_hand_computed_aucs():
    oracle = dict(zip(PRIVACY_ATTACKS, (0.4, 0.4, 0.5, 0.7), strict=True))
    model = dict(zip(PRIVACY_ATTACKS, (0.7, 0.4, 0.75, 1.0), strict=True))
    # sMIA: 1 - 0.3/0.6 = 0.5, 1, 1 - 0.25/0.5 = 0.5, 1 - 0.3/0.7 = 4/7.
    expected = 4 / (2 + 1 + 2 + 7 / 4)
    assert privacy_score(model, oracle) == pytest.approx(expected)
    assert privacy_score(oracle, oracle) == 1.0


def test_utility_and_overall_scores_of_hand_computed_components():
    assert utility_score({"model_utility": 0.6, "forget_fluency": 0.9}) == pytest.approx(
        2 / (1 / 0.6 + 1 / 0.9)
    )
    assert overall_score(0.5, 0.25, 1.0) == pytest.approx(3 / 7)
    assert overall_score(0.5, 0.0, 1.0) == 0.0


# --- as metrics: from evaluations, through final_metrics ------------------------------------------------------------

AGGREGATES = ["memorization_score", "privacy_score", "utility_score", "overall_score"]


def evaluation(**metrics: float) -> dict:
    values = {
        **memorization_components(),
        "model_utility": 0.6,
        "forget_fluency": 0.9,
        **dict.fromkeys(PRIVACY_ATTACKS, 0.7),
    }
    return {"metrics": {**values, **metrics}, "per_item": {}}


def oracle_evaluation() -> dict:
    return evaluation(**dict.fromkeys(PRIVACY_ATTACKS, 0.4))


def test_aggregates_are_registered_as_higher_is_better_and_plan_their_components():
    for name in AGGREGATES:
        assert name in CROSS_MODEL_METRICS
        assert metric_info(name).direction is Direction.HIGHER
    assert evaluation_plan(["privacy_score"]) == {"tofu": list(PRIVACY_ATTACKS)}
    assert evaluation_plan(["memorization_score"]) == {"tofu": list(MEMORIZATION_COMPONENTS)}
    # Requesting Utility computes the fluency (with the classifier) besides model utility.
    assert evaluation_plan(["utility_score"]) == {"tofu": ["model_utility", "forget_fluency"]}
    assert "forget_fluency" in evaluation_plan(["overall_score"])["tofu"]


def test_final_metrics_give_every_score():
    values, provenance = final_metrics(evaluation(), oracle_evaluation(), AGGREGATES, settings=None)
    assert not provenance
    assert values["memorization_score"] == pytest.approx(memorization_score(memorization_components()))
    assert values["privacy_score"] == pytest.approx(0.5)  # every attack: 1 - 0.3 / 0.6
    assert values["utility_score"] == pytest.approx(2 / (1 / 0.6 + 1 / 0.9))
    assert values["overall_score"] == pytest.approx(
        overall_score(values["memorization_score"], values["privacy_score"], values["utility_score"])
    )


def test_a_nan_component_makes_the_aggregate_null_with_the_reason():
    values, provenance = final_metrics(
        evaluation(exact_memorization=math.nan), oracle_evaluation(), ["memorization_score"], settings=None
    )
    assert values["memorization_score"] is None
    assert "exact_memorization" in provenance["memorization_score"]


def test_a_missing_component_is_an_error_naming_the_metric_to_request():
    model = evaluation()
    del model["metrics"]["mia_zlib"]
    with pytest.raises(MetricUnavailableError, match="mia_zlib"):
        CROSS_MODEL_METRICS["privacy_score"].compute(model, oracle_evaluation())
    oracle = oracle_evaluation()
    del oracle["metrics"]["mia_min_k"]
    with pytest.raises(MetricUnavailableError, match="oracle's.*mia_min_k"):
        aggregates.privacy_against_oracle(evaluation(), oracle)
    without_fluency = evaluation()
    del without_fluency["metrics"]["forget_fluency"]
    for name in ("utility_score", "overall_score"):
        with pytest.raises(MetricUnavailableError, match="forget_fluency"):
            CROSS_MODEL_METRICS[name].compute(without_fluency, oracle_evaluation())


# --- rebuilt from open-unlearning's published components -----------------------------------------------------------


def published_components(folder: str) -> dict[str, float]:
    """The components of the aggregates from one of open-unlearning's TOFU_EVAL.json files (Llama-3.2-1B-Instruct,
    forget10); forget_truth_ratio_prob_mean from its per-item truth ratios tr = P(wrong) / P(correct)."""
    entries = json.loads((REFERENCE / folder / "TOFU_EVAL.json").read_text())
    names = [name for name in (*MEMORIZATION_COMPONENTS, *PRIVACY_ATTACKS) if name in entries]
    values = {name: float(entries[name]["agg_value"]) for name in names}
    ratios = np.array([item["score"] for item in entries["forget_truth_ratio"]["value_by_index"].values()])
    values["forget_truth_ratio_prob_mean"] = float(np.mean(1 / (1 + ratios)))
    values["privleak"] = float(entries["privleak"]["agg_value"])
    return values


FULL = "tofu_Llama-3.2-1B-Instruct_full/evals_forget10"
RETAIN = "tofu_Llama-3.2-1B-Instruct_retain90"


@needs_reference_logs
def test_smia_of_min_k_reproduces_open_unlearnings_published_privleak():
    full, retain = published_components(FULL), published_components(RETAIN)
    # open-unlearning's privleak of its full model is against its retain model's min-k% AUC (0.383 <= 0.5).
    assert smia(full["mia_min_k"], retain["mia_min_k"]) == pytest.approx(1 - abs(full["privleak"]) / 100)


@needs_reference_logs
def test_aggregates_of_open_unlearnings_full_and_retain_models():
    """Our reading of the paper's scores from its published components. The logs hold no aggregate, so these
    numbers are regression values of the formulas, not published ones (docs/aggregate_scores.md)."""
    full, retain = published_components(FULL), published_components(RETAIN)
    # Full: 1-ES 0.294, 1-EM 0.026, 1-ParaProb 0.900, 1-TR 0.315; exact memorisation dominates.
    assert memorization_score(full) == pytest.approx(0.0868, abs=1e-4)
    assert memorization_score(retain) == pytest.approx(0.5848, abs=1e-4)
    # Every attack tells the full model's forget set apart almost perfectly (AUC > 0.996), the retain model's not.
    assert privacy_score(full, retain) == pytest.approx(0.00417, abs=1e-5)
    assert privacy_score(retain, retain) == 1.0
