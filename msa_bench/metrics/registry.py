"""One registry over every metric suite (TOFU, MUSE, judged accuracies, lm-eval).

A *suite* computes metrics of one model from its eval sets (`evaluate`). A *cross-model* metric is computed afterwards
from two cached evaluations, the model's and the oracle's (forget quality, privleak, the reference-model attack,
Acc_recover), so that the oracle is evaluated once and reused by every later run.

Suites register themselves with `register_suite` when their module is imported; `discover_suites` imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Modules that define suites or cross-model metrics (imported lazily: some pull heavy libraries).
SUITE_MODULES = (
    "msa_bench.metrics.suite",  # TOFU
    "msa_bench.metrics.muse",
    "msa_bench.metrics.judged",
    "msa_bench.metrics.restor",
    "msa_bench.metrics.lm_eval_suite",
)


@dataclass(frozen=True)
class Suite:
    """metric_names: what it provides. evaluate(model, tokenizer, eval_sets, names, settings) -> EvalResult,
    where settings is the MetricsConfig. required_sets(names) -> the eval set names it needs."""

    name: str
    metric_names: tuple[str, ...]
    evaluate: Callable
    required_sets: Callable[[Sequence[str]], set[str]]


@dataclass(frozen=True)
class CrossModelMetric:
    """compute(evaluation, oracle_evaluation, settings) -> float, from two eval dicts (EvalResult.to_dict()).
    needs: the per-model metrics whose per-item values it reads (they are computed even if not requested).
    needs_eval_sets: compute also receives `eval_sets=` (the items), e.g. for judges that need the candidates.
    provenance: optional settings -> str saying what produced the number (e.g. which judge), kept in results.json."""

    name: str
    needs: tuple[str, ...]
    compute: Callable[..., float]
    needs_eval_sets: bool = False
    provenance: Callable[[object], str] | None = None


SUITES: dict[str, Suite] = {}
CROSS_MODEL_METRICS: dict[str, CrossModelMetric] = {}


def register_suite(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


def register_cross_model_metric(metric: CrossModelMetric) -> CrossModelMetric:
    CROSS_MODEL_METRICS[metric.name] = metric
    return metric


def discover_suites() -> None:
    for module in SUITE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # a missing dependency inside an existing module is a real error
                raise


def all_metric_names() -> list[str]:
    discover_suites()
    names = [n for suite in SUITES.values() for n in suite.metric_names]
    return names + [n for n in CROSS_MODEL_METRICS if n not in names]


def validate_metric_names(names: Sequence[str]) -> None:
    valid = all_metric_names()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid names are: {', '.join(valid)}")


def suite_of(name: str) -> Suite:
    discover_suites()
    for suite in SUITES.values():
        if name in suite.metric_names:
            return suite
    raise KeyError(name)
