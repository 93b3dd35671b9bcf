"""Transforms of the terms' differences before :func:`combine_checkpoints` weights them and adds them to the target.

Plain MSA adds ``Σ coefficient · (finetuned − base)``. Its variants change the forget difference τ_f = θ1 − θ0 first:
scale its coefficient per tensor (`method.layer_scale`), trim and sign-elect it (`msa_ties`), or remove its
projection on the retain difference τ_r = θ2 − θ0 (`msa_projected`). A transform sees the differences of one tensor's
rows (a chunk) at a time, as the streaming arithmetic computes them, and may first look at statistics over the whole
tensor (``scope = "tensor"``: one extra pass over that tensor's chunks just before it is written) or over the whole
model (``scope = "model"``: one streaming pass over every tensor before anything is written). The terms are named by
their index in the ``deltas`` given to combine_checkpoints.

Every transform here leaves the differences untouched when its setting is off (density 1 and no election, no
projection, factor 1), so the output is then plain MSA's, bit for bit.

After sequential deletion requests the forget difference is several terms, one forget vector per request, all with
the same coefficient (docs/sequential_requests.md); the retain difference may be several too
(`method.retain_per_request`). A transform given several indices computes its statistics (the trim's threshold, the
elected signs, the projection's inner products) on their sum, the cumulative vector, and applies the per-entry map
they fix (a mask, a weight, c·τ_r) to the terms: the map is linear once fixed, so this is the transform of the sum,
while each term still enters the sum on its own. With the map off nothing changes, so the output is then the
sequential msa's bit for bit; with one index each, a transform sees exactly the tensor it always saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

import torch
from torch import Tensor

from msa_bench.arithmetic.tensor_arithmetic import squared_norm

# (term index, coefficient, difference) in; (coefficient, difference) out, in the same order.
Terms = Sequence[tuple[int, float, Tensor]]
SCOPES = (None, "tensor", "model")


def term_indices(terms: int | Sequence[int] | None) -> tuple[int, ...]:
    """A transform's terms as a tuple: one index, several (one per sequential request), or none (None)."""
    if terms is None:
        return ()
    return (terms,) if isinstance(terms, int) else tuple(terms)


def summed_difference(differences: Mapping[int, Tensor], indices: Sequence[int]) -> Tensor | None:
    """The sum of the differences of the terms `indices` that `differences` holds (None when it holds none).

    One term's difference is returned itself, not a copy, so that a single request's transform computes on exactly
    the tensor it always did."""
    present = [differences[i] for i in indices if i in differences]
    if len(present) <= 1:
        return present[0] if present else None
    total = present[0].clone()
    for difference in present[1:]:
        total += difference
    return total


def shared_coefficient(terms: Terms, indices: Sequence[int], what: str) -> float:
    """The one coefficient of the terms `indices`: a transform that weighs their sum needs them all equal."""
    coefficients = {c for i, c, _ in terms if i in indices}
    if len(coefficients) != 1:
        raise ValueError(
            f"the {what} terms {list(indices)} must share one coefficient, got {sorted(coefficients)}"
        )
    return coefficients.pop()


class DifferenceTransform:
    """The identity: what combine_checkpoints applies when given no transform.

    Subclasses set `scope` and `observed_terms` and override `observe` to gather statistics first, and `apply` to
    change a chunk's differences. combine_checkpoints calls ``observe(name, chunks)`` once per floating tensor (in the
    model pass, or just before the tensor is written), `chunks` (a TensorChunks, which says the tensor's `numel`) yielding each of its row chunks' differences of the
    `observed_terms` ({index: difference}; a term that leaves the tensor unchanged, a LoRA term on an unadapted tensor,
    is absent); then ``apply_rows(name, rows, terms)`` (by default `apply`) for each chunk, and once more on the whole
    tensor if it is non-finite; and `close` when the arithmetic is done."""

    scope: str | None = None
    observed_terms: tuple[int, ...] = ()

    def observe(self, name: str, chunks: Iterable[Mapping[int, Tensor]]) -> None:
        """Gather what `apply` needs about tensor `name` (or the model) from its chunks' differences."""

    def apply(self, name: str, terms: Terms) -> list[tuple[float, Tensor]]:
        return [(coefficient, difference) for _, coefficient, difference in terms]

    def apply_rows(self, name: str, rows: slice, terms: Terms) -> list[tuple[float, Tensor]]:
        """`apply` told which rows of tensor `name` the chunk holds (along its first dimension; a scalar is rows
        0:1). What combine_checkpoints calls: a transform that reads per-entry data of its own in step with the
        checkpoints (msa_fisher's importances) overrides this; the others only need `apply`."""
        return self.apply(name, terms)

    def close(self) -> None:
        """Release what the transform opened (files it reads alongside the checkpoints); called once it is done."""

    def summary(self) -> dict:
        """What the transform did, for the arithmetic's report."""
        return {}


class ChainedTransforms(DifferenceTransform):
    """Transforms applied one after another (e.g. msa_ties' trim, then the layer scale of its coefficient). At most
    one of them may gather statistics: two passes with different scopes would need two pre-passes."""

    def __init__(self, transforms: Sequence[DifferenceTransform]) -> None:
        self.transforms = list(transforms)
        observing = [t for t in self.transforms if t.scope is not None]
        if len(observing) > 1:
            raise ValueError(f"at most one transform may observe statistics, got {len(observing)}")
        self._observer = observing[0] if observing else None
        self.scope = self._observer.scope if self._observer else None
        self.observed_terms = self._observer.observed_terms if self._observer else ()

    def observe(self, name, chunks):
        if self._observer is not None:
            self._observer.observe(name, chunks)

    def apply(self, name, terms):
        return self._chain(lambda transform, terms: transform.apply(name, terms), terms)

    def apply_rows(self, name, rows, terms):
        return self._chain(lambda transform, terms: transform.apply_rows(name, rows, terms), terms)

    def _chain(self, step, terms):
        for transform in self.transforms:
            indices = [i for i, _, _ in terms]
            terms = [(i, c, d) for i, (c, d) in zip(indices, step(transform, terms), strict=True)]
        return [(coefficient, difference) for _, coefficient, difference in terms]

    def close(self):
        for transform in self.transforms:
            transform.close()

    def summary(self):
        return {key: value for transform in self.transforms for key, value in transform.summary().items()}


class ScaleCoefficient(DifferenceTransform):
    """Multiplies the coefficient of term `term` by ``factors[name]`` on each tensor listed (1 elsewhere)."""

    def __init__(
        self, term: int, factors: Mapping[str, float], matches: Mapping[str, int] | None = None
    ) -> None:
        self.term, self.factors, self.matches = term, dict(factors), dict(matches or {})

    def apply(self, name, terms):
        factor = self.factors.get(name, 1.0)
        return [(c * factor if i == self.term else c, d) for i, c, d in terms]

    def summary(self):
        values = list(self.factors.values()) or [1.0]
        summary = {"tensors_scaled": len(self.factors), "min": min(values), "max": max(values)}
        if self.matches:  # a {regex: factor} mapping: how many tensors each regex set the factor of
            summary["tensors_matched"] = dict(self.matches)
        return {"layer_scale": summary}


ELECTIONS = ("retain", "mass", "none")


def kept_count(density: float, n: int) -> int:
    """k = ⌈density·n⌉ (at least 1) in exact arithmetic on the density as written: the float product is off by one
    where it rounds up past an integer (0.07·100 = 7.000000000000001)."""
    return max(1, math.ceil(Fraction(repr(float(density))) * n))


class TensorChunks:
    """What combine_checkpoints gives `DifferenceTransform.observe`: the chunks' differences of one tensor, which
    also says the tensor's number of values (`numel`), so a transform can allocate a whole-tensor buffer once."""

    def __init__(self, numel: int, chunks: Iterable[Mapping[int, Tensor]]) -> None:
        self.numel, self._chunks = numel, chunks

    def __iter__(self):
        return iter(self._chunks)


class TrimAndElect(DifferenceTransform):
    """TIES-style trim of the forget difference and sign election against the retain difference (see msa_ties).

    Trim (per tensor): keep the entries of τ_f whose magnitude is at least that of its k-th largest, k = ⌈density·n⌉
    for a tensor of n values (ties at the threshold are all kept); the others become 0. Election:

    - ``retain``: also zero every kept τ_f entry whose sign equals that of τ_r's (τ_r ≠ 0): subtracting α·τ_f would
      undo a change the retain fine-tune made too.
    - ``mass`` (TIES' own rule on the two signed terms c_f·τ̂_f and c_r·τ_r): the elected sign of an entry is that of
      their sum; an entry of either term whose sign differs from it is zeroed.
    - ``none``: trim only.
    """

    observed_terms: tuple[int, ...]

    def __init__(
        self,
        forget: int | Sequence[int],
        retain: int | Sequence[int] | None,
        density: float,
        election: str,
    ) -> None:
        if not 0 < density <= 1:
            raise ValueError(f"density={density} must be in (0, 1]")
        if election not in ELECTIONS:
            raise ValueError(f"election={election!r} must be one of {', '.join(ELECTIONS)}")
        self.forget_terms, self.retain_terms = term_indices(forget), term_indices(retain)
        self.density, self.election = density, election
        self.scope = "tensor" if density < 1 else None
        self.observed_terms = self.forget_terms
        self._thresholds: dict[str, Tensor] = {}
        self._counts = {"forget_values": 0, "trimmed": 0, "elected_out": 0}

    def observe(self, name, chunks):
        # The exact k-th largest magnitude needs the whole tensor's magnitudes at once: one fp32 copy of the largest
        # tensor (4 bytes a value) is this method's extra peak memory (docs/memory.md), filled chunk by chunk.
        total = getattr(chunks, "numel", None)
        if (
            total is None
        ):  # chunks that do not say their tensor's size: gathered, then joined (8 bytes a value)
            forgets = (summed_difference(chunk, self.forget_terms) for chunk in chunks)
            parts = [forget.reshape(-1).abs().float() for forget in forgets if forget is not None]
            magnitudes = torch.cat(parts) if parts else None
            del parts
        else:
            magnitudes, filled = None, 0
            for chunk in chunks:
                forget = summed_difference(chunk, self.forget_terms)
                if forget is None:
                    continue
                values = forget.reshape(-1)
                if magnitudes is None:
                    magnitudes = torch.empty(total, dtype=torch.float32)
                part = magnitudes[filled : filled + values.numel()]
                part.copy_(values)
                part.abs_()
                filled += values.numel()
            if magnitudes is not None:
                magnitudes = magnitudes[:filled]
        if magnitudes is None or magnitudes.numel() == 0:
            return
        self._thresholds[name] = kth_largest(magnitudes, kept_count(self.density, magnitudes.numel()))

    def apply(self, name, terms):
        by_index = {i: d for i, _, d in terms}
        forget = summed_difference(by_index, self.forget_terms)
        if forget is None:
            return [(c, d) for _, c, d in terms]
        keep = None
        if name in self._thresholds:
            keep = forget.abs() >= self._thresholds[name]
            self._counts["trimmed"] += int(forget.numel() - keep.sum())
        self._counts["forget_values"] += forget.numel()
        retain = summed_difference(by_index, self.retain_terms)
        changed = dict(by_index)
        if self.election != "none" and retain is not None:
            trimmed = forget if keep is None else forget * keep
            if self.election == "retain":
                # One sign convention for the whole family: the conflict is τ_f and τ_r moving an entry the same way.
                agree = (torch.sign(trimmed) == torch.sign(retain)) & (retain != 0)
                elected_forget, elected_retain = ~agree, None
            else:
                forget_coefficient = shared_coefficient(terms, self.forget_terms, "forget")
                retain_coefficient = shared_coefficient(terms, self.retain_terms, "retain")
                forget_signed = torch.sign(forget_coefficient * trimmed)
                retain_signed = torch.sign(retain_coefficient * retain)
                elected = torch.sign(forget_coefficient * trimmed + retain_coefficient * retain)
                elected_forget, elected_retain = forget_signed == elected, retain_signed == elected
                for i in self.retain_terms:
                    if i in by_index:
                        changed[i] = by_index[i] * elected_retain
            before = int((trimmed != 0).sum())
            keep = elected_forget if keep is None else keep & elected_forget
            self._counts["elected_out"] += before - int((forget * keep != 0).sum())
        if keep is not None:
            for i in self.forget_terms:
                if i in by_index:
                    changed[i] = by_index[i] * keep
        return [(c, changed[i]) for i, c, _ in terms]

    def summary(self):
        return {"ties": {"density": self.density, "election": self.election, **self._counts}}


_COUNTING_SLICE = 1 << 22


def kth_largest(values: Tensor, k: int) -> Tensor:
    """The k-th largest of the non-negative float32 `values` (1 ≤ k ≤ n), exactly, as a 0-d tensor.

    Not torch.kthvalue or sort: those keep an int64 index per value and a working copy, about 4 times the values'
    memory (measured: 510 MB of growth for 128 MB of values), which for a 128k-token embedding is gigabytes. Instead,
    a bisection on the bit patterns: for non-negative floats the int32 patterns are ordered as the values are, so the
    largest pattern b with at least k values ≥ float(b) is the k-th largest value's own. 31 counting passes over the
    values, each in slices so that the only temporary is one slice's mask."""
    flat = values.reshape(-1)

    def at_least(bits: int) -> int:
        threshold = torch.tensor(bits, dtype=torch.int32).view(torch.float32)
        return sum(
            int((flat[start : start + _COUNTING_SLICE] >= threshold).sum())
            for start in range(0, flat.numel(), _COUNTING_SLICE)
        )

    low, high = 0, int(flat.max().view(torch.int32))  # all n values are ≥ 0.0; none is above the maximum
    while low < high:
        middle = (low + high + 1) // 2
        if at_least(middle) >= k:
            low = middle
        else:
            high = middle - 1
    return torch.tensor(low, dtype=torch.int32).view(torch.float32)


PROJECTIONS = ("per_tensor", "global", "none")


class ProjectOffRetain(DifferenceTransform):
    """τ_f − (⟨τ_f, d⟩ / ‖d‖²)·d, the inner products over one tensor (``per_tensor``) or over the whole model
    (``global``), accumulated in float64. A tensor (or model) with d = 0 keeps τ_f as it is. d is the difference of
    the `retain` terms: τ_r, or msa_projected's format vector τ_h (a term of coefficient 0, read but not added).

    With several forget terms, τ_f is their sum and c·τ_r is taken off the first of them, so the terms sum to the
    projected τ_f (they share one coefficient); with several retain terms, τ_r is their sum."""

    def __init__(self, forget: int | Sequence[int], retain: int | Sequence[int], projection: str) -> None:
        if projection not in PROJECTIONS[:2]:
            raise ValueError(f"projection={projection!r} must be one of {', '.join(PROJECTIONS[:2])}")
        self.forget_terms, self.retain_terms = term_indices(forget), term_indices(retain)
        self.projection = projection
        self.scope = "tensor" if projection == "per_tensor" else "model"
        self.observed_terms = (*self.forget_terms, *self.retain_terms)
        self._inner: dict[str, tuple[float, float]] = {}  # name -> (⟨τ_f, τ_r⟩, ‖τ_r‖²) of that tensor

    def observe(self, name, chunks):
        inner = squared = 0.0
        for chunk in chunks:
            forget = summed_difference(chunk, self.forget_terms)
            retain = summed_difference(chunk, self.retain_terms)
            if forget is None or retain is None:
                continue
            inner += float(torch.dot(forget.reshape(-1).double(), retain.reshape(-1).double()))
            squared += squared_norm(retain)
        self._inner[name] = (inner, squared)

    def coefficient(self, name: str) -> float:
        if self.projection == "global":
            inner = sum(i for i, _ in self._inner.values())
            squared = sum(s for _, s in self._inner.values())
        else:
            inner, squared = self._inner.get(name, (0.0, 0.0))
        return inner / squared if squared > 0 else 0.0

    def apply(self, name, terms):
        by_index = {i: d for i, _, d in terms}
        forgets = [i for i in self.forget_terms if i in by_index]
        scale = self.coefficient(name)
        if forgets and scale != 0.0:
            retain = summed_difference(by_index, self.retain_terms)
            if retain is not None:
                shared_coefficient(terms, self.forget_terms, "forget")
                by_index[forgets[0]] = by_index[forgets[0]] - scale * retain
        return [(c, by_index[i]) for i, c, _ in terms]

    def summary(self):
        # The norm of what was removed from τ_f: per tensor the removed parts are orthogonal (disjoint tensors), so
        # their squared norms add up.
        if self.projection == "global":
            inner = sum(i for i, _ in self._inner.values())
            squared = sum(s for _, s in self._inner.values())
            removed = abs(inner) / math.sqrt(squared) if squared > 0 else 0.0
            return {
                "projection": {"mode": "global", "coefficient": self.coefficient(""), "removed_norm": removed}
            }
        removed_squared = sum(i * i / s for i, s in self._inner.values() if s > 0)
        return {"projection": {"mode": "per_tensor", "removed_norm": math.sqrt(removed_squared)}}
