"""The TOFU metric registry and the evaluator that computes a chosen subset of it.

The evaluator first works out which model passes the requested metrics need on each eval set (answer NLLs,
paraphrased-answer NLLs, perturbed-answer NLLs, greedy generations), runs each of them once, and then derives every
metric from those shared results with the pure functions in `tofu.py`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from msa_bench.metrics import tofu
from msa_bench.metrics.generation import generate_answers
from msa_bench.metrics.scoring import score_answers

logger = logging.getLogger(__name__)

# Eval set name -> the prefix TOFU uses in its metric names.
EVAL_SET_PREFIXES: Mapping[str, str] = MappingProxyType(
    {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
)

# The model passes a metric can need on its eval set.
ANSWER_NLL = "answer_nll"  # NLL of `answer` given `question`
PARAPHRASED_NLL = "paraphrased_nll"  # NLL of `paraphrased_answer` given `question`
PERTURBED_NLL = "perturbed_nll"  # NLL of each of `perturbed_answer` given `question`
GENERATION = "generation"  # greedy answer to `question`, compared with `answer`

# The item fields each pass reads.
_FIELDS_BY_PASS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        ANSWER_NLL: ("question", "answer"),
        PARAPHRASED_NLL: ("question", "paraphrased_answer"),
        PERTURBED_NLL: ("question", "perturbed_answer"),
        GENERATION: ("question", "answer"),
    }
)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: (
        str  # how it is computed: prob, prob_normalised, rouge, truth_ratio_*, forget_quality, model_utility
    )
    eval_set: str | None  # the eval set it is computed on; None when it only combines other metrics
    needs: frozenset[str]  # model passes over eval_set it reads
    depends_on: tuple[str, ...]  # metrics that must be computed first
    higher_is_better: bool
    description: str


def _build_registry() -> dict[str, MetricSpec]:
    specs: list[MetricSpec] = []
    for eval_set in ("forget", "retain"):
        prefix = EVAL_SET_PREFIXES[eval_set]
        forgetting = eval_set == "forget"
        specs.append(
            MetricSpec(
                name=f"{prefix}_Q_A_Prob",
                kind="prob",
                eval_set=eval_set,
                needs=frozenset({ANSWER_NLL}),
                depends_on=(),
                higher_is_better=not forgetting,
                description=f"mean length-normalised probability of the {eval_set} answers"
                + (" (lower = more forgotten)" if forgetting else ""),
            )
        )
        specs.append(
            MetricSpec(
                name=f"{prefix}_Q_A_ROUGE",
                kind="rouge",
                eval_set=eval_set,
                needs=frozenset({GENERATION}),
                depends_on=(),
                higher_is_better=not forgetting,
                description=f"mean ROUGE-L recall of greedy answers on the {eval_set} set"
                + (" (lower = more forgotten)" if forgetting else ""),
            )
        )
        if forgetting:
            specs.append(
                MetricSpec(
                    name="forget_truth_ratio",
                    kind="truth_ratio_closer_to_1_better",
                    eval_set=eval_set,
                    needs=frozenset({PARAPHRASED_NLL, PERTURBED_NLL}),
                    depends_on=(),
                    higher_is_better=True,
                    description="mean min(tr, 1/tr) of paraphrased vs perturbed forget answers "
                    "(1 = cannot tell true from false)",
                )
            )
            specs.append(
                MetricSpec(
                    name="forget_quality",
                    kind="forget_quality",
                    eval_set=eval_set,
                    needs=frozenset(),
                    depends_on=("forget_truth_ratio",),
                    higher_is_better=True,
                    description="KS-test p-value of forget truth ratios against the reference (oracle) model's",
                )
            )
        else:
            specs.append(
                MetricSpec(
                    name="retain_Truth_Ratio",
                    kind="truth_ratio_true_better",
                    eval_set=eval_set,
                    needs=frozenset({PARAPHRASED_NLL, PERTURBED_NLL}),
                    depends_on=(),
                    higher_is_better=True,
                    description="mean max(0, 1 - tr) of paraphrased vs perturbed retain answers",
                )
            )
    for eval_set in ("real_authors", "world_facts"):
        prefix = EVAL_SET_PREFIXES[eval_set]
        # These sets have no paraphrased answers, so the original answer is the true option.
        specs.append(
            MetricSpec(
                name=f"{prefix}_Q_A_Prob_normalised",
                kind="prob_normalised",
                eval_set=eval_set,
                needs=frozenset({ANSWER_NLL, PERTURBED_NLL}),
                depends_on=(),
                higher_is_better=True,
                description=f"mean P(answer) / (P(answer) + sum P(perturbed)) on {eval_set}",
            )
        )
        specs.append(
            MetricSpec(
                name=f"{prefix}_Q_A_ROUGE",
                kind="rouge",
                eval_set=eval_set,
                needs=frozenset({GENERATION}),
                depends_on=(),
                higher_is_better=True,
                description=f"mean ROUGE-L recall of greedy answers on {eval_set}",
            )
        )
        specs.append(
            MetricSpec(
                name=f"{prefix}_Truth_Ratio",
                kind="truth_ratio_true_better",
                eval_set=eval_set,
                needs=frozenset({ANSWER_NLL, PERTURBED_NLL}),
                depends_on=(),
                higher_is_better=True,
                description=f"mean max(0, 1 - tr) of answer vs perturbed answers on {eval_set}",
            )
        )
    specs.append(
        MetricSpec(
            name="model_utility",
            kind="model_utility",
            eval_set=None,
            needs=frozenset(),
            depends_on=tofu.MODEL_UTILITY_COMPONENTS,
            higher_is_better=True,
            description="harmonic mean of the nine retain / real-author / world-fact metrics",
        )
    )
    return {spec.name: spec for spec in specs}


# Ordered so that every metric comes after the ones it depends on.
TOFU_METRICS: Mapping[str, MetricSpec] = MappingProxyType(_build_registry())


def validate_metric_names(names: Sequence[str]) -> None:
    """Raise ValueError naming any name that is not a TOFU metric."""
    if isinstance(names, str):
        raise TypeError(f"metric names must be a sequence of names, not the string {names!r}")
    unknown = [name for name in names if name not in TOFU_METRICS]
    if unknown:
        raise ValueError(f"unknown TOFU metric(s) {unknown}; valid names are: {', '.join(TOFU_METRICS)}")


def resolve_metric_names(names: Sequence[str]) -> list[str]:
    """The requested metrics plus everything they depend on, in registry (dependency) order."""
    if isinstance(names, str):
        raise TypeError(f"metric names must be a sequence of names, not the string {names!r}")
    pending = list(names)  # a one-shot iterable would otherwise be used up by validation
    validate_metric_names(pending)
    wanted: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(TOFU_METRICS[name].depends_on)
    return [name for name in TOFU_METRICS if name in wanted]


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)  # requested metrics and their dependencies
    # Per-item values keyed by metric name; truth-ratio entries hold the raw ratios tr (not min(tr, 1/tr)), and
    # "<prefix>_rouge1_recall" / "<prefix>_rougeL_f1" sit beside "<prefix>_Q_A_ROUGE" (ROUGE-L recall).
    per_item: dict[str, list[float]] = field(default_factory=dict)
    generations: dict[str, list[str]] = field(default_factory=dict)  # keyed by eval set name
    skipped: dict[str, str] = field(default_factory=dict)  # metric name -> why it was not computed
    tokens_processed: int = 0  # non-padding tokens through the model (scoring + generation)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _SetPasses:
    """The results of the model passes over one eval set."""

    answer_nlls: np.ndarray | None = None
    paraphrased_nlls: np.ndarray | None = None
    perturbed_nlls: list[np.ndarray] | None = None
    generations: list[str] | None = None


def _plan_passes(metric_names: Sequence[str]) -> dict[str, set[str]]:
    passes_by_set: dict[str, set[str]] = {}
    for name in metric_names:
        spec = TOFU_METRICS[name]
        if spec.eval_set is not None and spec.needs:
            passes_by_set.setdefault(spec.eval_set, set()).update(spec.needs)
    return passes_by_set


def _check_eval_set(
    eval_set: str, items: Sequence[dict], passes: set[str], metric_names: Sequence[str]
) -> None:
    users = [name for name in metric_names if TOFU_METRICS[name].eval_set == eval_set]
    if len(items) == 0:
        raise ValueError(f"eval set '{eval_set}' is empty but metrics {users} need it")
    fields = sorted({name for pass_name in passes for name in _FIELDS_BY_PASS[pass_name]})
    for index, item in enumerate(items):
        for field_name in fields:
            if field_name not in item or item[field_name] is None:
                raise ValueError(
                    f"item {index} of eval set '{eval_set}' lacks '{field_name}', needed by {users}"
                )
        if PERTURBED_NLL in passes:
            perturbed = item["perturbed_answer"]
            if isinstance(perturbed, str) or len(perturbed) == 0:
                raise ValueError(
                    f"item {index} of eval set '{eval_set}': 'perturbed_answer' must be a non-empty list of "
                    f"answers, got {perturbed!r}"
                )


def _run_passes(
    model: torch.nn.Module,
    tokenizer,
    items: Sequence[dict],
    passes: set[str],
    batch_size: int,
    max_new_tokens: int,
    progress_bar: tqdm,
) -> tuple[_SetPasses, int]:
    """All passes one eval set needs; the NLL passes share one batched scoring call."""
    results = _SetPasses()
    tokens_processed = 0
    questions: list[str] = []
    answers: list[str] = []

    def add_pairs(pairs: list[tuple[str, str]]) -> slice:
        start = len(questions)
        for question, answer in pairs:
            questions.append(question)
            answers.append(answer)
        return slice(start, len(questions))

    answer_slice = paraphrased_slice = perturbed_slice = None
    if ANSWER_NLL in passes:
        answer_slice = add_pairs([(item["question"], item["answer"]) for item in items])
    if PARAPHRASED_NLL in passes:
        paraphrased_slice = add_pairs([(item["question"], item["paraphrased_answer"]) for item in items])
    if PERTURBED_NLL in passes:
        perturbed_counts = [len(item["perturbed_answer"]) for item in items]
        perturbed_slice = add_pairs(
            [(item["question"], wrong) for item in items for wrong in item["perturbed_answer"]]
        )

    if questions:
        scores = score_answers(
            model, tokenizer, questions, answers, batch_size=batch_size, on_batch=progress_bar.update
        )
        tokens_processed += scores.tokens_processed
        if answer_slice is not None:
            results.answer_nlls = scores.nlls[answer_slice]
        if paraphrased_slice is not None:
            results.paraphrased_nlls = scores.nlls[paraphrased_slice]
        if perturbed_slice is not None:
            flat = scores.nlls[perturbed_slice]
            boundaries = np.cumsum(perturbed_counts)[:-1]
            results.perturbed_nlls = np.split(flat, boundaries)

    if GENERATION in passes:
        generated = generate_answers(
            model,
            tokenizer,
            [item["question"] for item in items],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=progress_bar.update,
        )
        tokens_processed += generated.tokens_processed
        results.generations = generated.texts
    return results, tokens_processed


def _count_pass_items(items: Sequence[dict], passes: set[str]) -> int:
    count = 0
    for pass_name in (ANSWER_NLL, PARAPHRASED_NLL, GENERATION):
        if pass_name in passes:
            count += len(items)
    if PERTURBED_NLL in passes:
        count += sum(len(item["perturbed_answer"]) for item in items)
    return count


def evaluate_tofu(
    model: torch.nn.Module,
    tokenizer,
    eval_sets: Mapping[str, Sequence[dict]],
    metric_names: Sequence[str],
    *,
    reference_forget_truth_ratios: Sequence[float] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    progress: bool = False,
) -> EvalResult:
    """Compute the requested TOFU metrics (and the metrics they depend on) for one model.

    `eval_sets` maps "forget", "retain", "real_authors", "world_facts" to lists of TOFU items; only the sets the
    requested metrics read are required. `reference_forget_truth_ratios` are the per-item forget truth ratios of the
    reference (oracle) model, i.e. its `EvalResult.per_item["forget_truth_ratio"]`; without them forget_quality is
    reported in `skipped`.
    """
    metric_names = resolve_metric_names(metric_names)
    passes_by_set = _plan_passes(metric_names)
    missing = [eval_set for eval_set in passes_by_set if eval_set not in eval_sets]
    if missing:
        needed_by = {
            eval_set: [name for name in metric_names if TOFU_METRICS[name].eval_set == eval_set]
            for eval_set in missing
        }
        raise ValueError(f"missing eval set(s) {missing} needed by {needed_by}; given: {sorted(eval_sets)}")
    for eval_set, passes in passes_by_set.items():
        _check_eval_set(eval_set, eval_sets[eval_set], passes, metric_names)

    result = EvalResult()
    passes_by_set_results: dict[str, _SetPasses] = {}
    total = sum(_count_pass_items(eval_sets[eval_set], passes) for eval_set, passes in passes_by_set.items())
    with tqdm(total=total, desc="TOFU eval", unit="seq", disable=not progress) as progress_bar:
        for eval_set, passes in passes_by_set.items():
            progress_bar.set_postfix_str(eval_set)
            if progress:
                logger.info(
                    "TOFU eval: %s (%d items): %s", eval_set, len(eval_sets[eval_set]), sorted(passes)
                )
            set_results, tokens = _run_passes(
                model, tokenizer, eval_sets[eval_set], passes, batch_size, max_new_tokens, progress_bar
            )
            passes_by_set_results[eval_set] = set_results
            result.tokens_processed += tokens
            if set_results.generations is not None:
                result.generations[eval_set] = set_results.generations

    for name in metric_names:
        _compute_metric(
            TOFU_METRICS[name], eval_sets, passes_by_set_results, result, reference_forget_truth_ratios
        )
    return result


def _compute_metric(
    spec: MetricSpec,
    eval_sets: Mapping[str, Sequence[dict]],
    passes_by_set: Mapping[str, _SetPasses],
    result: EvalResult,
    reference_forget_truth_ratios: Sequence[float] | None,
) -> None:
    """Fill `result` with one metric (and its per-item values) from the shared pass results."""
    passes = passes_by_set.get(spec.eval_set) if spec.eval_set is not None else None
    prefix = EVAL_SET_PREFIXES.get(spec.eval_set, "") if spec.eval_set is not None else ""
    per_item: np.ndarray | None = None

    if spec.kind == "prob":
        per_item = tofu.probabilities_from_nlls(passes.answer_nlls)
        value = float(per_item.mean())
    elif spec.kind == "prob_normalised":
        per_item = tofu.normalised_probabilities(passes.answer_nlls, passes.perturbed_nlls)
        value = float(per_item.mean())
    elif spec.kind == "rouge":
        references = [item["answer"] for item in eval_sets[spec.eval_set]]
        scores = tofu.rouge_scores(passes.generations, references)
        per_item = scores["rougeL_recall"]
        result.per_item[f"{prefix}_rouge1_recall"] = scores["rouge1_recall"].tolist()
        result.per_item[f"{prefix}_rougeL_f1"] = scores["rougeL_f1"].tolist()
        value = float(per_item.mean())
    elif spec.kind.startswith("truth_ratio_"):
        # forget/retain compare against the paraphrased answer; real_authors/world_facts have none, so the answer.
        correct = passes.paraphrased_nlls if PARAPHRASED_NLL in spec.needs else passes.answer_nlls
        per_item = tofu.truth_ratios(correct, passes.perturbed_nlls)
        aggregate = {
            "truth_ratio_closer_to_1_better": tofu.truth_ratio_closer_to_1_better,
            "truth_ratio_true_better": tofu.truth_ratio_true_better,
        }[spec.kind]
        value = aggregate(per_item)
    elif spec.kind == "forget_quality":
        if reference_forget_truth_ratios is None:
            result.skipped[spec.name] = (
                "no reference_forget_truth_ratios (the oracle model's per-item forget truth ratios)"
            )
            return
        value = tofu.forget_quality(result.per_item["forget_truth_ratio"], reference_forget_truth_ratios)
    elif spec.kind == "model_utility":
        value = tofu.model_utility(result.metrics)
    else:
        raise AssertionError(f"metric {spec.name} has unknown kind {spec.kind}")

    result.metrics[spec.name] = float(value)
    if per_item is not None:
        result.per_item[spec.name] = per_item.tolist()
