"""Teacher-forced NLL of answers given questions, batched.

Each (question, answer) pair is tokenized with `encode_qa`, so the scored tokens are exactly the ones training puts
the loss on: the answer tokens and the closing eos.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msa_bench.data.batching import IGNORE_INDEX, pad_right
from msa_bench.data.formatting import encode_qa


@dataclass(frozen=True)
class AnswerScores:
    nlls: np.ndarray  # mean per-token NLL of each answer, in input order
    n_answer_tokens: np.ndarray  # scored tokens per answer (answer tokens + eos)
    tokens_processed: int  # non-padding tokens fed through the model, for FLOP estimates


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration, restoring the caller's train/eval state afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (longest first), so padding is small and an out-of-memory shows up early."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


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
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token for batched scoring")
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
            # fp32 so bf16 models do not lose precision in the log-softmax.
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
