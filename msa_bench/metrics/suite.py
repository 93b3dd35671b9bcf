"""The TOFU metric registry, the evaluator that computes a chosen subset of it, and TOFU's cross-model metrics.

The evaluator first works out which model passes the requested metrics need on each eval set (answer NLLs,
paraphrased-answer NLLs, perturbed-answer NLLs, greedy generations, teacher-forced answer-token statistics, per-item
gradients), runs each of them once, and then derives every metric from those shared results with the pure functions in
`tofu.py`, `memorization.py` and `mia.py`.

Forget quality, privleak and the reference-model attack compare this model's evaluation with the oracle's; they are
registered as cross-model metrics at the bottom of this module and computed from two cached evaluations.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from msa_bench.data.formatting import encode_qa
from msa_bench.metrics import memorization, mia, privacy, tofu
from msa_bench.metrics.generation import generate_answers
from msa_bench.metrics.registry import CrossModelMetric, Suite, register_cross_model_metric, register_suite
from msa_bench.metrics.scoring import score_answers

logger = logging.getLogger(__name__)

# Eval set name -> the prefix TOFU uses in its metric names.
EVAL_SET_PREFIXES: Mapping[str, str] = MappingProxyType(
    {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
)
# TOFU's holdout authors, never trained on: the non-members the membership attacks tell the forget set apart from.
HOLDOUT_SET = "holdout"

# The model passes a metric can need on its eval set.
ANSWER_NLL = "answer_nll"  # NLL of `answer` given `question`
PARAPHRASED_NLL = "paraphrased_nll"  # NLL of `paraphrased_answer` given `question`
PERTURBED_NLL = "perturbed_nll"  # NLL of each of `perturbed_answer` given `question`
GENERATION = "generation"  # greedy answer to `question`, compared with `answer`
ANSWER_TOKENS = "answer_tokens"  # per-token log-probs and argmax matches of `answer` given `question`
VOCAB_MOMENTS = "vocab_moments"  # in the same forward: mean/variance of the vocabulary log-probs (min-k%++)
GRADIENT_NORM = "gradient_norm"  # per-item gradient of the answer loss, one item at a time

# The item fields each pass reads.
_FIELDS_BY_PASS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        ANSWER_NLL: ("question", "answer"),
        PARAPHRASED_NLL: ("question", "paraphrased_answer"),
        PERTURBED_NLL: ("question", "perturbed_answer"),
        GENERATION: ("question", "answer"),
        ANSWER_TOKENS: ("question", "answer"),
        VOCAB_MOMENTS: ("question", "answer"),
        GRADIENT_NORM: ("question", "answer"),
    }
)

# Truth-ratio aggregations (open-unlearning's names) over the per-item ratios tr = P(wrong) / P(correct).
TRUTH_RATIO_AGGREGATIONS: Mapping[str, Callable[[Sequence[float]], float]] = MappingProxyType(
    {
        "closer_to_1_better": tofu.truth_ratio_closer_to_1_better,
        "true_better": tofu.truth_ratio_true_better,
        "prob_mean": tofu.truth_ratio_prob_mean,
    }
)

# Per-item gradient norms use the 2-norm (open-unlearning's TOFU default).
GRADNORM_P = 2.0


@dataclass(frozen=True)
class MetricSpec:
    name: str
    # How it is computed: prob, prob_normalised, rouge, truth_ratio, extraction_strength, exact_memorization, mia,
    # model_utility.
    kind: str
    eval_set: str | None  # the eval set it is computed on; None when it only combines other metrics
    needs: frozenset[str]  # model passes over its eval sets that it reads
    depends_on: tuple[str, ...]  # metrics that must be computed first
    higher_is_better: bool
    description: str
    variant: str | None = (
        None  # the ROUGE score, truth-ratio aggregation or attack, for kinds that have several
    )
    extra_sets: tuple[
        str, ...
    ] = ()  # further eval sets it reads with the same passes (the attacks' holdout set)

    @property
    def eval_sets(self) -> tuple[str, ...]:
        return () if self.eval_set is None else (self.eval_set, *self.extra_sets)


# (metric name suffix, rouge_scores key, what it is)
_ROUGE_VARIANTS = (
    ("Q_A_ROUGE", "rougeL_recall", "ROUGE-L recall"),
    ("Q_A_ROUGE1_recall", "rouge1_recall", "ROUGE-1 recall"),
    ("Q_A_ROUGE_L_F1", "rougeL_f1", "ROUGE-L F1"),
)

_TRUTH_RATIO_DESCRIPTIONS = {
    "closer_to_1_better": "mean min(tr, 1/tr) (1 = cannot tell true from false)",
    "true_better": "mean max(0, 1 - tr) (towards 1 = strongly prefers the truth)",
    "prob_mean": "mean 1 / (1 + tr), the probability share of the true answer",
}

_ATTACK_DESCRIPTIONS = {
    "loss": "mean answer NLL",
    "zlib": "answer NLL / zlib-compressed answer length",
    "min_k": "minus the mean of the lowest k share of answer-token log-probs",
    "min_k_plus_plus": "min-k on token log-probs standardised by the vocabulary log-prob mean and std",
    "gradnorm": "mean per-tensor 2-norm of the per-item gradient of the answer loss",
}


def _truth_ratio_name(eval_set: str, aggregation: str) -> str:
    """TOFU's names for its reported aggregations (forget_truth_ratio, retain_Truth_Ratio, ...), ours for the rest."""
    prefix = EVAL_SET_PREFIXES[eval_set]
    if eval_set == "forget":
        names = {"closer_to_1_better": "forget_truth_ratio"}
    else:
        names = {
            "true_better": f"{prefix}_Truth_Ratio",
            "closer_to_1_better": f"{prefix}_truth_ratio_closer_to_1",
        }
    return names.get(aggregation, f"{prefix}_truth_ratio_{aggregation}")


def _set_specs(eval_set: str) -> list[MetricSpec]:
    """Probability, ROUGE and truth-ratio metrics of one of the four TOFU eval sets."""
    prefix = EVAL_SET_PREFIXES[eval_set]
    forgetting = eval_set == "forget"
    forgotten_note = " (lower = more forgotten)" if forgetting else ""
    has_paraphrase = eval_set in ("forget", "retain")
    specs: list[MetricSpec] = []
    if has_paraphrase:
        specs.append(
            MetricSpec(
                name=f"{prefix}_Q_A_Prob",
                kind="prob",
                eval_set=eval_set,
                needs=frozenset({ANSWER_NLL}),
                depends_on=(),
                higher_is_better=not forgetting,
                description=f"mean length-normalised probability of the {eval_set} answers{forgotten_note}",
            )
        )
    else:
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
    for suffix, variant, what in _ROUGE_VARIANTS:
        specs.append(
            MetricSpec(
                name=f"{prefix}_{suffix}",
                kind="rouge",
                eval_set=eval_set,
                needs=frozenset({GENERATION}),
                depends_on=(),
                higher_is_better=not forgetting,
                description=f"mean {what} of greedy answers on the {eval_set} set{forgotten_note}",
                variant=variant,
            )
        )
    # forget/retain compare the paraphrased answer with the perturbed ones; real_authors/world_facts have no
    # paraphrase, so there the original answer is the true option.
    correct_pass = PARAPHRASED_NLL if has_paraphrase else ANSWER_NLL
    correct_name = "paraphrased" if has_paraphrase else "original"
    for aggregation in ("closer_to_1_better", "true_better", "prob_mean"):
        # Near 1 on the forget set means the facts are gone; the other two aggregations reward knowing them.
        good_when_high = forgetting if aggregation == "closer_to_1_better" else not forgetting
        specs.append(
            MetricSpec(
                name=_truth_ratio_name(eval_set, aggregation),
                kind="truth_ratio",
                eval_set=eval_set,
                needs=frozenset({correct_pass, PERTURBED_NLL}),
                depends_on=(),
                higher_is_better=good_when_high,
                description=f"{_TRUTH_RATIO_DESCRIPTIONS[aggregation]} of {correct_name} vs perturbed {eval_set} answers",
                variant=aggregation,
            )
        )
    return specs


def _forget_memorisation_specs() -> list[MetricSpec]:
    """Extraction strength, exact memorisation and the membership attacks (forget vs holdout)."""
    specs = [
        MetricSpec(
            name="extraction_strength",
            kind="extraction_strength",
            eval_set="forget",
            needs=frozenset({ANSWER_TOKENS}),
            depends_on=(),
            higher_is_better=False,
            description="mean 1 - k/L over forget answers, k the shortest prefix after which teacher-forced greedy "
            "predictions reproduce the rest (lower = more forgotten)",
        ),
        MetricSpec(
            name="exact_memorization",
            kind="exact_memorization",
            eval_set="forget",
            needs=frozenset({ANSWER_TOKENS}),
            depends_on=(),
            higher_is_better=False,
            description="mean share of forget answer tokens whose teacher-forced argmax is the label "
            "(lower = more forgotten)",
        ),
    ]
    needs_by_attack = {
        "loss": {ANSWER_TOKENS},
        "zlib": {ANSWER_TOKENS},
        "min_k": {ANSWER_TOKENS},
        "min_k_plus_plus": {ANSWER_TOKENS, VOCAB_MOMENTS},
        "gradnorm": {GRADIENT_NORM},
    }
    for attack in mia.ATTACKS:
        specs.append(
            MetricSpec(
                name=f"mia_{attack}",
                kind="mia",
                eval_set="forget",
                needs=frozenset(needs_by_attack[attack]),
                depends_on=(),
                # An AUC near 1 means the forget set is still recognisable; the goal is the oracle's AUC (privleak).
                higher_is_better=False,
                description=f"ROC-AUC of the {_ATTACK_DESCRIPTIONS[attack]} attack, forget (members) vs holdout "
                "(non-members); near 1 = forget set recognisable as training data",
                variant=attack,
                extra_sets=(HOLDOUT_SET,),
            )
        )
    return specs


def _build_registry() -> dict[str, MetricSpec]:
    specs = _set_specs("forget") + _forget_memorisation_specs()
    for eval_set in ("retain", "real_authors", "world_facts"):
        specs += _set_specs(eval_set)
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
    """Raise ValueError naming any name that is not a per-model TOFU metric."""
    if isinstance(names, str):
        raise TypeError(f"metric names must be a sequence of names, not the string {names!r}")
    cross_model = [name for name in names if name in TOFU_CROSS_MODEL_METRICS]
    if cross_model:
        needs = sorted({need for name in cross_model for need in TOFU_CROSS_MODEL_METRICS[name].needs})
        raise ValueError(
            f"{cross_model} compare this model with the oracle: compute them from both evaluations with "
            f"msa_bench.metrics.registry.CROSS_MODEL_METRICS, evaluating {needs} here"
        )
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


def required_eval_sets(metric_names: Sequence[str]) -> set[str]:
    """The eval sets the metrics (and their dependencies) read; "holdout" only for the membership attacks."""
    return {
        eval_set for name in resolve_metric_names(metric_names) for eval_set in TOFU_METRICS[name].eval_sets
    }


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)  # requested metrics and their dependencies
    # Per-item values keyed by metric name; truth-ratio entries hold the raw ratios tr (whatever the aggregation).
    # The attacks store their per-item scores as "mia_<attack>_forget" and "mia_<attack>_holdout" instead.
    per_item: dict[str, list[float]] = field(default_factory=dict)
    generations: dict[str, list[str]] = field(default_factory=dict)  # keyed by eval set name
    skipped: dict[str, str] = field(default_factory=dict)  # metric name -> why it was not computed
    # Non-padding tokens through the model (scoring + generation), in forward-pass equivalents for FLOP estimates:
    # a token of a gradient-norm item counts 3 (its forward and a backward of about twice the cost).
    tokens_processed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _SetPasses:
    """The results of the model passes over one eval set, plus values derived from them once."""

    answer_nlls: np.ndarray | None = None
    paraphrased_nlls: np.ndarray | None = None
    perturbed_nlls: list[np.ndarray] | None = None
    generations: list[str] | None = None
    token_statistics: memorization.AnswerTokenStatistics | None = None
    gradient_norms: np.ndarray | None = None
    rouge: dict[str, np.ndarray] | None = (
        None  # filled on first use: all ROUGE variants come from one scoring
    )


def _plan_passes(metric_names: Sequence[str]) -> dict[str, set[str]]:
    passes_by_set: dict[str, set[str]] = {}
    for name in metric_names:
        spec = TOFU_METRICS[name]
        if spec.needs:
            for eval_set in spec.eval_sets:
                passes_by_set.setdefault(eval_set, set()).update(spec.needs)
    return passes_by_set


def _metrics_reading(eval_set: str, metric_names: Sequence[str]) -> list[str]:
    return [name for name in metric_names if eval_set in TOFU_METRICS[name].eval_sets]


def _check_eval_set(
    eval_set: str, items: Sequence[dict], passes: set[str], metric_names: Sequence[str]
) -> None:
    users = _metrics_reading(eval_set, metric_names)
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


def _needs_token_pass(passes: set[str]) -> bool:
    return ANSWER_TOKENS in passes or VOCAB_MOMENTS in passes


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
    item_questions = [item["question"] for item in items]
    questions: list[str] = []
    answers: list[str] = []

    def add_pairs(pairs: list[tuple[str, str]]) -> slice:
        start = len(questions)
        for question, answer in pairs:
            questions.append(question)
            answers.append(answer)
        return slice(start, len(questions))

    if _needs_token_pass(passes):
        statistics = memorization.answer_token_statistics(
            model,
            tokenizer,
            item_questions,
            [item["answer"] for item in items],
            batch_size=batch_size,
            with_vocab_moments=VOCAB_MOMENTS in passes,
            on_batch=progress_bar.update,
        )
        results.token_statistics = statistics
        tokens_processed += statistics.tokens_processed
        if ANSWER_NLL in passes:
            # The same forward already gave every answer token's log-prob: no second pass for the answer NLLs.
            results.answer_nlls = statistics.answer_nlls()

    answer_slice = paraphrased_slice = perturbed_slice = None
    if ANSWER_NLL in passes and results.answer_nlls is None:
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
            item_questions,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=progress_bar.update,
        )
        tokens_processed += generated.tokens_processed
        results.generations = generated.texts

    if GRADIENT_NORM in passes:
        item_answers = [item["answer"] for item in items]
        results.gradient_norms = mia.gradnorm_scores(
            model, tokenizer, item_questions, item_answers, p=GRADNORM_P, on_item=progress_bar.update
        )
        n_tokens = sum(
            len(encode_qa(tokenizer, question, answer).input_ids)
            for question, answer in zip(item_questions, item_answers, strict=True)
        )
        tokens_processed += 3 * n_tokens  # forward + backward, see EvalResult.tokens_processed
    return results, tokens_processed


def _count_pass_items(items: Sequence[dict], passes: set[str]) -> int:
    """Sequences the passes over one eval set will process, for the progress bar."""
    count = 0
    token_pass = _needs_token_pass(passes)
    if token_pass:
        count += len(items)
    if ANSWER_NLL in passes and not token_pass:
        count += len(items)
    for pass_name in (PARAPHRASED_NLL, GENERATION, GRADIENT_NORM):
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
    batch_size: int = 32,
    max_new_tokens: int = 32,
    mia_k: float = 0.4,
    progress: bool = False,
) -> EvalResult:
    """Compute the requested TOFU metrics (and the metrics they depend on) for one model.

    `eval_sets` maps "forget", "retain", "real_authors", "world_facts" and "holdout" to lists of TOFU items; only the
    sets the requested metrics read are required (see `required_eval_sets`). `mia_k` is the share of lowest-scoring
    tokens of the min-k% and min-k%++ attacks. Cross-model metrics (forget_quality, privleak, mia_reference) are not
    computed here: see TOFU_CROSS_MODEL_METRICS.
    """
    metric_names = resolve_metric_names(metric_names)
    passes_by_set = _plan_passes(metric_names)
    missing = [eval_set for eval_set in passes_by_set if eval_set not in eval_sets]
    if missing:
        needed_by = {eval_set: _metrics_reading(eval_set, metric_names) for eval_set in missing}
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
        _compute_metric(TOFU_METRICS[name], eval_sets, passes_by_set_results, result, mia_k)
    return result


def attack_scores(attack: str, passes: _SetPasses, items: Sequence[dict], mia_k: float) -> np.ndarray:
    """Per-item scores of one attack on one eval set (loss-like: higher = looks less like training data)."""
    statistics = passes.token_statistics
    if attack == "loss":
        return mia.loss_scores(statistics)
    if attack == "zlib":
        return mia.zlib_scores(statistics, [item["answer"] for item in items])
    if attack == "min_k":
        return mia.min_k_scores(statistics, mia_k)
    if attack == "min_k_plus_plus":
        return mia.min_k_plus_plus_scores(statistics, mia_k)
    if attack == "gradnorm":
        return passes.gradient_norms
    raise AssertionError(f"unknown attack {attack}")


def _compute_metric(
    spec: MetricSpec,
    eval_sets: Mapping[str, Sequence[dict]],
    passes_by_set: Mapping[str, _SetPasses],
    result: EvalResult,
    mia_k: float,
) -> None:
    """Fill `result` with one metric (and its per-item values) from the shared pass results."""
    passes = passes_by_set.get(spec.eval_set) if spec.eval_set is not None else None
    per_item: np.ndarray | None = None
    value: float | None = None  # the aggregate, where it is not simply the mean of per_item

    if spec.kind == "prob":
        per_item = tofu.probabilities_from_nlls(passes.answer_nlls)
    elif spec.kind == "prob_normalised":
        per_item = tofu.normalised_probabilities(passes.answer_nlls, passes.perturbed_nlls)
    elif spec.kind == "rouge":
        if passes.rouge is None:
            references = [item["answer"] for item in eval_sets[spec.eval_set]]
            passes.rouge = tofu.rouge_scores(passes.generations, references)
        per_item = passes.rouge[spec.variant]
    elif spec.kind == "truth_ratio":
        correct = passes.paraphrased_nlls if PARAPHRASED_NLL in spec.needs else passes.answer_nlls
        ratios = tofu.truth_ratios(correct, passes.perturbed_nlls)
        result.metrics[spec.name] = float(TRUTH_RATIO_AGGREGATIONS[spec.variant](ratios))
        result.per_item[spec.name] = ratios.tolist()
        return
    elif spec.kind == "extraction_strength":
        per_item = memorization.extraction_strengths(passes.token_statistics)
        value = privacy.extraction_strength(per_item)
    elif spec.kind == "exact_memorization":
        per_item = memorization.exact_memorizations(passes.token_statistics)
        value = privacy.exact_memorization(per_item)
    elif spec.kind == "mia":
        scores = {
            eval_set: attack_scores(spec.variant, passes_by_set[eval_set], eval_sets[eval_set], mia_k)
            for eval_set in spec.eval_sets
        }
        for eval_set, set_scores in scores.items():
            result.per_item[f"{spec.name}_{eval_set}"] = set_scores.tolist()
        result.metrics[spec.name] = float(privacy.mia_auc(scores[spec.eval_set], scores[HOLDOUT_SET]))
        return
    elif spec.kind == "model_utility":
        result.metrics[spec.name] = float(tofu.model_utility(result.metrics))
        return
    else:
        raise AssertionError(f"metric {spec.name} has unknown kind {spec.kind}")

    result.metrics[spec.name] = float(per_item.mean() if value is None else value)
    result.per_item[spec.name] = per_item.tolist()


# --- the suite in the cross-suite registry ----------------------------------------------------------------------


def evaluate_tofu_suite(
    model: torch.nn.Module,
    tokenizer,
    eval_sets: Mapping[str, Sequence[dict]],
    metric_names: Sequence[str],
    settings,
    *,
    progress: bool = False,
) -> EvalResult:
    """`evaluate_tofu` with batch size, generation length and k of the attacks from `settings` (a MetricsConfig)."""
    return evaluate_tofu(
        model,
        tokenizer,
        eval_sets,
        metric_names,
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        mia_k=settings.mia_k,
        progress=progress,
    )


# --- cross-model metrics: this model's evaluation against the oracle's ------------------------------------------


def _read(evaluation: Mapping, section: str, key: str, whose: str, metric: str) -> Any:
    """evaluation[section][key], or an error saying which per-model metric the evaluation should have included."""
    values = (evaluation.get(section) or {}).get(key)
    if values is None:
        raise ValueError(
            f"the {whose} evaluation has no {section}[{key!r}]; evaluate it with {metric!r} requested"
        )
    return values


def forget_quality_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    """KS-test p-value between this model's and the oracle's per-item forget truth ratios."""
    return tofu.forget_quality(
        _read(evaluation, "per_item", "forget_truth_ratio", "model's", "forget_truth_ratio"),
        _read(oracle_evaluation, "per_item", "forget_truth_ratio", "oracle's", "forget_truth_ratio"),
    )


def privleak_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    """privleak of this model's min-k% AUC relative to the oracle's (0 = as private as the oracle)."""
    return float(
        privacy.privleak(
            _read(evaluation, "metrics", "mia_min_k", "model's", "mia_min_k"),
            _read(oracle_evaluation, "metrics", "mia_min_k", "oracle's", "mia_min_k"),
        )
    )


def mia_reference_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    """AUC of the reference-model attack (this model's loss relative to the oracle's), forget vs holdout."""
    scores = {
        eval_set: privacy.reference_attack_scores(
            _read(evaluation, "per_item", f"mia_loss_{eval_set}", "model's", "mia_loss"),
            _read(oracle_evaluation, "per_item", f"mia_loss_{eval_set}", "oracle's", "mia_loss"),
        )
        for eval_set in ("forget", HOLDOUT_SET)
    }
    return float(privacy.mia_auc(scores["forget"], scores[HOLDOUT_SET]))


TOFU_CROSS_MODEL_METRICS: Mapping[str, CrossModelMetric] = MappingProxyType(
    {
        metric.name: metric
        for metric in (
            CrossModelMetric(
                name="forget_quality", needs=("forget_truth_ratio",), compute=forget_quality_against_oracle
            ),
            CrossModelMetric(name="privleak", needs=("mia_min_k",), compute=privleak_against_oracle),
            CrossModelMetric(name="mia_reference", needs=("mia_loss",), compute=mia_reference_against_oracle),
        )
    }
)

register_suite(
    Suite(
        name="tofu",
        metric_names=tuple(TOFU_METRICS),
        evaluate=evaluate_tofu_suite,
        required_sets=required_eval_sets,
    )
)
for _metric in TOFU_CROSS_MODEL_METRICS.values():
    register_cross_model_metric(_metric)
