"""Why a tensor that state arithmetic computed holds NaN or inf, as the error that stops the output being written.

Two causes, told apart by looking at the inputs' copies of that one tensor (only once the output is known to be bad,
so the common path checks the output alone): an input checkpoint that already holds non-finite values (a corrupt or
diverged model: rebuild it), or finite inputs whose weighted sum overflows the output's dtype (coefficients too
large).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from msa_bench.errors import NonFiniteWeightsError
from msa_bench.models.finite import NonFiniteTensor, non_finite_tensor


def refuse_non_finite(
    tensor: torch.Tensor,
    name: str,
    inputs: Mapping[Path, torch.Tensor],
    coefficients: Sequence[float],
    out_dir: Path,
) -> None:
    """Raise NonFiniteWeightsError when the computed `tensor` holds NaN or inf, before its shard is written: the
    output would otherwise enter the cache as a finished model. `inputs`: that tensor of each checkpoint read."""
    bad = non_finite_tensor(name, tensor)
    if bad is not None:
        raise non_finite_output_error(bad, tensor.dtype, inputs, coefficients, out_dir)


def non_finite_output_error(
    bad: NonFiniteTensor,
    dtype: torch.dtype,
    inputs: Mapping[Path, torch.Tensor],
    coefficients: Sequence[float],
    out_dir: Path,
) -> NonFiniteWeightsError:
    """The error for output tensor `bad` (of `dtype`), given that tensor of each input checkpoint read for it."""
    refused = f"state arithmetic into {out_dir}: the combined {bad.describe()}; nothing was written"
    for directory, tensor in inputs.items():
        bad_input = non_finite_tensor(bad.name, tensor)
        if bad_input is not None:
            return NonFiniteWeightsError(
                f"{refused}. The input checkpoint {directory} already holds non-finite values: its "
                f"{bad_input.describe()}. That model is corrupt or diverged: rebuild it (delete its cache entry, "
                "or lower the learning_rate of the recipe that trained it)"
            )
    largest = torch.finfo(dtype).max
    return NonFiniteWeightsError(
        f"{refused}. The inputs are finite, so target + Σ coefficient·(finetuned − base) with coefficients "
        f"{list(coefficients)} overflows {str(dtype).removeprefix('torch.')} (largest value {largest:.4g}): "
        "lower the coefficients (method.alpha, method.beta)"
    )
