"""The tensor arithmetic that on-disk (combine_checkpoints) and in-memory (apply_deltas_in_place, StateVector) state
arithmetic share, so that both give bit-identical results: the difference of two tensors, the weighted sum onto the
target, the squared norm, and the checks of coefficients and compute dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from msa_bench.errors import StateArithmeticError


def state_difference(finetuned: Tensor, base: Tensor, compute_dtype: torch.dtype) -> Tensor:
    return finetuned.to(compute_dtype) - base.to(compute_dtype)


def apply_differences(
    target: Tensor, scaled_differences: Sequence[tuple[float, Tensor]], compute_dtype: torch.dtype
) -> Tensor:
    """Return ``target + Σ coefficient·difference`` in the target's dtype (target itself if no update)."""
    if not target.is_floating_point() or not scaled_differences:
        return target
    accumulator = target.to(compute_dtype, copy=True)
    for coefficient, difference in scaled_differences:
        accumulator += coefficient * difference
    return accumulator.to(target.dtype)


def squared_norm(difference: Tensor) -> float:
    # float64 accumulation: summing millions of fp32 squares loses digits otherwise.
    return float(torch.linalg.vector_norm(difference, dtype=torch.float64) ** 2)


def validate_coefficient(coefficient: float, label: str) -> float:
    try:
        value = float(coefficient)
    except (TypeError, ValueError) as error:
        raise StateArithmeticError(f"{label}: coefficient {coefficient!r} is not a number") from error
    if not math.isfinite(value):
        raise StateArithmeticError(f"{label}: coefficient must be finite, got {value}")
    return value


# model.arithmetic_dtype values. float16 is left out on purpose: its range (max ~65504) is too narrow for the
# difference of two checkpoints scaled by a coefficient, and its use would give no memory advantage over bfloat16.
ARITHMETIC_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def arithmetic_dtype(name: str) -> torch.dtype:
    """The torch dtype that ``model.arithmetic_dtype`` names, for ``compute_dtype`` of the functions here.

    float32 (the default) computes every difference and sum in fp32 and rounds once, when the result is cast back to
    the target's dtype. bfloat16 halves the memory of the per-tensor temporaries and rounds every intermediate to bf16
    (8 significant bits); use it only when fp32 temporaries of the largest tensor do not fit.
    """
    if isinstance(name, str) and name in ARITHMETIC_DTYPES:
        return ARITHMETIC_DTYPES[name]
    raise StateArithmeticError(
        f"model.arithmetic_dtype={name!r} is not supported; valid values: {', '.join(ARITHMETIC_DTYPES)}"
    )


def validate_compute_dtype(compute_dtype: torch.dtype) -> None:
    if not compute_dtype.is_floating_point:
        raise StateArithmeticError(f"compute_dtype must be a floating dtype, got {compute_dtype}")
