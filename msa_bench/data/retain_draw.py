"""Which retain items the MSA retain vector θ2 trains on: how many, and how they are drawn from the pool.

Two draws:
- `sample` (msa_bench's default): `random.Random(seed).sample` of the pool's indices, in pool order.
- `shuffle`: the MSA paper's code (src/data/datasets.py, QADataset with `sample_fraction`), which calls the Hugging
  Face `datasets` `Dataset.shuffle(seed=42)` and keeps the first int(len * fraction) rows, in shuffled order.
  `Dataset.shuffle(seed)` permutes the rows with `numpy.random.default_rng(seed).permutation(len)`; that is what
  is computed here, without building a `datasets.Dataset` (tests/test_paper_recipes.py checks the two agree).
"""

from __future__ import annotations

import random

import numpy as np

from msa_bench.errors import StageError

RETAIN_DRAWS = ("sample", "shuffle")


def retain_subset_size(size: int | None, fraction: float | None, pool_size: int, forget_size: int) -> int:
    """`size` items, or int(pool_size * fraction) as the paper's code takes, or by default the forget set's size
    (capped at the pool's)."""
    if size is None and fraction is not None:
        size = int(pool_size * fraction)
        if size <= 0:
            raise StageError(
                f"method.retain_fraction={fraction} of a retain pool of {pool_size} items is {size} items; "
                f"raise it to at least {1 / pool_size:.3g}"
            )
        return size
    if size is None:
        size = min(forget_size, pool_size)
    if size <= 0 or size > pool_size:
        raise StageError(
            f"method.retain_size={size} must be between 1 and {pool_size} (the retain pool's size)"
        )
    return size


def draw_retain_indices(draw: str, pool_size: int, size: int, seed: int) -> list[int]:
    """`size` distinct indices into a pool of `pool_size` items, drawn as `draw` says."""
    if draw == "sample":
        return sorted(random.Random(seed).sample(range(pool_size), size))
    if draw == "shuffle":
        return [int(i) for i in np.random.default_rng(seed).permutation(pool_size)[:size]]
    raise StageError(f"method.retain_draw={draw!r} is not one of {', '.join(RETAIN_DRAWS)}")
