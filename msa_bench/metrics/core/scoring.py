"""The one teacher-forced scorer: a model reads a context and is scored on the target tokens that follow it.

Two outputs, for two costs:

- `score_answers`: the mean NLL of each answer given its question (TOFU's probabilities and truth ratios).
- `token_statistics`: per target token the label's log-probability, whether the teacher-forced argmax is the label
  and, on request, the mean and variance of the vocabulary log-probabilities there (min-k%++). Memorisation metrics
  and membership attacks read these.

A sequence to score is a `ScoredSequence` (context ids, target ids). `qa_sequences` builds them from (question,
answer) pairs with `encode_qa`'s token ids (`encode_pairs`), so the scored tokens are exactly those training puts the
loss on: the answer tokens and the closing eos. A suite that scores other text (MUSE's articles and verbatim
continuations) builds its own.

The model passes are msa_bench/metrics/core/shared_prefix.py: sequences with the same context (the answers of one
question) share one pass over it through its KV cache. Only the positions that predict a target token get logits
(`logits_to_keep`), and the log-softmaxes are taken there in fp32, so bf16 models lose no precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msa_bench.data.batching import IGNORE_INDEX
from msa_bench.data.formatting import EncodedQA, answer_text, encode_prompts
from msa_bench.metrics.core.batches import evaluation_mode, model_device
from msa_bench.metrics.core.shared_prefix import target_logit_batches


@dataclass(frozen=True)
class AnswerScores:
    nlls: np.ndarray  # mean per-token NLL of each answer, in input order
    n_answer_tokens: np.ndarray  # scored tokens per answer (answer tokens + eos)
    tokens_processed: int  # non-padding tokens fed through the model, for FLOP estimates


@dataclass(frozen=True)
class ScoredSequence:
    context_ids: list[int]  # read but not scored (bos, prompt); at least one token
    target_ids: list[int]  # scored: each predicted from everything before it


@dataclass(frozen=True)
class AnswerTokenStatistics:
    """Per sequence, arrays over its target tokens (for an answer: its tokens, then the closing eos), in input order."""

    label_log_probs: list[np.ndarray]  # log P(label | prefix)
    argmax_matches: list[np.ndarray]  # bool: the teacher-forced argmax prediction equals the label
    # Mean and variance of log P(v | prefix) under P(v | prefix) over the vocabulary; None unless requested.
    vocab_log_prob_means: list[np.ndarray] | None
    vocab_log_prob_variances: list[np.ndarray] | None
    tokens_processed: int  # non-padding tokens fed through the model

    def __len__(self) -> int:
        return len(self.label_log_probs)

    def answer_nlls(self) -> np.ndarray:
        """Mean NLL over every target token (eos included): the same quantity as `score_answers`."""
        return np.array([-log_probs.mean() for log_probs in self.label_log_probs], dtype=np.float64)


def without_eos(per_token: np.ndarray) -> np.ndarray:
    """The answer tokens of one item's labelled tokens, dropping the closing eos (the last one)."""
    return per_token[:-1]


def _check_pairs(tokenizer, questions: Sequence[str], answers: Sequence[str]) -> None:
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token for batched scoring")


def _prompt_and_scored_ids(
    tokenizer, questions: Sequence[str], answers: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """Per pair, (bos + prompt ids, answer ids + eos), each distinct question's prompt encoded once (the answers of
    one question share that list) and the answers in one batched tokenizer call."""
    distinct = list(dict.fromkeys(questions))
    prompt_ids = dict(zip(distinct, encode_prompts(tokenizer, distinct), strict=True))
    answer_texts = [answer_text(tokenizer, answer) for answer in answers]
    answer_ids = tokenizer(answer_texts, add_special_tokens=False)["input_ids"] if answer_texts else []
    return [
        (prompt_ids[question], list(ids) + [tokenizer.eos_token_id])
        for question, ids in zip(questions, answer_ids, strict=True)
    ]


def encode_pairs(tokenizer, questions: Sequence[str], answers: Sequence[str]) -> list[EncodedQA]:
    """`encode_qa` of every pair, with each distinct question's prompt encoded once and the answers in one batched
    tokenizer call: the same token ids (encode_qa tokenizes prompt and answer apart and concatenates them; a test
    pins the equality), at a fraction of the tokenization time."""
    return [
        EncodedQA(input_ids=prompt + scored, labels=[IGNORE_INDEX] * len(prompt) + scored)
        for prompt, scored in _prompt_and_scored_ids(tokenizer, questions, answers)
    ]


def score_answers(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> AnswerScores:
    """Mean per-token NLL of each answer given its question, plus token counts.

    The answers of one question share one pass over its prompt (msa_bench/metrics/core/shared_prefix.py); a batch
    holds at most `batch_size` answers. `on_batch(n_items)` is called after every batch (for progress bars).
    """
    _check_pairs(tokenizer, questions, answers)
    sequences = qa_sequences(tokenizer, questions, answers)  # every answer scores at least its eos
    nlls = np.zeros(len(sequences), dtype=np.float64)
    n_answer_tokens = np.array([len(sequence.target_ids) for sequence in sequences], dtype=np.int64)
    tokens_processed = 0

    with evaluation_mode(model):
        for batch in target_logit_batches(
            model, tokenizer.pad_token_id, sequences, batch_size, model_device(model)
        ):
            nll_sums = torch.zeros(len(batch.indices), dtype=torch.float64)
            for part in batch.parts:
                # cross_entropy's log-softmax in fp32, on the logits that predict a target token only.
                token_nll = F.cross_entropy(part.logits.float(), part.labels, reduction="none")
                nll_sums.index_add_(0, part.rows.cpu(), token_nll.double().cpu())
            nll_sums = nll_sums.numpy()
            for row, index in enumerate(batch.indices):
                nlls[index] = nll_sums[row] / n_answer_tokens[index]
            tokens_processed += batch.tokens_processed
            if on_batch is not None:
                on_batch(len(batch.indices))

    return AnswerScores(nlls=nlls, n_answer_tokens=n_answer_tokens, tokens_processed=tokens_processed)


def answer_nlls(
    model: torch.nn.Module, tokenizer, questions: Sequence[str], answers: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Mean per-token NLL of each answer given its question (see `score_answers` for token counts)."""
    return score_answers(model, tokenizer, questions, answers, batch_size=batch_size).nlls


def qa_sequences(tokenizer, questions: Sequence[str], answers: Sequence[str]) -> list[ScoredSequence]:
    """The prompt of each question as context, its answer tokens and the closing eos as targets (`encode_qa`)."""
    return [
        ScoredSequence(context_ids=prompt, target_ids=scored)
        for prompt, scored in _prompt_and_scored_ids(tokenizer, questions, answers)
    ]


def _vocab_moments(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the log-probabilities under their own distribution, per row."""
    probs = log_probs.exp()
    mean = (probs * log_probs).sum(dim=-1)
    return mean, (probs * log_probs.square()).sum(dim=-1) - mean.square()


def _statistics(logits: torch.Tensor, targets: torch.Tensor, with_vocab_moments: bool) -> list[torch.Tensor]:
    """Per target (on the CPU): log P(label), whether the argmax is the label and, on request, the vocabulary
    moments; the log-softmax in fp32."""
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    statistics = [
        log_probs.gather(1, targets.unsqueeze(1)).squeeze(1).double(),
        logits.argmax(dim=-1) == targets,
    ]
    if with_vocab_moments:
        statistics += [moment.double() for moment in _vocab_moments(log_probs)]
    return [statistic.cpu() for statistic in statistics]


def token_statistics(
    model: torch.nn.Module,
    pad_token_id: int,
    sequences: Sequence[ScoredSequence],
    batch_size: int = 32,
    with_vocab_moments: bool = False,
    on_batch: Callable[[int], None] | None = None,
    *,
    row_by_row: bool = False,
) -> AnswerTokenStatistics:
    """Teacher-forced statistics of every sequence's target tokens, in batches of `batch_size` sequences
    (sequences with one context share a pass over it, see shared_prefix.py).

    The log-softmax over the vocabulary is taken on the target positions only, in fp32: for the whole batch at once,
    or, with `row_by_row` (whole articles, thousands of tokens each), one sequence at a time, so that the fp32
    (length, vocab) copy of one sequence is the largest made.
    """
    for index, sequence in enumerate(sequences):
        if not sequence.context_ids or not sequence.target_ids:
            raise ValueError(f"sequence {index} needs at least one context and one target token")
    n_sequences = len(sequences)
    label_log_probs: list = [None] * n_sequences
    argmax_matches: list = [None] * n_sequences
    means: list = [None] * n_sequences
    variances: list = [None] * n_sequences
    tokens_processed = 0

    def keep(index: int, log_probs, matches, *moments) -> None:
        label_log_probs[index] = log_probs.numpy()
        argmax_matches[index] = matches.numpy()
        if moments:
            means[index], variances[index] = moments[0].numpy(), moments[1].numpy()

    with evaluation_mode(model):
        for batch in target_logit_batches(model, pad_token_id, sequences, batch_size, model_device(model)):
            per_target = [[] for _ in range(4 if with_vocab_moments else 2)]
            for part in batch.parts:
                # A part holds each row's targets contiguously; row by row, one row's slice at a time.
                if row_by_row:
                    sizes = torch.unique_consecutive(part.rows, return_counts=True)[1].tolist()
                else:
                    sizes = [len(part.labels)]
                for logits, targets in zip(
                    torch.split(part.logits, sizes), torch.split(part.labels, sizes), strict=True
                ):
                    for values, statistic in zip(
                        per_target, _statistics(logits, targets, with_vocab_moments), strict=True
                    ):
                        values.append(statistic)
            per_row = [batch.by_row(torch.cat(values)) for values in per_target]
            for row, index in enumerate(batch.indices):
                keep(index, *(values[row] for values in per_row))
            tokens_processed += batch.tokens_processed
            if on_batch is not None:
                on_batch(len(batch.indices))

    return AnswerTokenStatistics(
        label_log_probs=label_log_probs,
        argmax_matches=argmax_matches,
        vocab_log_prob_means=means if with_vocab_moments else None,
        vocab_log_prob_variances=variances if with_vocab_moments else None,
        tokens_processed=tokens_processed,
    )


def answer_token_statistics(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    with_vocab_moments: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> AnswerTokenStatistics:
    """`token_statistics` of each answer given its question (`qa_sequences`); every answer needs a token besides
    the closing eos, because the memorisation metrics and most attacks read the answer without it."""
    _check_pairs(tokenizer, questions, answers)
    sequences = qa_sequences(tokenizer, questions, answers)
    empty = [index for index, sequence in enumerate(sequences) if len(sequence.target_ids) < 2]
    if empty:
        raise ValueError(f"answers {empty} have no token besides the closing eos")
    return token_statistics(
        model, tokenizer.pad_token_id, sequences, batch_size, with_vocab_moments, on_batch, row_by_row=False
    )
