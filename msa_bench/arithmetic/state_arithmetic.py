"""Model State Arithmetic: combine checkpoints as ``target + Σ coefficient·(finetuned − base)``.

MSA unlearning is ``θ_unlearn = θ_D − α(θ1 − θ0) + β(θ2 − θ0)``::

    combine_checkpoints(theta_d, [StateDelta(-alpha, theta_1, theta_0), StateDelta(beta, theta_2, theta_0)], out)

and task arithmetic is ``[StateDelta(-alpha, theta_d_finetuned, theta_d)]``.

:func:`combine_checkpoints` works on Hugging Face model directories (safetensors, single file or sharded) and
streams a slice of a tensor at a time, so peak memory stays near one such slice instead of four models
(docs/memory.md, "Model-state arithmetic"). :func:`apply_deltas_in_place` and :class:`StateVector` (in_memory.py) are
the in-memory counterparts.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from msa_bench.arithmetic.checkpoint_files import (
    SHARDED_INDEX_NAME,
    CheckpointLayout,
    ChunkReader,
    check_compatible,
    check_tokenizers_match,
    copy_non_weight_files,
    read_layout,
    remove_stale_weights,
)
from msa_bench.arithmetic.difference_transforms import DifferenceTransform, TensorChunks
from msa_bench.arithmetic.in_memory import StateVector, apply_deltas_in_place  # noqa: F401  (re-exported)
from msa_bench.arithmetic.low_rank import LowRankDelta, LowRankFactors
from msa_bench.arithmetic.non_finite import refuse_non_finite
from msa_bench.arithmetic.safetensors_stream import (
    RowChunk,
    StreamingSafetensorsWriter,
    row_chunks,
    rows_of,
    torch_dtype,
)
from msa_bench.arithmetic.tensor_arithmetic import (  # noqa: F401  (arithmetic_dtype re-exported)
    ARITHMETIC_DTYPES,
    apply_differences,
    arithmetic_dtype,
    squared_norm,
    state_difference,
    validate_coefficient,
    validate_compute_dtype,
)
from msa_bench.errors import CheckpointNotFoundError, StateArithmeticError  # noqa: F401  (re-exported)
from msa_bench.models.finite import non_finite_tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateDelta:
    """Contributes ``coefficient · (finetuned − base)`` to the combined checkpoint."""

    coefficient: float
    finetuned: Path
    base: Path


# The values of one tensor computed at a time (whole rows of it, at least one row): each per-checkpoint read of a
# chunk and each compute_dtype temporary is about this many values. 2**20 keeps the working set of an MSA combination
# (four inputs, two fp32 differences, the fp32 sum, float64 for the norm, the output) near 50 MB whatever the model's
# size. Smaller chunks were up to 5 times slower on a loaded 2-core machine (each torch op is one parallel region,
# and more of them wait longer for descheduled threads).
CHUNK_ELEMENTS = 1 << 20


def term_difference(
    term: StateDelta | LowRankFactors,
    name: str,
    chunk: RowChunk,
    reader: ChunkReader,
    compute_dtype: torch.dtype,
) -> Tensor | None:
    """The rows ``chunk`` of ``finetuned − base`` that ``term`` contributes to tensor ``name``, in compute_dtype.

    The one place where a term's difference is made: combine_checkpoints multiplies it by the term's coefficient and
    adds it to the target, and sums its squared norm into the report. A low-rank term (LoRA factors, read by
    LowRankDelta.load) gives ``scale · B[rows] @ A``, or None for a tensor its adapter leaves unchanged.
    """
    if isinstance(term, LowRankFactors):
        return term.difference(name, compute_dtype, slice(chunk.start, chunk.stop))
    finetuned = reader.read(term.finetuned, name, chunk)
    base = reader.read(term.base, name, chunk)
    return state_difference(finetuned, base, compute_dtype)


def _term_differences(
    name: str,
    chunk: RowChunk,
    reader: ChunkReader,
    terms: Sequence[tuple[int, float, StateDelta | LowRankFactors]],
    compute_dtype: torch.dtype,
) -> dict[int, Tensor]:
    """Each term's difference over rows ``chunk`` of tensor ``name``, by term index (absent: the term leaves it)."""
    differences = {}
    for i, _, term in terms:
        difference = term_difference(term, name, chunk, reader, compute_dtype)
        if difference is not None:
            differences[i] = difference
    return differences


def _combine_chunk(
    name: str,
    chunk: RowChunk,
    reader: ChunkReader,
    target: Path,
    active: Sequence[tuple[int, float, StateDelta | LowRankFactors]],
    compute_dtype: torch.dtype,
    transform: DifferenceTransform,
) -> tuple[Tensor, dict[int, float]]:
    """Rows ``chunk`` of the combined tensor ``name``, and each active term's squared difference norm over them (of
    the difference as the term gives it, before ``transform``)."""
    target_rows = reader.read(target, name, chunk)
    if not target_rows.is_floating_point() or not active:
        return target_rows, {}
    differences = _term_differences(name, chunk, reader, active, compute_dtype)
    squared_norms = {i: squared_norm(difference) for i, difference in differences.items()}
    terms = [(i, coefficient, differences[i]) for i, coefficient, _ in active if i in differences]
    changed = transform.apply_rows(name, slice(chunk.start, chunk.stop), terms)
    # A term of coefficient 0 is here only for the transform to read: adding 0·difference could still change bits
    # (−0.0 + 0.0 is +0.0), so it is left out of the sum.
    added = [pair for (_, coefficient, _), pair in zip(terms, changed, strict=True) if coefficient != 0.0]
    return apply_differences(target_rows, added, compute_dtype), squared_norms


def _observe_tensor(
    name: str,
    layout: CheckpointLayout,
    reader: ChunkReader,
    active: Sequence[tuple[int, float, StateDelta | LowRankFactors]],
    compute_dtype: torch.dtype,
    transform: DifferenceTransform,
) -> None:
    """Stream the differences of the terms ``transform`` observes over every chunk of floating tensor ``name``."""
    info = layout.tensors[name]
    if not torch_dtype(info.dtype, name, layout.directory).is_floating_point:
        return
    observed = [term for term in active if term[0] in transform.observed_terms]
    chunks = row_chunks(info.shape, CHUNK_ELEMENTS)
    differences = (_term_differences(name, c, reader, observed, compute_dtype) for c in chunks)
    transform.observe(name, TensorChunks(math.prod(info.shape), differences))


def combine_checkpoints(
    target: Path,
    deltas: Sequence[StateDelta | LowRankDelta],
    out_dir: Path,
    *,
    compute_dtype: torch.dtype = torch.float32,
    transform: DifferenceTransform | None = None,
) -> dict[str, Any]:
    """Write ``target + Σ coefficient·(finetuned − base)`` as a Hugging Face model directory.

    Every checkpoint is validated (tensor names, shapes, dtypes) before anything is written. Deltas
    with coefficient 0 are skipped entirely (never opened), unless ``transform`` observes them: those are read and
    handed to the transform but never added. Float tensors are computed in
    ``compute_dtype`` (see :func:`arithmetic_dtype`) and cast back to the target's dtype; other tensors
    are copied from the target. The output keeps the target's shard layout and non-weight files
    (config, tokenizer, ...), and each weights file has the bytes ``safetensors.torch.save_file`` would write. A
    computed tensor holding NaN or inf raises NonFiniteWeightsError before its shard appears (earlier shards of a
    sharded output stay: build into a temporary folder, as the artifact store does).

    Memory: the output is streamed. Each tensor is computed :data:`CHUNK_ELEMENTS` values (whole rows) at a time from
    plain reads of those rows of every input, and written to the output shard at once (the shard's header is written
    first, from the target's layout). Peak memory is the interpreter plus one chunk's working set, whatever the
    model's or shard's size; only when a tensor turns out non-finite is that whole tensor recomputed, to name its
    NaN and inf counts.

    ``transform`` (difference_transforms.py) changes the terms' differences of each chunk before they are weighted
    and summed (msa's layer scale, msa_ties, msa_projected); with its ``scope`` it first streams the differences it
    observes over each tensor just before writing it (``"tensor"``), or over the whole model before writing anything
    (``"model"``). None is plain ``Σ coefficient·(finetuned − base)``.

    Returns a report: ``output``, ``n_tensors``, ``n_files``, ``delta_norms`` (L2 norm of
    ``finetuned − base`` over all float tensors per delta, ``None`` for skipped ones), ``deltas`` and
    ``seconds``.
    """
    started = time.perf_counter()
    validate_compute_dtype(compute_dtype)
    target = Path(target)
    out_dir = Path(out_dir)
    coefficients = [validate_coefficient(delta.coefficient, f"delta {i}") for i, delta in enumerate(deltas)]
    given_transform, transform = transform, transform if transform is not None else DifferenceTransform()
    # (index, coefficient, the delta with resolved folders) of the deltas read: those applied, and those of
    # coefficient 0 that the transform observes (a direction it reads, such as msa_projected's format vector).
    active = [
        (
            i,
            coefficient,
            type(deltas[i])(coefficient, Path(deltas[i].finetuned).resolve(), Path(deltas[i].base).resolve()),
        )
        for i, coefficient in enumerate(coefficients)
        if coefficient != 0.0 or i in transform.observed_terms
    ]

    check_tokenizers_match(target, [path for *_, term in active for path in (term.finetuned, term.base)])
    target_layout = read_layout(target)
    resolved_target = target.resolve()
    layouts: dict[Path, CheckpointLayout] = {resolved_target: target_layout}
    # A LowRankDelta's adapter is read and checked against the target here; its θ0 weights are never read.
    active = [
        (i, coefficient, term.load(target_layout) if isinstance(term, LowRankDelta) else term)
        for i, coefficient, term in active
    ]
    for i, _, term in active:
        if isinstance(term, LowRankFactors):
            continue
        # Read from the given path so that error messages name what the caller passed.
        for given, resolved in ((deltas[i].finetuned, term.finetuned), (deltas[i].base, term.base)):
            if resolved not in layouts:
                layouts[resolved] = read_layout(Path(given))
                check_compatible(target_layout, layouts[resolved])
    if out_dir.resolve() in layouts:
        raise StateArithmeticError(
            f"out_dir {out_dir} is one of the input checkpoints; it would be overwritten"
        )

    if transform.scope == "model" and active:  # before anything is written: a failed pass leaves no output
        for names in target_layout.keys_by_file.values():
            with ExitStack() as open_inputs:
                reader = ChunkReader(layouts, open_inputs)
                for name in names:
                    _observe_tensor(name, target_layout, reader, active, compute_dtype, transform)

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_weights(out_dir)
    copy_non_weight_files(target, out_dir)

    squared_norms = {i: 0.0 for i, *_ in active}
    for file_name, names in target_layout.keys_by_file.items():
        entries = {
            name: (target_layout.tensors[name].dtype, target_layout.tensors[name].shape) for name in names
        }
        metadata = target_layout.metadata_by_file[file_name]
        with ExitStack() as open_inputs:  # each output shard opens the input files it needs, closed after it
            reader = ChunkReader(layouts, open_inputs)
            with StreamingSafetensorsWriter(out_dir / file_name, entries, metadata) as writer:
                for name in writer.order:
                    shape = target_layout.tensors[name].shape
                    if transform.scope == "tensor" and active:
                        _observe_tensor(name, target_layout, reader, active, compute_dtype, transform)
                    for chunk in row_chunks(shape, CHUNK_ELEMENTS):
                        rows, chunk_norms = _combine_chunk(
                            name, chunk, reader, resolved_target, active, compute_dtype, transform
                        )
                        if non_finite_tensor(name, rows) is not None:
                            # Name the counts of the whole tensor, and which input (if any) holds them.
                            whole = RowChunk(0, rows_of(shape))
                            tensor, _ = _combine_chunk(
                                name, whole, reader, resolved_target, active, compute_dtype, transform
                            )
                            refuse_non_finite(tensor, name, reader.loaded, coefficients, out_dir)
                        for i, chunk_norm in chunk_norms.items():
                            squared_norms[i] += chunk_norm
                        writer.write(name, rows)
        logger.debug("wrote %s (%d tensors)", out_dir / file_name, len(names))

    if target_layout.index is not None:
        (out_dir / SHARDED_INDEX_NAME).write_text(
            json.dumps(target_layout.index, indent=2, sort_keys=True) + "\n"
        )

    delta_norms = [math.sqrt(squared_norms[i]) if i in squared_norms else None for i in range(len(deltas))]
    seconds = time.perf_counter() - started
    logger.info(
        "combined %d tensors from %s into %s in %.2fs", len(target_layout.tensors), target, out_dir, seconds
    )
    report = {
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
    if given_transform is not None:
        report["transform"] = transform.summary()
    return report
