"""The MUSE metric suite (Shi et al. 2024) on an in-memory model, with open-unlearning's definitions.

Metrics (eval sets from `msa_bench.data.muse`):

- `forget_verbmem_ROUGE`: greedy continuation (at most `muse.verbmem_max_new_tokens` new tokens) of each verbmem
  prompt, ROUGE-L F1 (stemmed) against the true continuation `gt`.
- `forget_knowmem_ROUGE` / `retain_knowmem_ROUGE`: few-shot QA. The prompt is `muse.icl_shots` in-context examples
  "Question: {q}\\nAnswer: {a}\\n\\n" followed by "Question: {q}\\nAnswer: ", as open-unlearning builds it for base
  models; greedy answer of at most `muse.knowmem_max_new_tokens` tokens, cut at the first "\\n\\n", "\\nQuestion" or
  "Question:", ROUGE-L F1 (stemmed) against the answer. open-unlearning reports rougeL_f1 as the agg_value of all
  three ROUGE metrics (checked against its MUSE-News logs); rougeL_recall and rouge1_recall are kept per item.
- `muse_mia_loss`, `muse_mia_zlib`, `muse_mia_min_k`, `muse_mia_min_k_plus_plus`: membership-inference AUC
  (`privacy.mia_auc`, ~1 when the forget texts are recognisable) of a loss-like attack score on the privleak
  forget (members) vs holdout (non-members) texts; k = `mia_k`. Per-item scores are kept as
  `per_item["muse_mia_<attack>_forget"]` and `["muse_mia_<attack>_holdout"]`.
- `muse_extraction_strength`, `muse_exact_memorization`: teacher forcing of prompt + " " + gt on verbmem; per item
  1 - k/L (k the shortest gt prefix after which the argmax predictions reproduce the rest) and the share of gt tokens
  predicted by argmax.
- `muse_privleak` (cross-model): `privacy.privleak` of this model's muse_mia_min_k AUC against the oracle's.

With `metrics.sampling` (k samples at temperature T > 0) each ROUGE value per item is its maximum over k sampled
continuations, and `generations` keeps the sample of highest ROUGE-L recall (`tofu.best_of_samples_rouge`).

Model passes go through the evaluation core: `core/decoding.sampled_decode` (with the knowmem stop strings),
`core/scoring.token_statistics` (row by row, as the texts run to thousands of tokens) and `core/attacks.attack_scores`
(every scored token: MUSE's texts carry no eos).

Tokenization follows the rest of the project rather than one tokenizer's quirks: a prompt and what the model should
produce after it are tokenized separately (bos + prompt, then the continuation with its leading space), so a BPE merge
cannot move continuation characters into the prompt. Hence the knowmem prompt is encoded without the trailing space
of "Answer: " (the model generates the space, as after every "Answer:" it was trained on); the prompt text itself is
exactly open-unlearning's. Verbmem's continuation is " " + gt, open-unlearning's insert_space.

Long texts: MUSE's privleak texts are whole articles and its verbmem prompts ~4k characters. Texts are cut to the
model's context length (the smaller of `max_position_embeddings` and the tokenizer's `model_max_length`) and to at
most 2048 tokens, open-unlearning's max_length: privleak texts keep their beginning; verbmem and knowmem prompts
keep their end (the part the continuation follows), knowmem by dropping whole in-context examples first. Every
truncation is logged as a warning.

Differences from open-unlearning, all small: it drops the last labelled token of a text in ES/EM and the attacks (its
"ignore the eos" rule, applied to texts that have no eos); we score every token. Its ES loop never tries the empty
suffix, so an item with no matching suffix gets 1/L there and 0 here (see `memorization.extraction_strength`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
from tqdm.auto import tqdm

from msa_bench.data.muse import (
    KNOWMEM_FORGET,
    KNOWMEM_FORGET_ICL,
    KNOWMEM_RETAIN,
    KNOWMEM_RETAIN_ICL,
    PRIVLEAK_FORGET,
    PRIVLEAK_HOLDOUT,
    RECORD_FIELDS,
    VERBMEM_FORGET,
)
from msa_bench.metrics import privacy, tofu
from msa_bench.metrics.core.attacks import TOKEN_ATTACKS, attack_scores
from msa_bench.metrics.core.batches import model_context_length
from msa_bench.metrics.core.decoding import SampledGenerations, sampled_decode
from msa_bench.metrics.core.oracle import privleak_metric
from msa_bench.metrics.core.result import EvalResult
from msa_bench.metrics.core.scoring import ScoredSequence, token_statistics
from msa_bench.metrics.memorization import exact_memorization, extraction_strength
from msa_bench.metrics.muse_items import muse_item_eval_set
from msa_bench.metrics.registry import (
    Direction,
    MetricInfo,
    Suite,
    register_cross_model_metric,
    register_suite,
    validate_metric_names,
)

logger = logging.getLogger(__name__)

SUITE_NAME = "muse"
VERBMEM_ROUGE = "forget_verbmem_ROUGE"
FORGET_KNOWMEM_ROUGE = "forget_knowmem_ROUGE"
RETAIN_KNOWMEM_ROUGE = "retain_knowmem_ROUGE"
EXTRACTION_STRENGTH = "muse_extraction_strength"
EXACT_MEMORIZATION = "muse_exact_memorization"
MIA_ATTACKS: tuple[str, ...] = TOKEN_ATTACKS
MIA_METRICS: Mapping[str, str] = MappingProxyType({f"muse_mia_{attack}": attack for attack in MIA_ATTACKS})
PRIVLEAK = "muse_privleak"
PRIVLEAK_ATTACK_METRIC = "muse_mia_min_k"  # MUSE's privleak is defined on the min-k% AUC

MUSE_METRIC_NAMES: tuple[str, ...] = (
    VERBMEM_ROUGE,
    FORGET_KNOWMEM_ROUGE,
    RETAIN_KNOWMEM_ROUGE,
    *MIA_METRICS,
    EXTRACTION_STRENGTH,
    EXACT_MEMORIZATION,
)

# The eval sets each metric reads.
REQUIRED_SETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        VERBMEM_ROUGE: (VERBMEM_FORGET,),
        FORGET_KNOWMEM_ROUGE: (KNOWMEM_FORGET, KNOWMEM_FORGET_ICL),
        RETAIN_KNOWMEM_ROUGE: (KNOWMEM_RETAIN, KNOWMEM_RETAIN_ICL),
        **{name: (PRIVLEAK_FORGET, PRIVLEAK_HOLDOUT) for name in MIA_METRICS},
        EXTRACTION_STRENGTH: (VERBMEM_FORGET,),
        EXACT_MEMORIZATION: (VERBMEM_FORGET,),
    }
)

# Knowmem metric -> (QA set, in-context set, prefix of its per-item ROUGE side values).
_KNOWMEM: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {
        FORGET_KNOWMEM_ROUGE: (KNOWMEM_FORGET, KNOWMEM_FORGET_ICL, "forget_knowmem"),
        RETAIN_KNOWMEM_ROUGE: (KNOWMEM_RETAIN, KNOWMEM_RETAIN_ICL, "retain_knowmem"),
    }
)

# open-unlearning's knowmem stop words: the end of the answer block, or the start of a next example.
KNOWMEM_STOP_STRINGS: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")
# open-unlearning's max_length for privleak texts and verbmem continuations.
MAX_TEXT_TOKENS = 2048


def required_sets(metric_names: Sequence[str]) -> set[str]:
    """The MUSE eval sets the given metrics read."""
    validate_metric_names(metric_names, suite=SUITE_NAME)
    return {eval_set for name in metric_names for eval_set in REQUIRED_SETS[name]}


# --- prompts and tokens ---------------------------------------------------------------------------------------------


def knowmem_prompt(icl_examples: Sequence[Mapping], question: str) -> str:
    """open-unlearning's few-shot prompt for a base model: the examples, then the question and "Answer: "."""
    shots = "".join(
        f"Question: {example['question']}\nAnswer: {example['answer']}\n\n" for example in icl_examples
    )
    return f"{shots}Question: {question}\nAnswer: "


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _keep_end(tokenizer, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """bos + the last tokens of a prompt, at most `max_tokens` in all."""
    head = _bos(tokenizer)
    body = prompt_ids[len(head) :] if head and prompt_ids[:1] == head else prompt_ids
    return head + body[max(0, len(body) - (max_tokens - len(head))) :]


def _prompt_budget(context_length: int, max_new_tokens: int) -> int:
    budget = context_length - max_new_tokens
    if budget < 2:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's {context_length}-token context"
        )
    return budget


class _TruncationLog:
    """Counts the truncated items of one eval set and logs one warning for them."""

    def __init__(self, eval_set: str, how: str) -> None:
        self.eval_set, self.how, self.count, self.total = eval_set, how, 0, 0

    def record(self, truncated: bool) -> None:
        self.total += 1
        self.count += int(truncated)

    def report(self) -> None:
        if self.count:
            logger.warning("%s: %d of %d %s", self.eval_set, self.count, self.total, self.how)


def knowmem_prompt_ids(
    tokenizer, icl_examples: Sequence[Mapping], question: str, max_tokens: int
) -> tuple[list[int], int]:
    """Token ids of the few-shot prompt (trailing space left to the model) and how many examples fit in
    `max_tokens`; the earliest examples are dropped first, then the question's beginning."""
    for n_dropped in range(len(icl_examples) + 1):
        text = knowmem_prompt(icl_examples[n_dropped:], question).removesuffix(" ")
        ids = _bos(tokenizer) + _tokens(tokenizer, text)
        if len(ids) <= max_tokens:
            return ids, len(icl_examples) - n_dropped
    return _keep_end(tokenizer, ids, max_tokens), 0


# --- scored sequences ----------------------------------------------------------------------------------------------


def text_sequences(tokenizer, texts: Sequence[str], max_tokens: int, eval_set: str) -> list[ScoredSequence]:
    """Whole texts to score (every token after bos), cut to their first `max_tokens` tokens."""
    truncation = _TruncationLog(eval_set, f"texts cut to their first {max_tokens} tokens (model context)")
    sequences = []
    for text in texts:
        ids = _bos(tokenizer) + _tokens(tokenizer, text)
        truncation.record(len(ids) > max_tokens)
        ids = ids[:max_tokens]
        sequences.append(ScoredSequence(context_ids=ids[:1], target_ids=ids[1:]))
    truncation.report()
    return sequences


def verbmem_sequences(tokenizer, items: Sequence[Mapping], max_tokens: int) -> list[ScoredSequence]:
    """bos + prompt as context, " " + gt as targets; the gt is cut to MAX_TEXT_TOKENS (and to the context), then
    the prompt loses its beginning until both fit in `max_tokens`."""
    truncation = _TruncationLog(
        VERBMEM_FORGET, f"prompt + gt shortened to fit the model's {max_tokens}-token context"
    )
    sequences = []
    for item in items:
        prompt_ids = _bos(tokenizer) + _tokens(tokenizer, item["prompt"])
        gt_ids = _tokens(tokenizer, " " + item["gt"])
        room_for_gt = max_tokens - min(len(prompt_ids), 2)  # keep bos and at least one prompt token
        target_ids = gt_ids[: min(MAX_TEXT_TOKENS, room_for_gt)]
        context_ids = _keep_end(tokenizer, prompt_ids, max_tokens - len(target_ids))
        truncation.record(len(target_ids) < len(gt_ids) or len(context_ids) < len(prompt_ids))
        sequences.append(ScoredSequence(context_ids=context_ids, target_ids=target_ids))
    truncation.report()
    return sequences


# --- the suite ------------------------------------------------------------------------------------------------------


def _check_eval_sets(eval_sets: Mapping[str, Sequence[Mapping]], metric_names: Sequence[str]) -> None:
    for eval_set in sorted(required_sets(metric_names)):
        users = [name for name in metric_names if eval_set in REQUIRED_SETS[name]]
        if eval_set not in eval_sets:
            raise ValueError(f"missing eval set '{eval_set}' needed by {users}; given: {sorted(eval_sets)}")
        items = eval_sets[eval_set]
        # An empty in-context set is a valid zero-shot setup; every other set must have items.
        if len(items) == 0 and eval_set not in (KNOWMEM_FORGET_ICL, KNOWMEM_RETAIN_ICL):
            raise ValueError(f"eval set '{eval_set}' is empty but {users} need it")
        for index, item in enumerate(items):
            for field_name in RECORD_FIELDS[eval_set]:
                if not isinstance(item.get(field_name), str):
                    raise ValueError(
                        f"item {index} of eval set '{eval_set}' lacks '{field_name}', needed by {users}"
                    )


def _rouge_into(
    result: EvalResult, name: str, prefix: str, eval_set: str, generated: SampledGenerations, references: list
) -> None:
    """One ROUGE metric from each item's samples (one when greedy), keeping the best sample as its generation."""
    result.tokens_processed += generated.tokens_processed
    scores, result.generations[eval_set] = tofu.best_of_samples_rouge(
        generated.samples, [reference.strip() for reference in references]
    )
    result.metrics[name] = float(scores["rougeL_f1"].mean())
    result.per_item[name] = scores["rougeL_f1"].tolist()
    result.per_item[f"{prefix}_rougeL_recall"] = scores["rougeL_recall"].tolist()
    result.per_item[f"{prefix}_rouge1_recall"] = scores["rouge1_recall"].tolist()


def evaluate_muse(
    model: torch.nn.Module,
    tokenizer,
    eval_sets: Mapping[str, Sequence[Mapping]],
    metric_names: Sequence[str],
    settings,
    progress: bool = False,
) -> EvalResult:
    """Compute the requested MUSE metrics of one model; `settings` is the MetricsConfig (batch_size, mia_k, muse.*).

    Only the model passes the requested metrics need are run: verbmem generation, knowmem generation per set,
    teacher forcing on verbmem (ES, EM) and on the privleak texts (all attacks share one pass per set).
    """
    metric_names = list(dict.fromkeys(metric_names))
    validate_metric_names(metric_names, suite=SUITE_NAME)
    _check_eval_sets(eval_sets, metric_names)
    batch_size = int(settings.batch_size)
    muse_settings, sampling = settings.muse, settings.sampling
    context_length = model_context_length(model, tokenizer)
    wanted = set(metric_names)
    attacks = [attack for name, attack in MIA_METRICS.items() if name in wanted]
    memorisation = wanted & {EXTRACTION_STRENGTH, EXACT_MEMORIZATION}
    knowmem = [name for name in _KNOWMEM if name in wanted]

    generated_items = sum(len(eval_sets[_KNOWMEM[name][0]]) for name in knowmem)
    generated_items += len(eval_sets[VERBMEM_FORGET]) if VERBMEM_ROUGE in wanted else 0
    total = int(sampling.num_samples) * generated_items + (
        len(eval_sets[VERBMEM_FORGET]) if memorisation else 0
    )
    if attacks:
        total += len(eval_sets[PRIVLEAK_FORGET]) + len(eval_sets[PRIVLEAK_HOLDOUT])

    result = EvalResult()
    with tqdm(total=total, desc="MUSE eval", unit="seq", disable=not progress) as progress_bar:
        if VERBMEM_ROUGE in wanted:
            progress_bar.set_postfix_str(VERBMEM_ROUGE)
            max_new_tokens = int(muse_settings.verbmem_max_new_tokens)
            budget = _prompt_budget(context_length, max_new_tokens)
            items = eval_sets[VERBMEM_FORGET]
            truncation = _TruncationLog(
                VERBMEM_FORGET, f"prompts cut to their last {budget} tokens for generation"
            )
            prompts = []
            for item in items:
                prompt_ids = _bos(tokenizer) + _tokens(tokenizer, item["prompt"])
                truncation.record(len(prompt_ids) > budget)
                prompts.append(_keep_end(tokenizer, prompt_ids, budget))
            truncation.report()
            generated = sampled_decode(
                model, tokenizer, prompts, max_new_tokens, sampling, batch_size, on_batch=progress_bar.update
            )
            references = [item["gt"] for item in items]
            _rouge_into(result, VERBMEM_ROUGE, "forget_verbmem", VERBMEM_FORGET, generated, references)

        for name in knowmem:
            progress_bar.set_postfix_str(name)
            qa_set, icl_set, prefix = _KNOWMEM[name]
            max_new_tokens = int(muse_settings.knowmem_max_new_tokens)
            budget = _prompt_budget(context_length, max_new_tokens)
            shots = list(eval_sets[icl_set][: int(muse_settings.icl_shots)])
            if len(shots) < int(muse_settings.icl_shots):
                logger.warning(
                    "%s: only %d in-context examples (asked for %d)",
                    icl_set,
                    len(shots),
                    muse_settings.icl_shots,
                )
            truncation = _TruncationLog(
                qa_set,
                f"questions prompted with fewer than {len(shots)} in-context examples to fit the context",
            )
            prompts = []
            for item in eval_sets[qa_set]:
                prompt_ids, n_shots = knowmem_prompt_ids(tokenizer, shots, item["question"], budget)
                truncation.record(n_shots < len(shots))
                prompts.append(prompt_ids)
            truncation.report()
            generated = sampled_decode(
                model,
                tokenizer,
                prompts,
                max_new_tokens,
                sampling,
                batch_size,
                KNOWMEM_STOP_STRINGS,
                progress_bar.update,
            )
            references = [item["answer"] for item in eval_sets[qa_set]]
            _rouge_into(result, name, prefix, qa_set, generated, references)

        if memorisation:
            progress_bar.set_postfix_str("verbmem teacher forcing")
            sequences = verbmem_sequences(tokenizer, eval_sets[VERBMEM_FORGET], context_length)
            statistics = token_statistics(
                model,
                tokenizer.pad_token_id,
                sequences,
                batch_size,
                on_batch=progress_bar.update,
                row_by_row=True,
            )
            result.tokens_processed += statistics.tokens_processed
            for name, per_item_metric, aggregate in (
                (EXTRACTION_STRENGTH, extraction_strength, privacy.extraction_strength),
                (EXACT_MEMORIZATION, exact_memorization, privacy.exact_memorization),
            ):
                if name in wanted:
                    values = [per_item_metric(matches) for matches in statistics.argmax_matches]
                    result.metrics[name] = aggregate(values)
                    result.per_item[name] = values

        if attacks:
            k = float(settings.mia_k)
            max_tokens = min(context_length, MAX_TEXT_TOKENS)
            scores: dict[str, dict[str, np.ndarray]] = {attack: {} for attack in attacks}
            for side, eval_set in (("forget", PRIVLEAK_FORGET), ("holdout", PRIVLEAK_HOLDOUT)):
                progress_bar.set_postfix_str(eval_set)
                sequences = text_sequences(
                    tokenizer, [item["text"] for item in eval_sets[eval_set]], max_tokens, eval_set
                )
                statistics = token_statistics(
                    model,
                    tokenizer.pad_token_id,
                    sequences,
                    batch_size,
                    with_vocab_moments="min_k_plus_plus" in attacks,
                    on_batch=progress_bar.update,
                    row_by_row=True,
                )
                result.tokens_processed += statistics.tokens_processed
                scored_texts = (
                    [
                        tokenizer.decode(sequence.target_ids, skip_special_tokens=True)
                        for sequence in sequences
                    ]
                    if "zlib" in attacks
                    else []
                )
                for attack in attacks:
                    # MUSE's texts have no eos: every attack reads every scored token.
                    scores[attack][side] = attack_scores(
                        attack, statistics, k, texts=scored_texts, drop_eos=False
                    )
                    result.per_item[f"muse_mia_{attack}_{side}"] = scores[attack][side].tolist()
            for attack in attacks:
                result.metrics[f"muse_mia_{attack}"] = privacy.mia_auc(
                    scores[attack]["forget"], scores[attack]["holdout"]
                )

    return result


# MUSE's tables (paper and open-unlearning): lower is better for memorisation and for the membership attacks' AUCs,
# higher for retained knowledge, and privleak's goal is the oracle's 0.
MUSE_METRICS: tuple[MetricInfo, ...] = (
    MetricInfo(VERBMEM_ROUGE, Direction.LOWER, "VerbMem", r"VerbMem$\downarrow$"),
    MetricInfo(FORGET_KNOWMEM_ROUGE, Direction.LOWER, "KnowMem_f", r"KnowMem$_f\downarrow$"),
    MetricInfo(RETAIN_KNOWMEM_ROUGE, Direction.HIGHER, "KnowMem_r", r"KnowMem$_r\uparrow$"),
    MetricInfo("muse_mia_loss", Direction.LOWER, "LOSS AUC"),
    MetricInfo("muse_mia_zlib", Direction.LOWER, "zlib AUC"),
    MetricInfo("muse_mia_min_k", Direction.LOWER, "Min-k%", r"Min-k\%$\downarrow$"),
    MetricInfo("muse_mia_min_k_plus_plus", Direction.LOWER, "Min-k%++", r"Min-k\%++$\downarrow$"),
    MetricInfo(EXTRACTION_STRENGTH, Direction.LOWER, "Ext. str.", r"Ext.Str.$\downarrow$"),
    MetricInfo(EXACT_MEMORIZATION, Direction.LOWER, "Exact mem.", r"ExactMem$\downarrow$"),
)

MUSE_SUITE = register_suite(
    Suite(
        name=SUITE_NAME,
        metrics=MUSE_METRICS,
        evaluate=evaluate_muse,
        required_sets=required_sets,
        item_eval_set=lambda key: muse_item_eval_set(key, REQUIRED_SETS, MIA_METRICS),
    )
)
register_cross_model_metric(
    privleak_metric(
        MetricInfo(PRIVLEAK, Direction.TOWARD_ORACLE, "PrivLeak", r"PrivLeak$\to 0$"),
        attack_metric=PRIVLEAK_ATTACK_METRIC,
    )
)
