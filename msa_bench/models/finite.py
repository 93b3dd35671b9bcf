"""Finding NaN and inf in model weights before they are written, so that no non-finite model enters the cache.

One `torch.isfinite(...).all()` per floating tensor, stopping at the first bad one; only that tensor's NaN and inf
values are then counted. Integer tensors (buffers such as position ids) cannot hold NaN and are not looked at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NonFiniteTensor:
    """A tensor with NaN or inf values: its name and how many of its values are which."""

    name: str
    n_nan: int
    n_inf: int
    numel: int

    def describe(self) -> str:
        return f"tensor {self.name!r} holds {self.n_nan} NaN and {self.n_inf} inf of its {self.numel} values"


def non_finite_tensor(name: str, tensor: torch.Tensor) -> NonFiniteTensor | None:
    """`tensor`'s NaN and inf counts, or None when it is finite (or not floating)."""
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
        return None
    return NonFiniteTensor(
        name=name,
        n_nan=int(torch.isnan(tensor).sum()),
        n_inf=int(torch.isinf(tensor).sum()),
        numel=tensor.numel(),
    )


def first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> NonFiniteTensor | None:
    """The first tensor, in the given order, that holds NaN or inf; None when all are finite."""
    for name, tensor in named_tensors:
        found = non_finite_tensor(name, tensor)
        if found is not None:
            return found
    return None
