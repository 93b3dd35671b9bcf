"""Reading a cached evaluation for a cross-model metric, and the one privleak against the oracle.

Cross-model metrics receive two evaluations as dicts (`EvalResult.to_dict()`): the model's and the oracle's. A value
missing from either is an error that says which per-model metric the evaluation should have included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msa_bench.errors import MetricUnavailableError
from msa_bench.metrics import privacy
from msa_bench.metrics.registry import CrossModelMetric, MetricInfo


def read_evaluation(evaluation: Mapping, section: str, key: str, whose: str, metric: str) -> Any:
    """evaluation[section][key]; `whose` ("model's", "oracle's") and `metric` (what to request) go in the error."""
    values = (evaluation.get(section) or {}).get(key)
    if values is None:
        raise MetricUnavailableError(
            f"the {whose} evaluation has no {section}[{key!r}]; evaluate it with {metric!r} requested"
        )
    return values


def privleak_metric(info: MetricInfo, attack_metric: str) -> CrossModelMetric:
    """MUSE's privleak (percent, 0 = as private as the oracle) of the per-model AUC `attack_metric` (the min-k%
    attack's, in both TOFU and MUSE) against the oracle's AUC of the same attack."""

    def compute(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
        return float(
            privacy.privleak(
                float(read_evaluation(evaluation, "metrics", attack_metric, "model's", attack_metric)),
                reference_auc=float(
                    read_evaluation(oracle_evaluation, "metrics", attack_metric, "oracle's", attack_metric)
                ),
            )
        )

    return CrossModelMetric(info=info, needs=(attack_metric,), compute=compute)
