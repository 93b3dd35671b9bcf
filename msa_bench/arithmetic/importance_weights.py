"""msa_fisher's per-parameter weight of the forget difference, read from cached diagonal Fishers chunk by chunk.

With F_f and F_r the diagonal Fishers of the target on the forget and the retain data (training/fisher.py), each
entry's importance ratio is

    r = F_f / (F_f + F_r)        (r = 1/2 where F_f = F_r = 0: no evidence either way)

in [0, 1]: 1 where only the forget data moves the loss, 0 where only the retain data does. The weight is r over its
mean, w = r / mean(r), the mean taken over the tensor (``per_tensor``) or over every entry of every tensor the
Fishers hold (``global``), so that w averages 1 and α keeps its scale. A tensor (or model) whose r is 0 everywhere
gets w = 0: its forget difference is left out. Tensors the Fishers do not hold (buffers stored in the checkpoint, which
no gradient reaches) keep w = 1.

The Fishers are float32 safetensors with the model's tensor names; each chunk of τ_f reads the same rows of both, so
the working set grows by two float32 chunks. The means are found first by one streaming pass over a tensor's rows
(per_tensor, just before the tensor is needed) or over the whole Fishers (global, before the first tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from msa_bench.arithmetic.checkpoint_files import read_layout
from msa_bench.arithmetic.difference_transforms import DifferenceTransform, term_indices
from msa_bench.arithmetic.safetensors_stream import TensorFileReader, row_chunks
from msa_bench.errors import StateArithmeticError

NORMALIZATIONS = ("per_tensor", "global")
ROLES = ("forget", "retain")


def importance_ratio(forget: Tensor, retain: Tensor) -> Tensor:
    """F_f / (F_f + F_r) entry by entry, 1/2 where both are 0 (float32)."""
    forget, retain = forget.to(torch.float32), retain.to(torch.float32)
    total = forget + retain
    # No ε in the denominator: the Fishers' scale varies by orders of magnitude between models and tensors, and any
    # fixed ε would decide the weight of the small ones. 0/0 is the one undefined case; it carries no evidence.
    return torch.where(total > 0, forget / torch.where(total > 0, total, 1.0), 0.5)


class FisherWeighting(DifferenceTransform):
    """Multiplies the difference of term `term` (τ_f) by w (see the module's docstring), entry by entry; given several
    terms (one forget vector per sequential request), each of them, which weights their sum.

    `fisher_dirs` maps ``forget`` and ``retain`` to folders holding a ``model.safetensors`` of float32 Fishers."""

    def __init__(self, term: int | Sequence[int], fisher_dirs: dict[str, Path], normalization: str) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r} must be one of {', '.join(NORMALIZATIONS)}")
        self.terms, self.normalization = term_indices(term), normalization
        self._layouts = {role: read_layout(Path(fisher_dirs[role])) for role in ROLES}
        forget, retain = (self._layouts[role].tensors for role in ROLES)
        if {n: i.shape for n, i in forget.items()} != {n: i.shape for n, i in retain.items()}:
            raise StateArithmeticError(
                f"the forget and retain Fishers in {fisher_dirs['forget']} and {fisher_dirs['retain']} hold "
                "different tensors or shapes; rebuild the Fisher stage"
            )
        self._readers: dict[str, TensorFileReader] = {}
        self._means: dict[str, float] = {}
        self._range = [math.inf, -math.inf]  # the smallest and largest weight applied

    def _rows(self, role: str, name: str, start: int, stop: int) -> Tensor:
        layout = self._layouts[role]
        info = layout.tensors[name]
        if role not in self._readers:  # opened on first use: a cached arithmetic never opens them
            self._readers[role] = TensorFileReader(layout.directory / info.file_name)
        return self._readers[role].read_rows(name, info.dtype, info.shape, start, stop)

    def ratio(self, name: str, start: int, stop: int) -> Tensor:
        """r over rows start:stop of tensor `name`."""
        return importance_ratio(*(self._rows(role, name, start, stop) for role in ROLES))

    def _ratio_sum(self, name: str) -> tuple[float, int]:
        # CHUNK_ELEMENTS is read when called, not imported by name: tests shrink it.
        from msa_bench.arithmetic import state_arithmetic

        shape = self._layouts["forget"].tensors[name].shape
        total, count = 0.0, 0
        for chunk in row_chunks(shape, state_arithmetic.CHUNK_ELEMENTS):
            ratio = self.ratio(name, chunk.start, chunk.stop)
            total += float(ratio.double().sum())
            count += ratio.numel()
        return total, count

    def mean(self, name: str) -> float:
        """The mean of r that divides tensor `name`'s ratios (over the tensor, or over every tensor)."""
        if self.normalization == "global":
            if "" not in self._means:
                sums = [self._ratio_sum(n) for n in self._layouts["forget"].tensors]
                count = sum(c for _, c in sums)
                self._means[""] = sum(s for s, _ in sums) / count if count else 0.0
            return self._means[""]
        if name not in self._means:
            total, count = self._ratio_sum(name)
            self._means[name] = total / count if count else 0.0
        return self._means[name]

    def apply(self, name, terms):
        raise TypeError("FisherWeighting reads the rows of each chunk: call apply_rows")

    def apply_rows(self, name, rows, terms):
        by_index = {i: d for i, _, d in terms}
        forgets = [i for i in self.terms if i in by_index]
        if not forgets or name not in self._layouts["forget"].tensors:
            return [(c, d) for _, c, d in terms]
        for i in forgets:
            self._check_shape(name, by_index[i], rows)
        mean = self.mean(name)
        ratio = self.ratio(name, rows.start, rows.stop).reshape(by_index[forgets[0]].shape)
        weight = ratio / mean if mean > 0 else torch.zeros_like(ratio)
        if weight.numel():
            self._range = [min(self._range[0], float(weight.min())), max(self._range[1], float(weight.max()))]
        for i in forgets:
            by_index[i] = by_index[i] * weight.to(by_index[i].dtype)
        return [(c, by_index[i]) for i, c, _ in terms]

    def _check_shape(self, name: str, forget: Tensor, rows: slice) -> None:
        shape = self._layouts["forget"].tensors[name].shape
        chunk_shape = tuple(shape) if not shape else (rows.stop - rows.start, *shape[1:])
        if tuple(forget.shape) != chunk_shape:
            raise StateArithmeticError(
                f"the Fisher of tensor {name!r} has shape {list(shape)}, which does not match the model's "
                f"(rows {rows.start}:{rows.stop} of it have shape {list(forget.shape)}); rebuild the Fisher stage"
            )

    def close(self):
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def summary(self):
        means = [m for n, m in self._means.items() if n]
        report = {"normalization": self.normalization, "tensors": len(self._layouts["forget"].tensors)}
        if self.normalization == "global" and "" in self._means:
            report["mean_ratio"] = self._means[""]
        elif means:
            report["mean_ratio_min"], report["mean_ratio_max"] = min(means), max(means)
        if self._range[0] <= self._range[1]:
            report["weight_min"], report["weight_max"] = self._range
        return {"fisher": report}
