"""How the core runs a model over many sequences: on the model's device, in eval mode without autograd, in batches
of similar length, within the model's context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

# tokenizer.model_max_length is set to a huge sentinel (1e30) when a tokenizer declares no limit.
_NO_TOKENIZER_LIMIT = 1_000_000


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


def model_context_length(model: torch.nn.Module, tokenizer) -> int:
    """The longest token sequence the model (and its tokenizer) are meant for."""
    limits = [
        getattr(model.config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    limits = [int(limit) for limit in limits if limit is not None and limit < _NO_TOKENIZER_LIMIT]
    if not limits:
        raise ValueError(
            "cannot tell the model's context length: no max_position_embeddings or model_max_length"
        )
    return min(limits)
