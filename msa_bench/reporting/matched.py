"""Comparing methods at matched forgetting (shared/notes/cpu_scale_prototype.md, trap 4).

For each method, its runs along one swept hyperparameter (method.alpha by default) form a curve. The points are the
seed means at each swept value, ordered by the chosen forget metric; the curve is linearly interpolated to the point
where that metric equals the oracle's value, and every other metric (and the swept value itself) is read there.
The result names the two runs that bracket the crossing. When the oracle's value lies outside the range the sweep
covered, the method "never reached" it and nothing is read: there is no extrapolation.

Where the crossing lies between its two runs can be found on the metric's linear scale (the default) or on its log
scale (`--matched-scale log`). A forget answer probability falls roughly geometrically with training: between runs
at 0.31 and 0.015, the oracle's 0.135 is 60% of the way in linear terms but 27% in log terms, and the other metrics
and the swept value are read at that position. Both scales give the same answer when a run sits at the oracle's
value, and neither extrapolates.

A method run over a grid of several keys (the validation protocol's learning rate × epochs) has no single swept key.
Its strength is how long it trains, so it is matched along method.recipe.epochs (or method.recipe.max_steps, where
the grid counts optimizer steps), one curve per value of the other keys: each learning rate gets its own crossing,
or its own "never reached".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from msa_bench.reporting.collect import (
    ROW_EXCLUDED,
    Run,
    comparable_config,
    distinguishing_settings,
    flatten,
    settings_label,
)
from msa_bench.reporting.tables import Table

# The keys along which a method trained for longer forgets more, the first a grid varies being the curve to match
# when it varies several: epochs, or optimizer steps (a grid meant to give two forget sets of different sizes the
# same number of updates, scripts/reproduce_validation.py).
STRENGTH_KEYS = ("method.recipe.epochs", "method.recipe.max_steps")
SCALES = ("linear", "log")


@dataclass
class CurvePoint:
    param: float
    metrics: dict[str, float]  # seed means
    n: int


@dataclass
class MatchedResult:
    label: str  # the method (and its fixed settings)
    param: str  # the swept key, e.g. method.alpha
    metric: str
    target_value: float  # the oracle's value of `metric`
    points: list[CurvePoint]
    reached: bool
    bracket: tuple[CurvePoint, CurvePoint] | None = None
    weight: float | None = None  # position between bracket[0] (0) and bracket[1] (1)
    param_value: float | None = None
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""
    scale: str = "linear"  # the scale of `metric` on which the crossing's position was found (SCALES)


def interpolate(
    points: Sequence[CurvePoint], metric: str, target_value: float, scale: str = "linear"
) -> tuple[int, int, float] | None:
    """(i, j, t) such that the metric equals target_value at t between points[i] (t = 0) and points[j] (t = 1),
    for points sorted by the metric, t measured on the metric's `scale`; i == j when a run sits exactly at the
    target. None when no pair brackets it."""
    if scale not in SCALES:
        raise ValueError(f"matched-forgetting scale {scale!r}: choose among {', '.join(SCALES)}")
    for i, point in enumerate(points):
        if math.isclose(point.metrics[metric], target_value, rel_tol=1e-12, abs_tol=0.0):
            return i, i, 0.0
    for i in range(len(points) - 1):
        low, high = points[i].metrics[metric], points[i + 1].metrics[metric]
        if low < target_value < high:
            if scale == "log":
                if low <= 0:
                    raise ValueError(
                        f"--matched-scale log: {metric} = {low:.4g} at one end of the bracket around the oracle's "
                        f"{target_value:.4g}, and a log scale needs positive values; use --matched-scale linear"
                    )
                return i, i + 1, math.log(target_value / low) / math.log(high / low)
            return i, i + 1, (target_value - low) / (high - low)
    return None


def match_curve(
    label: str,
    param: str,
    metric: str,
    target_value: float,
    points: Sequence[CurvePoint],
    scale: str = "linear",
) -> MatchedResult:
    usable = sorted(
        (p for p in points if metric in p.metrics and not math.isnan(p.metrics[metric])),
        key=lambda p: (p.metrics[metric], p.param),
    )
    result = MatchedResult(label, param, metric, target_value, list(usable), reached=False, scale=scale)
    if not usable:
        result.note = f"no run has {metric}"
        return result
    low, high = usable[0].metrics[metric], usable[-1].metrics[metric]
    try:
        found = interpolate(usable, metric, target_value, scale)
    except ValueError as error:  # this curve's bracket cannot be placed on a log scale; the others still can
        result.note = str(error)
        return result
    if found is None:
        values = ", ".join(f"{p.param:g}" for p in sorted(usable, key=lambda p: p.param))
        result.note = (
            f"never reached: {metric} spans [{low:.4g}, {high:.4g}] over {param} ∈ {{{values}}}, "
            f"the oracle's value is {target_value:.4g} (no extrapolation)"
        )
        return result
    first, second, weight = found
    a, b = usable[first], usable[second]
    result.reached = True
    result.bracket = (a, b)
    result.weight = weight
    result.param_value = a.param + weight * (b.param - a.param)
    shared = set(a.metrics) & set(b.metrics)
    result.values = {m: a.metrics[m] + weight * (b.metrics[m] - a.metrics[m]) for m in sorted(shared)}
    short = param.removeprefix("method.")
    if a is b:
        result.note = f"at the run {short}={a.param:g}"
    else:
        result.note = (
            f"between {short}={a.param:g} ({metric}={a.metrics[metric]:.4g}) and "
            f"{short}={b.param:g} ({metric}={b.metrics[metric]:.4g})"
        )
    return result


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def swept_param(runs: Sequence[Run], requested: str | None) -> str | None:
    """The swept key: the requested one, else method.alpha if it varies, else the one numeric method.* key that
    varies (None when there is none or the choice is ambiguous)."""
    if requested:
        return requested
    varying = varying_numeric_keys(runs)
    if "method.alpha" in varying:
        return "method.alpha"
    return varying[0] if len(varying) == 1 else None


def varying_numeric_keys(runs: Sequence[Run]) -> list[str]:
    values: dict[str, set] = {}
    for run in runs:
        for key, value in run.flat_config.items():
            if key.startswith("method.") and _numeric(value):
                values.setdefault(key, set()).add(value)
    return sorted(k for k, v in values.items() if len(v) > 1)


def curves(runs: Sequence[Run], param: str) -> dict[str, list[Run]]:
    """Runs of one method grouped into curves: same config except seed and the swept key."""
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        config = comparable_config(run, (*ROW_EXCLUDED, param))
        key = repr(sorted(config.items(), key=lambda kv: kv[0]))
        grouped.setdefault(key, []).append(run)
    return grouped


def curve_points(runs: Sequence[Run], param: str) -> list[CurvePoint]:
    by_value: dict[float, list[Run]] = {}
    for run in runs:
        value = flatten(run.config).get(param)
        if _numeric(value):
            by_value.setdefault(float(value), []).append(run)
    points = []
    for value, members in sorted(by_value.items()):
        names = set().union(*(r.metrics for r in members))
        means = {}
        for name in names:
            values = [r.metrics[name] for r in members if name in r.metrics]
            means[name] = statistics.fmean(values)
        points.append(CurvePoint(value, means, len(members)))
    return points


@dataclass
class Curve:
    """The runs of one method along its swept key (param None: nothing varies, or the choice is ambiguous)."""

    method: str
    label: str
    param: str | None
    runs: list[Run]

    def points(self) -> list[CurvePoint]:
        return curve_points(self.runs, self.param) if self.param else []


def unique_labels(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} (config variant {seen[label]})")
    return unique


def method_curves(table: Table, param: str | None = None) -> list[Curve]:
    """Every method row's runs of the table, as curves along the swept key."""
    by_method: dict[str, list[Run]] = {}
    for row in table.rows:
        if row.kind == "method" and row.group:
            by_method.setdefault(row.group.method, []).extend(row.group.runs)
    result = []
    for method, runs in by_method.items():
        key = swept_param(runs, param)
        if key is None:
            result.append(Curve(method, method, None, runs))
            continue
        result += labelled_curves(method, runs, key)
    return result


def labelled_curves(method: str, runs: Sequence[Run], key: str) -> list[Curve]:
    """The method's runs as curves along `key`, one per value of the settings that vary besides it, each labelled
    by those settings (`npo [recipe.learning_rate=0.001]`)."""
    groups = list(curves(runs, key).values())
    configs = [comparable_config(members[0], (*ROW_EXCLUDED, key)) for members in groups]
    labels = unique_labels([settings_label(method, s) for s in distinguishing_settings(configs)])
    return [Curve(method, label, key, list(members)) for members, label in zip(groups, labels, strict=True)]


def oracle_value(table: Table, metric: str) -> float | None:
    """The oracle's mean `metric` over the table's distinct oracle models (whether or not it is a column)."""
    values: dict[str, float] = {}
    for run in table.runs:
        reference = run.reference("oracle")
        if metric in reference:
            artifact = run.artifacts.get("oracle")
            values.setdefault(str(artifact) if artifact else f"seed={run.seed}", reference[metric])
    return statistics.fmean(values.values()) if values else None


def matched_forgetting(
    table: Table, metric: str, param: str | None = None, scale: str = "linear"
) -> list[MatchedResult]:
    """Every method curve of the table matched to the oracle's value of `metric`, the crossing placed on the
    metric's `scale` (SCALES)."""
    if scale not in SCALES:
        raise ValueError(f"matched-forgetting scale {scale!r}: choose among {', '.join(SCALES)}")
    target_value = oracle_value(table, metric)
    if target_value is None:
        raise ValueError(f"table {table.id}: the oracle has no {metric}, so there is nothing to match")
    results = []
    for curve in method_curves(table, param):
        if curve.param is not None:
            results.append(match_curve(curve.label, curve.param, metric, target_value, curve.points(), scale))
        elif strength_key := next((k for k in STRENGTH_KEYS if k in varying_numeric_keys(curve.runs)), None):
            results += [
                match_curve(strength.label, strength_key, metric, target_value, strength.points(), scale)
                for strength in labelled_curves(curve.method, curve.runs, strength_key)
            ]
        else:
            result = MatchedResult(curve.label, "-", metric, target_value, [], reached=False, scale=scale)
            result.note = "no swept hyperparameter (pass --sweep-param when several vary)"
            results.append(result)
    return results


def _selection_kind(table: Table) -> str:
    """What the matching reads: a test table's own forget set is the test set."""
    return (
        "on the validation forget set" if table.forget_split.endswith("(validation)") else "selection on test"
    )


def to_markdown(table: Table, metric: str, results: Sequence[MatchedResult]) -> str:
    if not results:
        return ""
    target_value = results[0].target_value
    columns = [c for c in table.columns if c != metric]
    headers = ["method", "swept", "value at match", *columns, "bracketed by"]
    lines = [
        f"### Matched forgetting ({_selection_kind(table)}): {table.title}",
        "",
        f"Each method's sweep interpolated to {metric} = {target_value:.4g} (the oracle's), the crossing placed on "
        f"{metric}'s {results[0].scale} scale; other metrics read there, linearly between the two runs. The point is chosen by reading this table's own forget set; "
        "`--select-on validation` chooses on a validation forget set instead (docs/validation_protocol.md).",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---", "---", "---:"] + ["---:"] * len(columns) + ["---"]) + "|",
    ]
    for r in results:
        short = r.param.removeprefix("method.")
        if r.reached:
            cells = [f"{r.values[c]:.4g}" if c in r.values else "—" for c in columns]
            lines.append("| " + " | ".join([r.label, short, f"{r.param_value:.4g}", *cells, r.note]) + " |")
        else:
            cells = ["—"] * len(columns)
            lines.append("| " + " | ".join([r.label, short, "—", *cells, r.note]) + " |")
    return "\n".join(lines) + "\n"


def to_records(table: Table, results: Sequence[MatchedResult]) -> list[dict]:
    records = []
    for r in results:
        record = {
            "table": table.id,
            "method": r.label,
            "param": r.param,
            "metric": r.metric,
            "oracle_value": r.target_value,
            "reached": r.reached,
            "param_value": r.param_value,
            "weight": r.weight,
            "scale": r.scale,
            "note": r.note,
            "values": r.values,
        }
        if r.bracket:
            record["bracket"] = [
                {"param": p.param, "n": p.n, r.metric: p.metrics.get(r.metric)} for p in r.bracket
            ]
        records.append(record)
    return records
