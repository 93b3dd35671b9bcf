"""What every suite's evaluation of one model returns, and what the evaluation stage caches (as `to_dict()`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)  # requested metrics and their dependencies
    # Per-item values keyed by metric name; truth-ratio entries hold the raw ratios tr (whatever the aggregation).
    # The attacks store their per-item scores as "<metric>_forget" and "<metric>_holdout" instead.
    per_item: dict[str, list[float]] = field(default_factory=dict)
    generations: dict[str, list[str]] = field(default_factory=dict)  # keyed by eval set name
    skipped: dict[str, str] = field(default_factory=dict)  # metric name -> why it was not computed
    # Non-padding tokens through the model (scoring + generation), in forward-pass equivalents for FLOP estimates:
    # a token of a gradient-norm item counts 3 (its forward and a backward of about twice the cost).
    tokens_processed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
