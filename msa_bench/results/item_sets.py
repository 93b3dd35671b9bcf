"""Which eval set each per-item value list of an evaluation belongs to.

An evaluation's `per_item` maps a key to one value per item, but the key names a metric (or a side list of one), not
an eval set. Each suite says where its keys belong (`Suite.item_eval_set`, beside the suite's own definitions); this
module only asks the suites that were evaluated. A key no suite places, or one two suites place differently, gives
None: the caller keeps those values apart, never guesses.
"""

from __future__ import annotations

from collections.abc import Sequence


def eval_set_of(key: str, suites: Sequence[str]) -> str | None:
    """The eval set whose items the per-item values `key` are in order of, among the suites that were evaluated
    (`suites`: the keys of the evaluation plan), or None when no suite places them."""
    from msa_bench.metrics.registry import SUITES, discover_suites

    discover_suites()
    found = {SUITES[suite].item_eval_set(key) for suite in suites if suite in SUITES} - {None}
    return found.pop() if len(found) == 1 else None
