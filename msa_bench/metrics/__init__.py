"""TOFU evaluation metrics: NLL scoring, greedy generation, the metric arithmetic, and the suite evaluator."""

from msa_bench.metrics.generation import Generations, generate_answers, greedy_generate
from msa_bench.metrics.scoring import AnswerScores, answer_nlls, score_answers
from msa_bench.metrics.suite import (
    EVAL_SET_PREFIXES,
    TOFU_METRICS,
    EvalResult,
    MetricSpec,
    evaluate_tofu,
    resolve_metric_names,
    validate_metric_names,
)
from msa_bench.metrics.tofu import MODEL_UTILITY_COMPONENTS

__all__ = [
    "EVAL_SET_PREFIXES",
    "MODEL_UTILITY_COMPONENTS",
    "TOFU_METRICS",
    "AnswerScores",
    "EvalResult",
    "Generations",
    "MetricSpec",
    "answer_nlls",
    "evaluate_tofu",
    "generate_answers",
    "greedy_generate",
    "resolve_metric_names",
    "score_answers",
    "validate_metric_names",
]
