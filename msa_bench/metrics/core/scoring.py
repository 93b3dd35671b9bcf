"""The one teacher-forced scorer: a model reads a context and is scored on the target tokens that follow it.

Two outputs, for two costs:

- `score_answers`: the mean NLL of each answer given its question (TOFU's probabilities and truth ratios). Only the
  positions that predict a scored token get logits (`logits_to_keep`), which saves a quarter of the forward pass.
- `token_statistics`: per target token the label's log-probability, whether the teacher-forced argmax is the label
  and, on request, the mean and variance of the vocabulary log-probabilities there (min-k%++). Memorisation metrics
  and membership attacks read these.

A sequence to score is a `ScoredSequence` (context ids, target ids). `qa_sequences` builds them from (question,
answer) pairs with `encode_qa`, so the scored tokens are exactly those training puts the loss on: the answer tokens
and the closing eos. A suite that scores other text (MUSE's articles and verbatim continuations) builds its own.
Batches are padded on the right (msa_bench/data/batching.py); log-softmaxes are taken in fp32, so bf16 models do not
lose precision there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msa_bench.data.batching import IGNORE_INDEX, pad_right
from msa_bench.data.formatting import encode_qa
from msa_bench.metrics.core.batches import evaluation_mode, length_sorted_batches, model_device


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


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _logits_at(model, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
    """Logits at the given sequence positions, (batch, len(positions), vocab).

    transformers' causal LMs take `logits_to_keep` (a tensor of positions) and apply their own head, scaling and
    soft-capping there; models without it get the full logits, sliced.
    """
    if _accepts_logits_to_keep(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, positions, :]


def score_answers(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> AnswerScores:
    """Mean per-token NLL of each answer given its question, plus token counts.

    `on_batch(n_items)` is called after every batch (for progress bars).
    """
    _check_pairs(tokenizer, questions, answers)
    encoded = [
        encode_qa(tokenizer, question, answer) for question, answer in zip(questions, answers, strict=True)
    ]
    nlls = np.zeros(len(encoded), dtype=np.float64)
    n_answer_tokens = np.array([item.n_answer_tokens for item in encoded], dtype=np.int64)
    if (n_answer_tokens == 0).any():
        raise ValueError("every answer must have at least one scored token")
    device = model_device(model)

    with evaluation_mode(model):
        for batch_indices in length_sorted_batches([len(item.input_ids) for item in encoded], batch_size):
            batch = [encoded[index] for index in batch_indices]
            input_ids, labels, attention_mask = pad_right(
                [item.input_ids for item in batch], [item.labels for item in batch], tokenizer.pad_token_id
            )
            width = input_ids.shape[1]
            # Only positions that predict a scored token need logits: computing the vocabulary projection (and the
            # log-softmax) for prompt positions too costs a quarter of the forward pass on a small model.
            first_scored = int((labels != IGNORE_INDEX).int().argmax(dim=1).min())
            predicting = torch.arange(first_scored - 1, width - 1)
            logits = _logits_at(model, input_ids.to(device), attention_mask.to(device), predicting.to(device))
            scored_labels = labels[:, first_scored:].to(device)
            token_nll = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                scored_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(scored_labels.shape)
            answer_nll_sums = token_nll.sum(dim=1).double().cpu().numpy()
            for row, index in enumerate(batch_indices):
                nlls[index] = answer_nll_sums[row] / n_answer_tokens[index]
            if on_batch is not None:
                on_batch(len(batch))

    tokens_processed = sum(len(item.input_ids) for item in encoded)
    return AnswerScores(nlls=nlls, n_answer_tokens=n_answer_tokens, tokens_processed=tokens_processed)


def answer_nlls(
    model: torch.nn.Module, tokenizer, questions: Sequence[str], answers: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Mean per-token NLL of each answer given its question (see `score_answers` for token counts)."""
    return score_answers(model, tokenizer, questions, answers, batch_size=batch_size).nlls


def qa_sequences(tokenizer, questions: Sequence[str], answers: Sequence[str]) -> list[ScoredSequence]:
    """The prompt of each question as context, its answer tokens and the closing eos as targets (`encode_qa`)."""
    sequences = []
    for question, answer in zip(questions, answers, strict=True):
        encoded = encode_qa(tokenizer, question, answer)
        n_context = len(encoded.input_ids) - encoded.n_answer_tokens
        sequences.append(
            ScoredSequence(
                context_ids=encoded.input_ids[:n_context], target_ids=encoded.input_ids[n_context:]
            )
        )
    return sequences


def _vocab_moments(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the log-probabilities under their own distribution, per row."""
    probs = log_probs.exp()
    mean = (probs * log_probs).sum(dim=-1)
    return mean, (probs * log_probs.square()).sum(dim=-1) - mean.square()


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
    """Teacher-forced statistics of every sequence's target tokens, one right-padded forward pass per batch.

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
    lengths = [len(sequence.context_ids) + len(sequence.target_ids) for sequence in sequences]
    device = model_device(model)

    def keep(index: int, log_probs, matches, moments) -> None:
        label_log_probs[index] = log_probs.numpy()
        argmax_matches[index] = matches.numpy()
        if moments is not None:
            means[index], variances[index] = moments[0].numpy(), moments[1].numpy()

    with evaluation_mode(model):
        for batch_indices in length_sorted_batches(lengths, batch_size):
            batch = [sequences[index] for index in batch_indices]
            input_ids, labels, attention_mask = pad_right(
                [sequence.context_ids + sequence.target_ids for sequence in batch],
                [[IGNORE_INDEX] * len(sequence.context_ids) + sequence.target_ids for sequence in batch],
                pad_token_id,
            )
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            # Position t predicts token t+1; only the target positions go to fp32 and through the log-softmax.
            shifted_labels = labels[:, 1:].to(device)
            if row_by_row:
                for row, index in enumerate(batch_indices):
                    scored = shifted_labels[row] != IGNORE_INDEX
                    row_logits = logits[row, :-1][scored].float()
                    targets = shifted_labels[row][scored]
                    log_probs = torch.log_softmax(row_logits, dim=-1)
                    moments = _vocab_moments(log_probs) if with_vocab_moments else None
                    keep(
                        index,
                        log_probs.gather(1, targets.unsqueeze(1)).squeeze(1).double().cpu(),
                        (row_logits.argmax(dim=-1) == targets).cpu(),
                        None if moments is None else [moment.double().cpu() for moment in moments],
                    )
            else:
                labelled = shifted_labels != IGNORE_INDEX
                selected_logits = logits[:, :-1, :][labelled].float()  # (n_labelled, vocab), row by row
                targets = shifted_labels[labelled]
                log_probs = torch.log_softmax(selected_logits, dim=-1)
                counts = labelled.sum(dim=1).tolist()
                per_row = [
                    torch.split(log_probs.gather(1, targets.unsqueeze(1)).squeeze(1).double().cpu(), counts),
                    torch.split((selected_logits.argmax(dim=-1) == targets).cpu(), counts),
                ]
                if with_vocab_moments:
                    per_row += [
                        torch.split(moment.double().cpu(), counts) for moment in _vocab_moments(log_probs)
                    ]
                for row, index in enumerate(batch_indices):
                    moments = (per_row[2][row], per_row[3][row]) if with_vocab_moments else None
                    keep(index, per_row[0][row], per_row[1][row], moments)
            if on_batch is not None:
                on_batch(len(batch_indices))

    return AnswerTokenStatistics(
        label_log_probs=label_log_probs,
        argmax_matches=argmax_matches,
        vocab_log_prob_means=means if with_vocab_moments else None,
        vocab_log_prob_variances=variances if with_vocab_moments else None,
        tokens_processed=sum(lengths),
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
