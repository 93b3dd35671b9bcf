"""open-unlearning's aggregate scores (OpenUnlearning, Dorna et al., arXiv 2506.12618): Memorization, Privacy,
Utility and their Overall, each a harmonic mean of component metrics in [0, 1], higher = better.

The paper computed them post hoc in a notebook it did not keep (open-unlearning issues #150, #172), so the formulas
here are a reading of its text; docs/aggregate_scores.md gives each formula, its source and the readings chosen
where the text leaves a choice. In short:

* memorization_score = HM(1 - ES, 1 - EM, 1 - ParaProb, 1 - TruthRatio) on the forget set, TruthRatio being the
  paper's P(paraphrased) / (P(paraphrased) + P(perturbed)) (our forget_truth_ratio_prob_mean).
* privacy_score = HM(sMIA) over the LOSS, zlib, min-k% and min-k%++ attacks, where
  sMIA = 1 - |AUC - AUC_oracle| / max(AUC_oracle, 1 - AUC_oracle): 1 when the attack does exactly as well on the
  model as on the oracle (retrained without the forget set), 0 at the farthest AUC from the oracle's.
* utility_score = HM(model utility, forget_fluency), the fluency being a text classifier's probability that the
  greedy forget answers are fluent (msa_bench/metrics/fluency.py; it needs that classifier, so metrics=tofu_full
  leaves utility_score and overall_score out and metrics=tofu_full_aggregates adds them).
* overall_score = HM(memorization_score, privacy_score, utility_score).

A component that is absent from an evaluation is an error naming the metric to request; a component that is NaN
makes the aggregate undefined (null, with the reason in results.json's metric_provenance), never a mean of the
components that remain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from msa_bench.errors import MetricUndefinedError
from msa_bench.metrics.core.oracle import read_evaluation
from msa_bench.metrics.fluency import FLUENCY_METRIC
from msa_bench.metrics.registry import CrossModelMetric, Direction, MetricInfo, register_cross_model_metric

# The forget-set metrics whose complements (1 - value) memorization_score averages; each is 1 for a model that
# reproduces the forget answers, so 1 - value rises as the answers are forgotten.
MEMORIZATION_COMPONENTS: tuple[str, ...] = (
    "extraction_strength",
    "exact_memorization",
    "forget_Q_A_PARA_Prob",
    "forget_truth_ratio_prob_mean",
)
# The membership attacks (forget vs holdout AUC) whose sMIA privacy_score averages; the paper's sLOSS, sZLib,
# sMin-k and sMin-k++ (gradient norm and the reference-model attack are not among them).
PRIVACY_ATTACKS: tuple[str, ...] = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus")
# Model utility, and open-unlearning's fluency (its forget_Q_A_gibberish): the mean probability that its gibberish
# classifier gives the "clean" class for the greedy answers to the forget questions.
UTILITY_COMPONENTS: tuple[str, ...] = ("model_utility", FLUENCY_METRIC)


def harmonic_mean(components: Mapping[str, float], score: str) -> float:
    """The harmonic mean of non-negative `components` (name -> value); `score` names the aggregate in errors.

    A zero component makes it 0 (the limit of the harmonic mean as that component falls to 0: one failed component
    fails the score). A NaN component makes it undefined (MetricUndefinedError naming the component).
    """
    if not components:
        raise ValueError(f"{score} needs at least one component")
    undefined = [name for name, value in components.items() if math.isnan(value)]
    if undefined:
        raise MetricUndefinedError(f"{score} is undefined: its component(s) {undefined} are NaN")
    negative = {name: value for name, value in components.items() if value < 0}
    if negative:
        raise ValueError(f"{score} averages non-negative scores, got {negative}")
    if any(value == 0 for value in components.values()):
        return 0.0
    return len(components) / sum(1.0 / value for value in components.values())


def _check_auc(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be an AUC in [0, 1], got {value}")


def smia(auc: float, oracle_auc: float) -> float:
    """1 - |auc - oracle_auc| / max(oracle_auc, 1 - oracle_auc), in [0, 1]: 1 when the attack's AUC is the oracle's,
    0 when it is as far from it as an AUC can be (0 or 1, whichever is farther).

    For oracle_auc <= 0.5 it is 1 - |privleak| / 100 of the same attack (privacy.privleak), and it never needs clipping.
    """
    _check_auc(auc, "auc")
    _check_auc(oracle_auc, "oracle_auc")
    return 1.0 - abs(auc - oracle_auc) / max(oracle_auc, 1.0 - oracle_auc)


def memorization_score(metrics: Mapping[str, float]) -> float:
    """HM of 1 - x over MEMORIZATION_COMPONENTS (`metrics` maps each to its value in [0, 1])."""
    return harmonic_mean(
        {name: 1.0 - metrics[name] for name in MEMORIZATION_COMPONENTS}, "memorization_score"
    )


def privacy_score(aucs: Mapping[str, float], oracle_aucs: Mapping[str, float]) -> float:
    """HM of sMIA over PRIVACY_ATTACKS (each maps the attack's metric name to the model's, the oracle's AUC)."""
    return harmonic_mean(
        {name: smia(aucs[name], oracle_aucs[name]) for name in PRIVACY_ATTACKS}, "privacy_score"
    )


def utility_score(metrics: Mapping[str, float]) -> float:
    """HM of UTILITY_COMPONENTS: model utility and fluency."""
    return harmonic_mean({name: metrics[name] for name in UTILITY_COMPONENTS}, "utility_score")


def overall_score(memorization: float, privacy: float, utility: float) -> float:
    """HM of the three scores (the paper's Overall, issue #150)."""
    return harmonic_mean(
        {"memorization_score": memorization, "privacy_score": privacy, "utility_score": utility},
        "overall_score",
    )


# --- as metrics, from cached evaluations ---------------------------------------------------------------------------


def _values(evaluation: Mapping, names: tuple[str, ...], whose: str) -> dict[str, float]:
    return {name: float(read_evaluation(evaluation, "metrics", name, whose, name)) for name in names}


def memorization_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    """memorization_score of the model alone (the oracle's evaluation is not read)."""
    return memorization_score(_values(evaluation, MEMORIZATION_COMPONENTS, "model's"))


def privacy_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    return privacy_score(
        _values(evaluation, PRIVACY_ATTACKS, "model's"),
        _values(oracle_evaluation, PRIVACY_ATTACKS, "oracle's"),
    )


def utility_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    """utility_score of the model alone (the oracle's evaluation is not read)."""
    return utility_score(_values(evaluation, UTILITY_COMPONENTS, "model's"))


def overall_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    return overall_score(
        memorization_against_oracle(evaluation, oracle_evaluation),
        privacy_against_oracle(evaluation, oracle_evaluation),
        utility_against_oracle(evaluation, oracle_evaluation),
    )


# Registered as cross-model metrics: privacy reads the oracle's AUCs, and every aggregate's undefined cases then
# become a null with its reason (pipeline/evaluation.py::final_metrics) instead of failing the run. `needs` lists the
# per-model components, so that requesting an aggregate computes them.
AGGREGATE_METRICS: Mapping[str, CrossModelMetric] = MappingProxyType(
    {
        metric.name: metric
        for metric in (
            CrossModelMetric(
                info=MetricInfo("memorization_score", Direction.HIGHER, "Mem.", r"Mem.$\uparrow$"),
                needs=MEMORIZATION_COMPONENTS,
                compute=memorization_against_oracle,
                reads_reference=False,
            ),
            CrossModelMetric(
                info=MetricInfo("privacy_score", Direction.HIGHER, "Priv.", r"Priv.$\uparrow$"),
                needs=PRIVACY_ATTACKS,
                compute=privacy_against_oracle,
            ),
            CrossModelMetric(
                info=MetricInfo("utility_score", Direction.HIGHER, "Utility", r"Utility$\uparrow$"),
                needs=UTILITY_COMPONENTS,
                compute=utility_against_oracle,
                reads_reference=False,
            ),
            CrossModelMetric(
                info=MetricInfo("overall_score", Direction.HIGHER, "Overall", r"Overall$\uparrow$"),
                needs=(*MEMORIZATION_COMPONENTS, *PRIVACY_ATTACKS, *UTILITY_COMPONENTS),
                compute=overall_against_oracle,
            ),
        )
    }
)

for _metric in AGGREGATE_METRICS.values():
    register_cross_model_metric(_metric)
