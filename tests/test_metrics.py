"""The TOFU metric arithmetic against hand-computed numbers, and the metric registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from msa_bench.metrics import registry, tofu
from msa_bench.metrics.core.result import EvalResult
from msa_bench.metrics.tofu_specs import TOFU_METRICS, resolve_metric_names
from msa_bench.metrics.tofu_specs import validate_tofu_metric_names as validate_metric_names
from msa_bench.metrics.tofu_suite import TOFU_CROSS_MODEL_METRICS

LN2 = math.log(2.0)


# --- probabilities -----------------------------------------------------------------------------------------------


def test_probabilities_are_exp_of_minus_mean_nll():
    np.testing.assert_allclose(tofu.probabilities_from_nlls([0.0, LN2, 2 * LN2]), [1.0, 0.5, 0.25])


def test_normalised_probability_divides_by_all_options():
    # P(correct) = 1, P(wrong) = 0.5 and 0.25 -> 1 / 1.75; second item: 0.5 / (0.5 + 0.5 + 0.5 + 0.5)
    normalised = tofu.normalised_probabilities([0.0, LN2], [[LN2, 2 * LN2], [LN2, LN2, LN2]])
    np.testing.assert_allclose(normalised, [1 / 1.75, 0.25])


def test_mismatched_perturbed_sets_are_rejected():
    with pytest.raises(ValueError, match="perturbed"):
        tofu.normalised_probabilities([0.0, 1.0], [[1.0]])
    with pytest.raises(ValueError, match="at least one perturbed"):
        tofu.truth_ratios([0.0], [[]])


# --- truth ratio ---------------------------------------------------------------------------------------------------


def test_truth_ratio_hand_computed():
    # exp(-mean(1, 2)) / exp(-1.5) = 1; exp(-mean(1, 3)) / exp(-1) = exp(-1)
    np.testing.assert_allclose(tofu.truth_ratios([1.5, 1.0], [[1.0, 2.0], [1.0, 3.0]]), [1.0, math.exp(-1.0)])


def test_truth_ratio_averages_nlls_before_exponentiating():
    # Mean NLL of the wrong answers is 1, equal to the correct one: the ratio is exactly 1, whereas averaging
    # probabilities (exp(0) + exp(-2)) / 2 would give a different number.
    assert tofu.truth_ratios([1.0], [[0.0, 2.0]])[0] == pytest.approx(1.0)


def test_truth_ratio_aggregators_hand_computed():
    assert tofu.truth_ratio_closer_to_1_better([0.5, 2.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert tofu.truth_ratio_true_better([0.25, 2.0, 1.0]) == pytest.approx(0.75 / 3)
    # 1 / (1 + tr): 0.5 and 0.25
    assert tofu.truth_ratio_prob_mean([1.0, 3.0]) == pytest.approx(0.375)


def test_prob_mean_matches_its_probability_definition():
    correct, perturbed = [0.3, 1.2], [[0.5, 0.9], [2.0, 0.1, 1.0]]
    p_correct = np.exp(-np.array(correct))
    p_wrong = np.exp(-np.array([np.mean(item) for item in perturbed]))
    expected = np.mean(p_correct / (p_correct + p_wrong))
    assert tofu.truth_ratio_prob_mean(tofu.truth_ratios(correct, perturbed)) == pytest.approx(expected)


# --- forget quality and model utility ------------------------------------------------------------------------------


def test_forget_quality_of_identical_samples_is_one():
    ratios = [0.2, 0.5, 0.9, 1.3]
    assert tofu.forget_quality(ratios, ratios) == pytest.approx(1.0)


def test_forget_quality_of_separated_samples_is_small():
    # Two samples of 10 with no overlap: the exact two-sided p-value is 2 / C(20, 10).
    p_value = tofu.forget_quality(np.arange(10) * 0.01, 1.0 + np.arange(10) * 0.01)
    assert p_value == pytest.approx(2 / math.comb(20, 10))


def test_forget_quality_needs_values():
    with pytest.raises(ValueError):
        tofu.forget_quality([], [0.5])


def test_model_utility_is_harmonic_mean():
    values = dict.fromkeys(tofu.MODEL_UTILITY_COMPONENTS, 1.0)
    values["wf_Truth_Ratio"] = 0.5
    # 9 / (8 * 1 + 1 / 0.5)
    assert tofu.model_utility(values) == pytest.approx(0.9)
    assert tofu.model_utility(dict.fromkeys(tofu.MODEL_UTILITY_COMPONENTS, 0.4)) == pytest.approx(0.4)


def test_model_utility_is_zero_when_a_component_is_zero():
    values = dict.fromkeys(tofu.MODEL_UTILITY_COMPONENTS, 0.7)
    values["ra_Q_A_ROUGE"] = 0.0
    assert tofu.model_utility(values) == 0.0


def test_model_utility_ignores_extra_keys_and_rejects_missing_ones():
    values = dict.fromkeys(tofu.MODEL_UTILITY_COMPONENTS, 0.5) | {"forget_Q_A_Prob": 0.01}
    assert tofu.model_utility(values) == pytest.approx(0.5)
    del values["retain_Q_A_ROUGE"]
    with pytest.raises(ValueError, match="retain_Q_A_ROUGE"):
        tofu.model_utility(values)


# --- ROUGE ---------------------------------------------------------------------------------------------------------


def test_rouge_recall_hand_computed():
    scores = tofu.rouge_scores(
        ["the cat was sitting", "delta gamma beta alpha", "cat run"],
        ["the cat sat on the mat", "alpha beta gamma delta", "cats running"],
    )
    # 1) "the", "cat" of six reference words; "sitting" stems to "sit" but "sat" does not. LCS is "the cat" too.
    # 2) every word matches but the longest common subsequence is a single word: recall 1/4, precision 1/4.
    # 3) stemming makes "cats running" and "cat run" identical.
    np.testing.assert_allclose(scores["rouge1_recall"], [2 / 6, 1.0, 1.0])
    np.testing.assert_allclose(scores["rougeL_recall"], [2 / 6, 0.25, 1.0])
    np.testing.assert_allclose(scores["rougeL_f1"], [2 * (2 / 6) * 0.5 / (2 / 6 + 0.5), 0.25, 1.0])


def test_rouge_of_empty_generation_is_zero():
    scores = tofu.rouge_scores([""], ["some answer"])
    assert scores["rougeL_recall"][0] == 0.0


# --- registry ------------------------------------------------------------------------------------------------------

# TOFU's default fourteen (forget_quality is cross-model: computed from this model's and the oracle's evaluations).
DEFAULT_METRICS = {
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "forget_truth_ratio",
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
    "model_utility",
}
# The rest of the complete suite.
EXTRA_METRICS = {
    *(f"{prefix}_Q_A_ROUGE1_recall" for prefix in ("forget", "retain", "ra", "wf")),
    *(f"{prefix}_Q_A_ROUGE_L_F1" for prefix in ("forget", "retain", "ra", "wf")),
    *(f"{prefix}_truth_ratio_prob_mean" for prefix in ("forget", "retain", "ra", "wf")),
    "forget_truth_ratio_true_better",
    *(f"{prefix}_truth_ratio_closer_to_1" for prefix in ("retain", "ra", "wf")),
    "forget_Q_A_PARA_Prob",
    "retain_Q_A_PARA_Prob",
    "forget_fluency",
    "extraction_strength",
    "exact_memorization",
    *(f"mia_{attack}" for attack in ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm")),
}


def test_registry_holds_the_tofu_metrics():
    assert set(TOFU_METRICS) == DEFAULT_METRICS | EXTRA_METRICS
    assert set(TOFU_CROSS_MODEL_METRICS) == {"forget_quality", "privleak", "mia_reference"}
    assert TOFU_CROSS_MODEL_METRICS["forget_quality"].needs == ("forget_truth_ratio",)
    assert TOFU_METRICS["model_utility"].depends_on == tofu.MODEL_UTILITY_COMPONENTS
    assert not TOFU_METRICS["forget_Q_A_Prob"].higher_is_better
    assert not TOFU_METRICS["forget_truth_ratio_prob_mean"].higher_is_better
    assert (
        TOFU_METRICS["forget_truth_ratio"].higher_is_better and TOFU_METRICS["model_utility"].higher_is_better
    )
    assert TOFU_METRICS["mia_loss"].eval_sets == ("forget", "holdout")


def test_tofu_metrics_are_in_the_cross_suite_registry():
    assert registry.SUITES["tofu"].metric_names == tuple(TOFU_METRICS)
    for name, metric in TOFU_CROSS_MODEL_METRICS.items():
        assert registry.CROSS_MODEL_METRICS[name] is metric
        assert all(need in TOFU_METRICS for need in metric.needs)


def test_registry_lists_dependencies_before_dependents():
    order = list(TOFU_METRICS)
    for spec in TOFU_METRICS.values():
        assert spec.description
        for dependency in spec.depends_on:
            assert order.index(dependency) < order.index(spec.name)


def test_unknown_metric_name_is_reported_with_the_valid_names():
    with pytest.raises(ValueError) as error:
        validate_metric_names(["forget_Q_A_Prob", "forget_rouge"])
    assert "forget_rouge" in str(error.value)
    assert "wf_Truth_Ratio" in str(error.value)
    validate_metric_names(sorted(DEFAULT_METRICS | EXTRA_METRICS))


def test_cross_model_metric_names_point_to_the_registry():
    with pytest.raises(ValueError, match="CROSS_MODEL_METRICS") as error:
        validate_metric_names(["forget_quality", "privleak"])
    assert "forget_truth_ratio" in str(error.value) and "mia_min_k" in str(error.value)


def test_a_single_string_is_not_a_list_of_names():
    with pytest.raises(TypeError):
        validate_metric_names("model_utility")


def test_resolving_adds_dependencies_in_order():
    resolved = resolve_metric_names(["model_utility", "forget_Q_A_Prob"])
    assert resolved[0] == "forget_Q_A_Prob" and resolved[-1] == "model_utility"
    assert set(resolved) == {"forget_Q_A_Prob", "model_utility", *tofu.MODEL_UTILITY_COMPONENTS}


def test_eval_result_serialises_to_json():
    result = EvalResult(
        metrics={"forget_Q_A_Prob": 0.5},
        per_item={"forget_Q_A_Prob": [0.4, 0.6]},
        generations={"forget": ["a", "b"]},
        skipped={"forget_quality": "no reference"},
        tokens_processed=12,
    )
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
