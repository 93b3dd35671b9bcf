"""Evaluation metrics: the evaluation core (core/), the metric suites (TOFU, MUSE, RESTOR, lm-eval, the judged
accuracies) and the registry that finds them. The TOFU names below are re-exported for convenience."""

from msa_bench.metrics.core.decoding import Generations, generate_answers, greedy_generate
from msa_bench.metrics.core.result import EvalResult
from msa_bench.metrics.core.scoring import AnswerScores, answer_nlls, score_answers
from msa_bench.metrics.tofu import MODEL_UTILITY_COMPONENTS
from msa_bench.metrics.tofu_specs import EVAL_SET_PREFIXES, TOFU_METRICS, MetricSpec, resolve_metric_names
from msa_bench.metrics.tofu_suite import evaluate_tofu

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
]
