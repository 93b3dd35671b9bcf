"""TOFU's metric suite: the evaluator that computes a chosen subset of `TOFU_METRICS`, and TOFU's cross-model
metrics.

The evaluator first works out which model passes the requested metrics need on each eval set (answer NLLs,
paraphrased-answer NLLs, perturbed-answer NLLs, generations (greedy, or k sampled with metrics.sampling),
teacher-forced answer-token statistics, per-item gradients), runs each of them once with the evaluation core
(msa_bench/metrics/core/), and then derives every metric from those shared results with the pure functions in
`tofu.py`, `memorization.py`, `privacy.py` and `core/attacks.py`; fluency passes the generations to a text
classifier (`fluency.py`).

Forget quality, privleak and the reference-model attack compare this model's evaluation with the oracle's; they are
registered as cross-model metrics at the bottom of this module and computed from two cached evaluations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from tqdm.auto import tqdm

from msa_bench.data.formatting import encode_qa
from msa_bench.metrics import fluency, memorization, privacy, tofu
from msa_bench.metrics.core.attacks import attack_scores, gradnorm_scores
from msa_bench.metrics.core.decoding import sample_answers
from msa_bench.metrics.core.oracle import privleak_metric, read_evaluation
from msa_bench.metrics.core.result import EvalResult
from msa_bench.metrics.core.scoring import answer_token_statistics, score_answers
from msa_bench.metrics.registry import (
    CrossModelMetric,
    Direction,
    MetricInfo,
    Suite,
    register_cross_model_metric,
    register_suite,
)
from msa_bench.metrics.tofu_specs import (
    ANSWER_NLL,
    ANSWER_TOKENS,
    GENERATION,
    GRADIENT_NORM,
    HOLDOUT_SET,
    PARAPHRASED_NLL,
    PERTURBED_NLL,
    SUITE_NAME,
    TOFU_METRICS,
    VOCAB_MOMENTS,
    MetricSpec,
    check_eval_set,
    metrics_reading,
    plan_passes,
    required_eval_sets,
    resolve_metric_names,
)

logger = logging.getLogger(__name__)

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


@dataclass
class _SetPasses:
    """The results of the model passes over one eval set, plus values derived from them once."""

    answer_nlls: np.ndarray | None = None
    paraphrased_nlls: np.ndarray | None = None
    perturbed_nlls: list[np.ndarray] | None = None
    generations: list[str] | None = None  # greedy, or with sampling the sample of highest ROUGE-L recall
    token_statistics: memorization.AnswerTokenStatistics | None = None
    gradient_norms: np.ndarray | None = None
    rouge: dict[str, np.ndarray] | None = None  # every ROUGE variant, from the generation pass


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
    sampling=None,
) -> tuple[_SetPasses, int]:
    """All passes one eval set needs; the NLL passes share one batched scoring call. The generation pass decodes
    greedily, or `sampling.num_samples` answers per item (`sampling`: a SamplingConfig), scored best of k."""
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
        statistics = answer_token_statistics(
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
        generated = sample_answers(
            model,
            tokenizer,
            item_questions,
            sampling,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=progress_bar.update,
        )
        tokens_processed += generated.tokens_processed
        # One sample (greedy) gives rouge_scores of the greedy answers; k give each variant's maximum over them.
        results.rouge, results.generations = tofu.best_of_samples_rouge(
            generated.samples, [item["answer"] for item in items]
        )

    if GRADIENT_NORM in passes:
        item_answers = [item["answer"] for item in items]
        results.gradient_norms = gradnorm_scores(
            model, tokenizer, item_questions, item_answers, p=GRADNORM_P, on_item=progress_bar.update
        )
        n_tokens = sum(
            len(encode_qa(tokenizer, question, answer).input_ids)
            for question, answer in zip(item_questions, item_answers, strict=True)
        )
        tokens_processed += 3 * n_tokens  # forward + backward, see EvalResult.tokens_processed
    return results, tokens_processed


def _count_pass_items(items: Sequence[dict], passes: set[str], num_samples: int = 1) -> int:
    """Sequences the passes over one eval set will process, for the progress bar (generation: once per sample)."""
    count = 0
    token_pass = _needs_token_pass(passes)
    if token_pass:
        count += len(items)
    if ANSWER_NLL in passes and not token_pass:
        count += len(items)
    for pass_name in (PARAPHRASED_NLL, GRADIENT_NORM):
        if pass_name in passes:
            count += len(items)
    if GENERATION in passes:
        count += num_samples * len(items)
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
    sampling=None,
    fluency_scorer: Callable[[Sequence[str]], np.ndarray] | None = None,
    progress: bool = False,
) -> EvalResult:
    """Compute the requested TOFU metrics (and the metrics they depend on) for one model.

    `eval_sets` maps "forget", "retain", "real_authors", "world_facts" and "holdout" to lists of TOFU items; only the
    sets the requested metrics read are required (see `required_eval_sets`). `mia_k` is the share of lowest-scoring
    tokens of the min-k% and min-k%++ attacks. `sampling` (a SamplingConfig; None: greedy) decodes the ROUGE metrics'
    answers: with k samples, each per-item ROUGE value is the maximum over them (`tofu.best_of_samples_rouge`) and
    `generations` keeps the sample of highest ROUGE-L recall. `fluency_scorer` maps texts to their fluent-class
    probabilities (forget_fluency, of the forget generations; fluency.FluencyClassifier). Cross-model metrics
    (forget_quality, privleak, mia_reference) are not computed here: see TOFU_CROSS_MODEL_METRICS.
    """
    metric_names = resolve_metric_names(metric_names)
    if fluency.wanted(metric_names) and fluency_scorer is None:
        raise ValueError(f"{fluency.FLUENCY_METRIC} needs a fluency_scorer (a text classifier)")
    passes_by_set = plan_passes(metric_names)
    missing = [eval_set for eval_set in passes_by_set if eval_set not in eval_sets]
    if missing:
        needed_by = {eval_set: metrics_reading(eval_set, metric_names) for eval_set in missing}
        raise ValueError(f"missing eval set(s) {missing} needed by {needed_by}; given: {sorted(eval_sets)}")
    for eval_set, passes in passes_by_set.items():
        check_eval_set(eval_set, eval_sets[eval_set], passes, metric_names)

    result = EvalResult()
    passes_by_set_results: dict[str, _SetPasses] = {}
    num_samples = 1 if sampling is None else int(sampling.num_samples)
    total = sum(
        _count_pass_items(eval_sets[eval_set], passes, num_samples)
        for eval_set, passes in passes_by_set.items()
    )
    with tqdm(total=total, desc="TOFU eval", unit="seq", disable=not progress) as progress_bar:
        for eval_set, passes in passes_by_set.items():
            progress_bar.set_postfix_str(eval_set)
            if progress:
                logger.info(
                    "TOFU eval: %s (%d items): %s", eval_set, len(eval_sets[eval_set]), sorted(passes)
                )
            set_results, tokens = _run_passes(
                model,
                tokenizer,
                eval_sets[eval_set],
                passes,
                batch_size,
                max_new_tokens,
                progress_bar,
                sampling,
            )
            passes_by_set_results[eval_set] = set_results
            result.tokens_processed += tokens
            if set_results.generations is not None:
                result.generations[eval_set] = set_results.generations

    for name in metric_names:
        _compute_metric(TOFU_METRICS[name], eval_sets, passes_by_set_results, result, mia_k, fluency_scorer)
    return result


def _attack_scores(attack: str, passes: _SetPasses, items: Sequence[dict], mia_k: float) -> np.ndarray:
    """Per-item scores of one attack on one eval set; TOFU's attacks read the answer tokens without the eos, except
    loss and zlib, which read TOFU's answer NLL (core/attacks.py)."""
    return attack_scores(
        attack,
        passes.token_statistics,
        mia_k,
        texts=[item["answer"].strip() for item in items] if attack == "zlib" else [],
        drop_eos=True,
        gradient_norms=passes.gradient_norms,
    )


def _compute_metric(
    spec: MetricSpec,
    eval_sets: Mapping[str, Sequence[dict]],
    passes_by_set: Mapping[str, _SetPasses],
    result: EvalResult,
    mia_k: float,
    fluency_scorer=None,
) -> None:
    """Fill `result` with one metric (and its per-item values) from the shared pass results."""
    passes = passes_by_set.get(spec.eval_set) if spec.eval_set is not None else None
    per_item: np.ndarray | None = None
    value: float | None = None  # the aggregate, where it is not simply the mean of per_item

    if spec.kind == "prob":
        per_item = tofu.probabilities_from_nlls(passes.answer_nlls)
    elif spec.kind == "paraphrased_prob":
        per_item = tofu.probabilities_from_nlls(passes.paraphrased_nlls)
    elif spec.kind == "prob_normalised":
        per_item = tofu.normalised_probabilities(passes.answer_nlls, passes.perturbed_nlls)
    elif spec.kind == "rouge":
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
            eval_set: _attack_scores(spec.variant, passes_by_set[eval_set], eval_sets[eval_set], mia_k)
            for eval_set in spec.eval_sets
        }
        for eval_set, set_scores in scores.items():
            result.per_item[f"{spec.name}_{eval_set}"] = set_scores.tolist()
        result.metrics[spec.name] = float(privacy.mia_auc(scores[spec.eval_set], scores[HOLDOUT_SET]))
        return
    elif spec.kind == "fluency":
        per_item = np.asarray(fluency_scorer(passes.generations), dtype=float)
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
    """`evaluate_tofu` with batch size, generation length, k of the attacks, sampling and the fluency classifier
    from `settings` (a MetricsConfig)."""
    wants_fluency = fluency.wanted(metric_names)
    return evaluate_tofu(
        model,
        tokenizer,
        eval_sets,
        metric_names,
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        mia_k=settings.mia_k,
        sampling=settings.sampling,
        fluency_scorer=fluency.load_classifier(settings).fluent_probabilities if wants_fluency else None,
        progress=progress,
    )


# --- cross-model metrics: this model's evaluation against the oracle's ------------------------------------------


def forget_quality_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    """KS-test p-value between this model's and the oracle's per-item forget truth ratios."""
    return tofu.forget_quality(
        read_evaluation(evaluation, "per_item", "forget_truth_ratio", "model's", "forget_truth_ratio"),
        read_evaluation(
            oracle_evaluation, "per_item", "forget_truth_ratio", "oracle's", "forget_truth_ratio"
        ),
    )


def mia_reference_against_oracle(evaluation: Mapping, oracle_evaluation: Mapping, settings=None) -> float:
    """AUC of the reference-model attack (this model's loss relative to the oracle's), forget vs holdout."""
    scores = {
        eval_set: privacy.reference_attack_scores(
            read_evaluation(evaluation, "per_item", f"mia_loss_{eval_set}", "model's", "mia_loss"),
            read_evaluation(oracle_evaluation, "per_item", f"mia_loss_{eval_set}", "oracle's", "mia_loss"),
        )
        for eval_set in ("forget", HOLDOUT_SET)
    }
    return float(privacy.mia_auc(scores["forget"], scores[HOLDOUT_SET]))


TOFU_CROSS_MODEL_METRICS: Mapping[str, CrossModelMetric] = MappingProxyType(
    {
        metric.name: metric
        for metric in (
            CrossModelMetric(
                info=MetricInfo("forget_quality", Direction.HIGHER, "Forget quality", r"FQ$\uparrow$"),
                needs=("forget_truth_ratio",),
                compute=forget_quality_against_oracle,
            ),
            # privleak is 0 for a model as private as the oracle; its sign says which way it misses.
            privleak_metric(
                MetricInfo("privleak", Direction.TOWARD_ORACLE, "PrivLeak"), attack_metric="mia_min_k"
            ),
            # The oracle against itself scores every item 0: an AUC of 0.5, the goal.
            CrossModelMetric(
                info=MetricInfo("mia_reference", Direction.TOWARD_ORACLE, "Ref.-model AUC"),
                needs=("mia_loss",),
                compute=mia_reference_against_oracle,
            ),
        )
    }
)


def item_eval_set(key: str) -> str | None:
    """A metric's values follow its one eval set; an attack keeps one list per set, `<metric>_<eval set>`."""
    spec = TOFU_METRICS.get(key)
    if spec is not None:
        return spec.eval_set if len(spec.eval_sets) == 1 else None
    for spec in TOFU_METRICS.values():
        for eval_set in spec.eval_sets if spec.extra_sets else ():
            if key == f"{spec.name}_{eval_set}":
                return eval_set
    return None


register_suite(
    Suite(
        name=SUITE_NAME,
        metrics=tuple(spec.info for spec in TOFU_METRICS.values()),
        evaluate=evaluate_tofu_suite,
        required_sets=required_eval_sets,
        item_eval_set=item_eval_set,
        cache_spec=fluency.cache_spec,
        preflight=fluency.preflight,
    )
)
for _metric in TOFU_CROSS_MODEL_METRICS.values():
    register_cross_model_metric(_metric)
