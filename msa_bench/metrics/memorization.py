"""Teacher-forced token statistics of answers, and the memorisation metrics built on them.

One batched forward pass over (question, answer) pairs, tokenized with `encode_qa` exactly like `scoring.py`, gives per
answer token: the log-probability of the label, whether the teacher-forced argmax equals the label, and (optionally)
the mean and variance of the log-probability over the vocabulary at that position (for min-k%++ in `mia.py`).

Extraction strength and exact memorisation follow open-unlearning: they read the answer tokens without the closing eos
(open-unlearning drops the last labelled token, the end-of-turn marker). Extraction strength is 1 - k/L with k the
smallest prefix length whose remaining suffix the argmax predictions reproduce; when even the last token is wrong the
only such suffix is the empty one, k = L and ES = 0 (open-unlearning's loop stops at k = L - 1, reporting 1/L there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from msa_bench.data.batching import pad_right
from msa_bench.data.formatting import encode_qa
from msa_bench.metrics.scoring import IGNORE_INDEX, evaluation_mode, length_sorted_batches, model_device


@dataclass(frozen=True)
class AnswerTokenStatistics:
    """Per answer, arrays over its labelled tokens (answer tokens, then the closing eos), in input order."""

    label_log_probs: list[np.ndarray]  # log P(label | prefix)
    argmax_matches: list[np.ndarray]  # bool: the teacher-forced argmax prediction equals the label
    # Mean and variance of log P(v | prefix) under P(v | prefix) over the vocabulary; None unless requested.
    vocab_log_prob_means: list[np.ndarray] | None
    vocab_log_prob_variances: list[np.ndarray] | None
    tokens_processed: int  # non-padding tokens fed through the model

    def __len__(self) -> int:
        return len(self.label_log_probs)

    def answer_nlls(self) -> np.ndarray:
        """Mean NLL over every labelled token (eos included): the same quantity as `scoring.score_answers`."""
        return np.array([-log_probs.mean() for log_probs in self.label_log_probs], dtype=np.float64)


def without_eos(per_token: np.ndarray) -> np.ndarray:
    """The answer tokens of one item's labelled tokens, dropping the closing eos (the last one)."""
    return per_token[:-1]


def answer_token_statistics(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    with_vocab_moments: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> AnswerTokenStatistics:
    """Teacher-forced statistics of each answer's tokens given its question, one forward pass per batch.

    `with_vocab_moments` adds the mean and variance of the vocabulary log-probabilities at each answer position
    (min-k%++ needs them). `on_batch(n_items)` is called after every batch (for progress bars).
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token for batched scoring")
    encoded = [
        encode_qa(tokenizer, question, answer) for question, answer in zip(questions, answers, strict=True)
    ]
    empty = [index for index, item in enumerate(encoded) if item.n_answer_tokens < 2]
    if empty:
        raise ValueError(f"answers {empty} have no token besides the closing eos")

    label_log_probs: list[np.ndarray | None] = [None] * len(encoded)
    argmax_matches: list[np.ndarray | None] = [None] * len(encoded)
    means: list[np.ndarray | None] = [None] * len(encoded)
    variances: list[np.ndarray | None] = [None] * len(encoded)
    device = model_device(model)

    with evaluation_mode(model):
        for batch_indices in length_sorted_batches([len(item.input_ids) for item in encoded], batch_size):
            batch = [encoded[index] for index in batch_indices]
            input_ids, labels, attention_mask = pad_right(
                [item.input_ids for item in batch], [item.labels for item in batch], tokenizer.pad_token_id
            )
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            # Position t predicts token t+1. Keep only the labelled positions before going to fp32 and taking the
            # log-softmax over the vocabulary, so the full (batch, length, vocab) tensor is never copied.
            shifted_labels = labels[:, 1:].to(device)
            labelled = shifted_labels != IGNORE_INDEX
            selected_logits = logits[:, :-1, :][labelled].float()  # (n_labelled, vocab), row by row
            targets = shifted_labels[labelled]
            log_probs = torch.log_softmax(selected_logits, dim=-1)
            batch_label_log_probs = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
            batch_matches = selected_logits.argmax(dim=-1) == targets
            counts = labelled.sum(dim=1).tolist()
            per_row = [
                torch.split(batch_label_log_probs.double().cpu(), counts),
                torch.split(batch_matches.cpu(), counts),
            ]
            if with_vocab_moments:
                probs = log_probs.exp()
                mean = (probs * log_probs).sum(dim=-1)
                variance = (probs * log_probs.square()).sum(dim=-1) - mean.square()
                per_row += [
                    torch.split(mean.double().cpu(), counts),
                    torch.split(variance.double().cpu(), counts),
                ]
            for row, index in enumerate(batch_indices):
                label_log_probs[index] = per_row[0][row].numpy()
                argmax_matches[index] = per_row[1][row].numpy()
                if with_vocab_moments:
                    means[index] = per_row[2][row].numpy()
                    variances[index] = per_row[3][row].numpy()
            if on_batch is not None:
                on_batch(len(batch))

    return AnswerTokenStatistics(
        label_log_probs=label_log_probs,
        argmax_matches=argmax_matches,
        vocab_log_prob_means=means if with_vocab_moments else None,
        vocab_log_prob_variances=variances if with_vocab_moments else None,
        tokens_processed=sum(len(item.input_ids) for item in encoded),
    )


def extraction_strength(argmax_matches: np.ndarray) -> float:
    """1 - k/L, k the smallest prefix length such that the argmax predictions reproduce the rest of the answer.

    `argmax_matches` are one answer's per-token matches (eos excluded, see `without_eos`).
    """
    matches = np.asarray(argmax_matches, dtype=bool)
    if matches.ndim != 1 or matches.size == 0:
        raise ValueError(
            f"extraction strength needs a non-empty 1-D array of matches, got shape {matches.shape}"
        )
    n_tokens = matches.size
    mismatches = np.flatnonzero(~matches)
    # The matching suffix starts right after the last mismatch; with no mismatch the whole answer matches.
    prefix_length = 0 if mismatches.size == 0 else int(mismatches[-1]) + 1
    return 1.0 - prefix_length / n_tokens


def exact_memorization(argmax_matches: np.ndarray) -> float:
    """Share of one answer's tokens (eos excluded) whose teacher-forced argmax prediction is the label."""
    matches = np.asarray(argmax_matches, dtype=bool)
    if matches.ndim != 1 or matches.size == 0:
        raise ValueError(
            f"exact memorisation needs a non-empty 1-D array of matches, got shape {matches.shape}"
        )
    return float(matches.mean())


def extraction_strengths(statistics: AnswerTokenStatistics) -> np.ndarray:
    """Per item extraction strength over the answer tokens (eos excluded)."""
    return np.array(
        [extraction_strength(without_eos(m)) for m in statistics.argmax_matches], dtype=np.float64
    )


def exact_memorizations(statistics: AnswerTokenStatistics) -> np.ndarray:
    """Per item exact memorisation over the answer tokens (eos excluded)."""
    return np.array([exact_memorization(without_eos(m)) for m in statistics.argmax_matches], dtype=np.float64)
