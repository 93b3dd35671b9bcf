"""Reading open-unlearning `*_EVAL.json` logs, with errors that say what is missing and which metric needs it.

An eval log maps metric names to `{"agg_value": ..., "value_by_index": {"0": {...}, ...}}`; the membership-inference
entries instead hold `forget` and `holdout` sub-results and an `auc`. Every accessor here takes `needed_by`, the
metric being recomputed, so an incomplete log is reported as "<log> has no X, needed by Y".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msa_bench.errors import ParityError  # noqa: F401  (re-exported)

TOFU = "tofu"
MUSE = "muse"

# Keys that only one benchmark's suite writes; a log is recognised by them.
_BENCHMARK_MARKERS: Mapping[str, tuple[str, ...]] = {
    TOFU: (
        "forget_Q_A_Prob",
        "forget_Q_A_PARA_Prob",
        "forget_Q_A_PERT_Prob",
        "forget_Q_A_ROUGE",
        "forget_truth_ratio",
        "forget_quality",
        "model_utility",
    ),
    MUSE: ("forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE"),
}


@dataclass(frozen=True)
class EvalLog:
    """One parsed open-unlearning eval log. `role` ("eval log" / "retain log") prefixes every error message."""

    path: Path
    role: str
    benchmark: str
    entries: Mapping[str, Any]

    @property
    def name(self) -> str:
        return f"{self.role} {self.path}"

    def has(self, key: str) -> bool:
        return key in self.entries

    def entry(self, key: str, needed_by: str) -> Mapping[str, Any]:
        if key not in self.entries:
            raise ParityError(f"{self.name} has no '{key}' entry, needed by {needed_by}")
        value = self.entries[key]
        if not isinstance(value, Mapping):
            raise ParityError(
                f"{self.name}: '{key}' (needed by {needed_by}) should be an object, got {type(value).__name__}"
            )
        return value

    def items(self, key: str, needed_by: str, entry: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The `value_by_index` of `key` (or of a sub-result `entry` of it), keyed by item index."""
        source = self.entry(key, needed_by) if entry is None else entry
        by_index = source.get("value_by_index")
        if not isinstance(by_index, Mapping) or not by_index:
            raise ParityError(f"{self.name}: '{key}' has no per-item 'value_by_index', needed by {needed_by}")
        return dict(by_index)

    def item_field(
        self, key: str, field: str, needed_by: str, entry: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Per item index, `field` of `key`'s per-item record; None where open-unlearning recorded no value.

        None (an item whose answer tokenised to nothing) is passed through: open-unlearning leaves such items out
        of its means, and so do the callers.
        """
        values: dict[str, Any] = {}
        for index, record in self.items(key, needed_by, entry).items():
            if record is None:
                values[index] = None
                continue
            if not isinstance(record, Mapping) or field not in record:
                raise ParityError(
                    f"{self.name}: item {index} of '{key}' has no '{field}', needed by {needed_by}"
                )
            values[index] = record[field]
        return values

    def numbers(self, key: str, field: str, needed_by: str, entry: Mapping[str, Any] | None = None):
        """Like `item_field`, but each value must be a number (or None); lists are rejected."""
        values = self.item_field(key, field, needed_by, entry)
        for index, value in values.items():
            if value is not None and not _is_number(value):
                raise ParityError(
                    f"{self.name}: item {index} of '{key}' has {field}={value!r}, expected a number "
                    f"(needed by {needed_by})"
                )
        return values

    def number_lists(self, key: str, field: str, needed_by: str) -> dict[str, list[float] | None]:
        """Like `item_field`, but each value must be a non-empty list of numbers (or None)."""
        values = self.item_field(key, field, needed_by)
        for index, value in values.items():
            if value is None:
                continue
            if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
                raise ParityError(
                    f"{self.name}: item {index} of '{key}' has {field}={value!r}, expected a non-empty list "
                    f"of numbers (needed by {needed_by})"
                )
        return values

    def texts(self, key: str, field: str, needed_by: str) -> dict[str, str | None]:
        values = self.item_field(key, field, needed_by)
        for index, value in values.items():
            if value is not None and not isinstance(value, str):
                raise ParityError(
                    f"{self.name}: item {index} of '{key}' has {field}={value!r}, expected text "
                    f"(needed by {needed_by})"
                )
        return values

    def attack_scores(self, key: str, needed_by: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per-item attack scores of a `mia_*` entry: (forget, holdout)."""
        entry = self.entry(key, needed_by)
        parts = []
        for part in ("forget", "holdout"):
            sub = entry.get(part)
            if not isinstance(sub, Mapping):
                raise ParityError(f"{self.name}: '{key}' has no '{part}' scores, needed by {needed_by}")
            parts.append(self.numbers(f"{key}.{part}", "score", needed_by, entry=sub))
        return parts[0], parts[1]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _looks_like_metric(value: Any) -> bool:
    return isinstance(value, Mapping) and ("agg_value" in value or "value_by_index" in value)


def detect_benchmark(entries: Mapping[str, Any], source: str) -> str:
    """'tofu' or 'muse', from the metric names only that benchmark's suite writes."""
    found = {name for name, markers in _BENCHMARK_MARKERS.items() if any(key in entries for key in markers)}
    if len(found) == 1:
        return found.pop()
    if not found:
        expected = ", ".join(f"{name}: {' / '.join(markers)}" for name, markers in _BENCHMARK_MARKERS.items())
        raise ParityError(
            f"{source} is not a TOFU or MUSE eval log of open-unlearning: it has none of their metric keys "
            f"({expected})"
        )
    raise ParityError(f"{source} mixes TOFU and MUSE metric keys; parity needs one benchmark per log")


def load_eval_log(path: Path | str, role: str) -> EvalLog:
    """Parse and recognise one `TOFU_EVAL.json` / `MUSE_EVAL.json`; ParityError if it is not one."""
    path = Path(path)
    source = f"{role} {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ParityError(f"cannot read {source}: {error.strerror or error}") from error
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParityError(f"{source} is not JSON ({error})") from error
    if not isinstance(entries, Mapping):
        raise ParityError(
            f"{source} is not an open-unlearning eval log: expected an object of metrics, got "
            f"{type(entries).__name__}"
        )
    if "agg_value" in entries or "value_by_index" in entries:
        raise ParityError(f"{source} holds a single metric, not an eval log of metrics")
    if entries and not any(_looks_like_metric(v) for v in entries.values()):
        raise ParityError(
            f"{source} is not an open-unlearning eval log: no entry has 'agg_value' or 'value_by_index' "
            f"(a *_SUMMARY.json has only aggregate numbers; pass the *_EVAL.json next to it)"
        )
    return EvalLog(path=path, role=role, benchmark=detect_benchmark(entries, source), entries=entries)


def stored_value(log: EvalLog, key: str) -> float | None:
    """The aggregate open-unlearning stored for `key` (its `auc` for a MIA entry), None if absent or not a number."""
    entry = log.entries.get(key)
    if not isinstance(entry, Mapping):
        return None
    value = entry.get("auc", entry.get("agg_value"))
    if not _is_number(value) or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)
