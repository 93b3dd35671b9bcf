"""The in-memory counterparts of combine_checkpoints: update a loaded model in place, and difference vectors of state
dicts (task arithmetic's StateVector). Both use the tensor arithmetic of tensor_arithmetic.py, so that their results
are bit-identical to the streamed on-disk combination.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from msa_bench.arithmetic.checkpoint_files import check_same_tensor_kind, key_mismatch_message
from msa_bench.arithmetic.tensor_arithmetic import (
    apply_differences,
    squared_norm,
    state_difference,
    validate_coefficient,
    validate_compute_dtype,
)
from msa_bench.errors import StateArithmeticError


def _updatable_tensors(model: torch.nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Return the tensors to update (tied ones once) and a map from every state_dict name to its owner.

    ``named_parameters`` yields a tied parameter once, while ``state_dict`` lists it under each of
    its names, so the latter's extra names are resolved to the canonical one by object identity.
    """
    state = model.state_dict(keep_vars=True)
    updatable: dict[str, Tensor] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name in state:  # non-persistent buffers are not part of a checkpoint
            updatable[name] = tensor
    owner_by_identity = {id(tensor): name for name, tensor in updatable.items()}
    canonical = {name: owner_by_identity[id(tensor)] for name, tensor in state.items()}
    return updatable, canonical


def _resolve_state(
    state: Mapping[str, Tensor],
    label: str,
    updatable: Mapping[str, Tensor],
    canonical: Mapping[str, str],
) -> dict[str, Tensor]:
    """Map ``state`` onto the canonical tensor names, with strict name/shape/dtype checks."""
    unexpected = sorted(set(state) - set(canonical))
    resolved: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name in unexpected:
            continue
        owner = canonical[name]
        if owner in resolved and not torch.equal(resolved[owner], tensor):
            raise StateArithmeticError(f"{label}: tied tensors {owner!r} and {name!r} have different values")
        resolved[owner] = tensor
    missing = sorted(set(updatable) - set(resolved))
    if missing or unexpected:
        raise StateArithmeticError(key_mismatch_message(label, "the model", missing, unexpected))
    for name, expected in updatable.items():
        check_same_tensor_kind(name, resolved[name], label, expected, "the model")
    return resolved


def apply_deltas_in_place(
    model: torch.nn.Module,
    deltas: Sequence[tuple[float, Mapping[str, Tensor], Mapping[str, Tensor]]],
    *,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Update ``model`` to ``model + Σ coefficient·(finetuned − base)``; same result as combine_checkpoints.

    ``deltas`` holds ``(coefficient, finetuned_state, base_state)`` triples. A state may list tied
    tensors under one or all of their names; tied weights are updated once either way. All states
    are validated before the model is touched. Returns ``n_tensors`` and ``delta_norms``.
    """
    validate_compute_dtype(compute_dtype)
    updatable, canonical = _updatable_tensors(model)
    coefficients = [
        validate_coefficient(coefficient, f"delta {i}") for i, (coefficient, _, _) in enumerate(deltas)
    ]
    active = []
    for i, (_, finetuned, base) in enumerate(deltas):
        if coefficients[i] == 0.0:
            continue
        finetuned = _resolve_state(finetuned, f"delta {i} finetuned state", updatable, canonical)
        base = _resolve_state(base, f"delta {i} base state", updatable, canonical)
        active.append((i, coefficients[i], finetuned, base))

    squared_norms = {i: 0.0 for i, *_ in active}
    with torch.no_grad():
        for name, tensor in updatable.items():
            if not tensor.is_floating_point() or not active:
                continue
            scaled_differences = []
            for i, coefficient, finetuned, base in active:
                difference = state_difference(
                    finetuned[name].to(tensor.device), base[name].to(tensor.device), compute_dtype
                )
                squared_norms[i] += squared_norm(difference)
                scaled_differences.append((coefficient, difference))
            tensor.copy_(apply_differences(tensor.detach(), scaled_differences, compute_dtype))
    return {
        "n_tensors": len(updatable),
        "delta_norms": [
            math.sqrt(squared_norms[i]) if i in squared_norms else None for i in range(len(deltas))
        ],
    }


class StateVector(Mapping[str, Tensor]):
    """A difference of model states ``θ_a − θ_b`` over floating tensors, as in task arithmetic."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self._tensors = dict(tensors)

    @classmethod
    def between(cls, finetuned: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> StateVector:
        """``finetuned − base`` for every floating tensor (computed in at least fp32)."""
        missing = sorted(set(finetuned) - set(base))
        unexpected = sorted(set(base) - set(finetuned))
        if missing or unexpected:
            raise StateArithmeticError(
                key_mismatch_message("base state", "finetuned state", missing, unexpected)
            )
        differences = {}
        for name, tensor in finetuned.items():
            if tensor.shape != base[name].shape:
                raise StateArithmeticError(
                    f"shape mismatch for tensor {name!r}: {list(tensor.shape)} vs {list(base[name].shape)}"
                )
            if tensor.is_floating_point():
                compute_dtype = torch.promote_types(tensor.dtype, torch.float32)
                differences[name] = state_difference(tensor, base[name], compute_dtype)
        return cls(differences)

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def _check_same_names(self, other: StateVector) -> None:
        if set(self) != set(other):
            raise StateArithmeticError(
                key_mismatch_message(
                    "other state vector",
                    "this state vector",
                    sorted(set(self) - set(other)),
                    sorted(set(other) - set(self)),
                )
            )

    def __add__(self, other: StateVector) -> StateVector:
        if not isinstance(other, StateVector):
            return NotImplemented
        self._check_same_names(other)
        return StateVector({name: tensor + other[name] for name, tensor in self._tensors.items()})

    def __sub__(self, other: StateVector) -> StateVector:
        if not isinstance(other, StateVector):
            return NotImplemented
        self._check_same_names(other)
        return StateVector({name: tensor - other[name] for name, tensor in self._tensors.items()})

    def __neg__(self) -> StateVector:
        return self * -1.0

    def __mul__(self, scalar: float) -> StateVector:
        if not isinstance(scalar, int | float):
            return NotImplemented
        return StateVector({name: tensor * scalar for name, tensor in self._tensors.items()})

    __rmul__ = __mul__

    def norm(self) -> float:
        """L2 norm over all tensors."""
        return math.sqrt(sum(squared_norm(tensor) for tensor in self._tensors.values()))

    def apply_to(self, state_dict: Mapping[str, Tensor], scale: float = 1.0) -> dict[str, Tensor]:
        """Return a new state dict ``state_dict + scale·self``; non-floating tensors are passed through."""
        scale = validate_coefficient(scale, "apply_to")
        floating = {name for name, tensor in state_dict.items() if tensor.is_floating_point()}
        if floating != set(self):
            raise StateArithmeticError(
                key_mismatch_message(
                    "state dict", "state vector", sorted(set(self) - floating), sorted(floating - set(self))
                )
            )
        result = {}
        for name, tensor in state_dict.items():
            if name in self._tensors:
                vector = self._tensors[name]
                if vector.shape != tensor.shape:
                    raise StateArithmeticError(
                        f"shape mismatch for tensor {name!r}: state dict has {list(tensor.shape)}, "
                        f"state vector has {list(vector.shape)}"
                    )
                updated = tensor.to(vector.dtype) + scale * vector.to(tensor.device)
                result[name] = updated.to(tensor.dtype)
            else:
                result[name] = tensor
        return result

    def __repr__(self) -> str:
        return f"StateVector({len(self)} tensors, norm={self.norm():.4g})"
