"""Model State Arithmetic: combine checkpoints as ``target + Σ coefficient·(finetuned − base)``.

MSA unlearning is ``θ_unlearn = θ_D − α(θ1 − θ0) + β(θ2 − θ0)``::

    combine_checkpoints(theta_d, [StateDelta(-alpha, theta_1, theta_0), StateDelta(beta, theta_2, theta_0)], out)

and task arithmetic is ``[StateDelta(-alpha, theta_d_finetuned, theta_d)]``.

:func:`combine_checkpoints` works on Hugging Face model directories (safetensors, single file or
sharded) and streams tensor by tensor, so peak memory stays near one output shard instead of four
models. :func:`apply_deltas_in_place` and :class:`StateVector` are the in-memory counterparts.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from msa_bench.arithmetic.checkpoint_files import (
    SHARDED_INDEX_NAME,
    CheckpointLayout,
    check_compatible,
    check_same_tensor_kind,
    check_tokenizers_match,
    copy_non_weight_files,
    key_mismatch_message,
    read_layout,
    remove_stale_weights,
)
from msa_bench.arithmetic.low_rank import LowRankDelta
from msa_bench.arithmetic.non_finite import refuse_non_finite
from msa_bench.errors import CheckpointNotFoundError, StateArithmeticError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateDelta:
    """Contributes ``coefficient · (finetuned − base)`` to the combined checkpoint."""

    coefficient: float
    finetuned: Path
    base: Path


# --------------------------------------------------------------------------------------------------
# Shared tensor arithmetic: both the on-disk and the in-memory path use these two functions, so they
# produce bit-identical results.


def _difference(finetuned: Tensor, base: Tensor, compute_dtype: torch.dtype) -> Tensor:
    return finetuned.to(compute_dtype) - base.to(compute_dtype)


def _apply_differences(
    target: Tensor, scaled_differences: Sequence[tuple[float, Tensor]], compute_dtype: torch.dtype
) -> Tensor:
    """Return ``target + Σ coefficient·difference`` in the target's dtype (target itself if no update)."""
    if not target.is_floating_point() or not scaled_differences:
        return target
    accumulator = target.to(compute_dtype, copy=True)
    for coefficient, difference in scaled_differences:
        accumulator += coefficient * difference
    return accumulator.to(target.dtype)


def _squared_norm(difference: Tensor) -> float:
    # float64 accumulation: summing millions of fp32 squares loses digits otherwise.
    return float(torch.linalg.vector_norm(difference, dtype=torch.float64) ** 2)


def _validate_coefficient(coefficient: float, label: str) -> float:
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


def _validate_compute_dtype(compute_dtype: torch.dtype) -> None:
    if not compute_dtype.is_floating_point:
        raise StateArithmeticError(f"compute_dtype must be a floating dtype, got {compute_dtype}")


class _TensorReader:
    """Reads single tensors from checkpoints, keeping one open (memory-mapped) handle per file."""

    def __init__(self, exit_stack: ExitStack) -> None:
        self._exit_stack = exit_stack
        self._handles: dict[Path, Any] = {}

    def read(self, layout: CheckpointLayout, name: str) -> Tensor:
        path = layout.directory / layout.tensors[name].file_name
        handle = self._handles.get(path)
        if handle is None:
            handle = self._exit_stack.enter_context(safe_open(str(path), framework="pt"))
            self._handles[path] = handle
        return handle.get_tensor(name)


def combine_checkpoints(
    target: Path,
    deltas: Sequence[StateDelta | LowRankDelta],
    out_dir: Path,
    *,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Write ``target + Σ coefficient·(finetuned − base)`` as a Hugging Face model directory.

    Every checkpoint is validated (tensor names, shapes, dtypes) before anything is written. Deltas
    with coefficient 0 are skipped entirely (never opened). Float tensors are computed in
    ``compute_dtype`` (see :func:`arithmetic_dtype`) and cast back to the target's dtype; other tensors
    are copied from the target. The output keeps the target's shard layout and non-weight files
    (config, tokenizer, ...). A computed tensor holding NaN or inf raises NonFiniteWeightsError before its shard is
    written (earlier shards of a sharded output stay: build into a temporary folder, as the artifact store does).

    Memory: the output is written one target shard at a time. While a shard is built, the finished
    tensors of that shard are held, plus, for the tensor being computed, that one tensor of each
    input checkpoint and one ``compute_dtype`` difference per delta. Inputs are read tensor by tensor
    from safetensors files opened for that output shard only (closed before the next shard), so each
    input contributes just the tensors of the output shard at hand, whatever the inputs' layout.

    Returns a report: ``output``, ``n_tensors``, ``n_files``, ``delta_norms`` (L2 norm of
    ``finetuned − base`` over all float tensors per delta, ``None`` for skipped ones), ``deltas`` and
    ``seconds``.
    """
    started = time.perf_counter()
    _validate_compute_dtype(compute_dtype)
    target = Path(target)
    out_dir = Path(out_dir)
    coefficients = [_validate_coefficient(delta.coefficient, f"delta {i}") for i, delta in enumerate(deltas)]
    # (index, coefficient, resolved finetuned dir, resolved base dir) of the deltas actually applied.
    active = [
        (i, coefficient, Path(deltas[i].finetuned).resolve(), Path(deltas[i].base).resolve())
        for i, coefficient in enumerate(coefficients)
        if coefficient != 0.0
    ]

    check_tokenizers_match(target, [path for _, _, ft, base in active for path in (ft, base)])
    target_layout = read_layout(target)
    resolved_target = target.resolve()
    layouts: dict[Path, CheckpointLayout] = {resolved_target: target_layout}
    # LoRA seam 1 of 2 (low_rank.py): a LowRankDelta reads its adapter (checked here), no fine-tuned model.
    low_rank = {i: deltas[i].load(target_layout) for i, *_ in active if isinstance(deltas[i], LowRankDelta)}
    for i, _, resolved_finetuned, resolved_base in active:
        if i in low_rank:
            continue
        # Read from the given path so that error messages name what the caller passed.
        for given, resolved in ((deltas[i].finetuned, resolved_finetuned), (deltas[i].base, resolved_base)):
            if resolved not in layouts:
                layouts[resolved] = read_layout(Path(given))
                check_compatible(target_layout, layouts[resolved])
    if out_dir.resolve() in layouts:
        raise StateArithmeticError(
            f"out_dir {out_dir} is one of the input checkpoints; it would be overwritten"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_weights(out_dir)
    copy_non_weight_files(target, out_dir)

    squared_norms = {i: 0.0 for i, *_ in active}
    for file_name, names in target_layout.keys_by_file.items():
        # One output file at a time: peak memory is about one shard (the whole model if unsharded).
        # Input files are reopened per output file because the pages a memory-mapped handle has
        # touched stay resident until it is closed.
        with ExitStack() as exit_stack:
            reader = _TensorReader(exit_stack)
            output: dict[str, Tensor] = {}
            for name in names:
                target_tensor = reader.read(target_layout, name)
                # θ0 is usually the base of several deltas; read each checkpoint's tensor once.
                loaded: dict[Path, Tensor] = {resolved_target: target_tensor}
                if not target_tensor.is_floating_point() or not active:
                    output[name] = target_tensor
                    refuse_non_finite(output[name], name, loaded, coefficients, out_dir)
                    continue
                scaled_differences = []
                for i, coefficient, *directories in active:
                    if i in low_rank:  # LoRA seam 2 of 2: None where the adapter leaves the tensor unchanged
                        difference = low_rank[i].difference(name, compute_dtype)
                        if difference is None:
                            continue
                    else:
                        for directory in directories:
                            if directory not in loaded:
                                loaded[directory] = reader.read(layouts[directory], name)
                        pair = [loaded[directory] for directory in directories]
                        difference = _difference(pair[0], pair[1], compute_dtype)
                    squared_norms[i] += _squared_norm(difference)
                    scaled_differences.append((coefficient, difference))
                output[name] = _apply_differences(
                    target_tensor, scaled_differences, compute_dtype
                ).contiguous()
                refuse_non_finite(output[name], name, loaded, coefficients, out_dir)
            save_file(output, str(out_dir / file_name), metadata=target_layout.metadata_by_file[file_name])
            del output

    if target_layout.index is not None:
        (out_dir / SHARDED_INDEX_NAME).write_text(
            json.dumps(target_layout.index, indent=2, sort_keys=True) + "\n"
        )

    delta_norms = [math.sqrt(squared_norms[i]) if i in squared_norms else None for i in range(len(deltas))]
    seconds = time.perf_counter() - started
    logger.info(
        "combined %d tensors from %s into %s in %.2fs", len(target_layout.tensors), target, out_dir, seconds
    )
    return {
        "output": str(out_dir),
        "n_tensors": len(target_layout.tensors),
        "n_files": len(target_layout.keys_by_file),
        "delta_norms": delta_norms,
        "deltas": [
            {
                "coefficient": coefficients[i],
                "finetuned": str(delta.finetuned),
                "base": str(delta.base),
                "delta_norm": delta_norms[i],
                "skipped": i not in squared_norms,
            }
            for i, delta in enumerate(deltas)
        ],
        "seconds": seconds,
    }


# --------------------------------------------------------------------------------------------------
# In-memory models


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
    _validate_compute_dtype(compute_dtype)
    updatable, canonical = _updatable_tensors(model)
    coefficients = [
        _validate_coefficient(coefficient, f"delta {i}") for i, (coefficient, _, _) in enumerate(deltas)
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
                difference = _difference(
                    finetuned[name].to(tensor.device), base[name].to(tensor.device), compute_dtype
                )
                squared_norms[i] += _squared_norm(difference)
                scaled_differences.append((coefficient, difference))
            tensor.copy_(_apply_differences(tensor.detach(), scaled_differences, compute_dtype))
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
                differences[name] = _difference(tensor, base[name], compute_dtype)
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
        return math.sqrt(sum(_squared_norm(tensor) for tensor in self._tensors.values()))

    def apply_to(self, state_dict: Mapping[str, Tensor], scale: float = 1.0) -> dict[str, Tensor]:
        """Return a new state dict ``state_dict + scale·self``; non-floating tensors are passed through."""
        scale = _validate_coefficient(scale, "apply_to")
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
