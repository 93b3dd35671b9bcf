"""The noise floor of a report table (results.json's `noise_floor`, msa_bench/pipeline/noise_floor.py): how far from
the oracle a retrained model lands when only its seed changes, per cross-model metric, and which rows of the table
are inside that floor, i.e. no farther from the oracle than another oracle is.

A table's floor pools the oracle pairs of every distinct floor among its runs (one per seed of the runs: runs that
share an oracle share its floor) and takes the least favourable pair value, by the rule of the pipeline module. A
row is inside when its mean over seeds is; `≈` marks it. The verdict reads the mean only: with 3 seeds it says where
a row lands on average, not that each of its runs does.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from msa_bench.metrics.registry import Direction
from msa_bench.pipeline.noise_floor import floor_of, is_inside
from msa_bench.reporting.collect import Run
from msa_bench.reporting.tables import Cell, Row, Table, format_number, metric_label
from msa_bench.reporting.tables import _method_row as method_row
from msa_bench.reporting.tables import _reference_row as reference_row

INSIDE_MARK = "≈"


@dataclass
class FloorMetric:
    """One metric's floor over a table's runs."""

    metric: str
    direction: Direction
    ideal: float | None
    bound: float | None
    pair_values: list[float]

    def entry(self) -> dict:
        return {"direction": str(self.direction), "ideal": self.ideal, "bound": self.bound}


@dataclass
class Verdict:
    row: str
    metric: str
    mean: float | None
    n: int
    inside: bool | None


@dataclass
class NoiseFloorSection:
    oracle_sets: list[list[int]]  # the seeds of each distinct floor's oracles
    metrics: list[FloorMetric]
    verdicts: list[Verdict] = field(default_factory=list)

    def inside(self, row: str, metric: str) -> bool | None:
        return next((v.inside for v in self.verdicts if v.row == row and v.metric == metric), None)


def distinct_floors(runs: Sequence[Run]) -> list[dict]:
    """The runs' noise floors, each once (runs of one seed share their oracles, and so their floor)."""
    seen: dict[tuple, dict] = {}
    for run in runs:
        floor = run.record.noise_floor
        if floor:
            seen.setdefault(tuple(sorted((floor.get("oracles") or {}).values())), floor)
    return list(seen.values())


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def noise_floor_section(table: Table) -> NoiseFloorSection | None:
    """The table's noise floor and each row's verdict; None when no run of the table measured one."""
    floors = distinct_floors(table.runs)
    if not floors:
        return None
    metrics = []
    names = [name for name in floors[0].get("floor", {}) if all(name in f.get("floor", {}) for f in floors)]
    for name in names:
        direction = Direction(floors[0]["floor"][name]["direction"])
        values = [
            float(pair["metrics"][name])
            for floor in floors
            for pair in floor.get("pairs", [])
            if _number((pair.get("metrics") or {}).get(name))
        ]
        ideals = [f["floor"][name]["ideal"] for f in floors if _number(f["floor"][name].get("ideal"))]
        ideal = statistics.fmean(ideals) if ideals else None
        metrics.append(FloorMetric(name, direction, ideal, floor_of(direction, values, ideal), values))
    section = NoiseFloorSection([list(f.get("oracle_seeds", [])) for f in floors], metrics)
    for row in table.rows:
        cells = floor_cells(table, row, [m.metric for m in metrics])
        if cells is None:
            continue
        for metric in metrics:
            cell = cells[metric.metric]
            inside = is_inside(cell.mean, metric.entry())
            section.verdicts.append(Verdict(row.label, metric.metric, cell.mean, cell.n, inside))
    return section


def floor_cells(table: Table, row: Row, names: list[str]) -> dict[str, Cell] | None:
    """The row's cells of the floor's metrics, aggregated as the table's own cells are, also where the table does
    not show a metric (TOFU's tables leave privleak out); None for rows that are not ours (the paper's)."""
    if row.kind == "reference":
        return reference_row(row.label, table.runs, names).cells
    if row.kind == "method" and row.group is not None:
        return method_row(row.group, names).cells
    return None


def _rule(metric: FloorMetric) -> str:
    bound = format_number(metric.bound)
    if metric.direction is Direction.HIGHER:
        return f"≥ {bound}"
    if metric.direction is Direction.LOWER:
        return f"≤ {bound}"
    return f"within {bound} of {format_number(metric.ideal)}"


def to_markdown(section: NoiseFloorSection, table: Table) -> str:
    n_oracles = sorted({len(seeds) for seeds in section.oracle_sets})
    lines = [
        f"### Noise floor: {table.title}",
        "",
        f"Oracles retrained with other seeds (benchmark.oracle_seeds; {len(section.oracle_sets)} set(s) of "
        f"{'/'.join(map(str, n_oracles))} oracles, seeds {'; '.join(', '.join(map(str, s)) for s in section.oracle_sets)}"
        "), each scored against the others. A value inside the floor is no farther from the oracle than another "
        f"oracle is: {INSIDE_MARK} marks the rows whose mean over seeds is inside.",
        "",
        "| metric | oracle pairs | pair values (min – max) | inside when |",
        "|---|---:|---|---|",
    ]
    for metric in section.metrics:
        spread = (
            f"{format_number(min(metric.pair_values))} – {format_number(max(metric.pair_values))}"
            if metric.pair_values
            else "—"
        )
        lines.append(
            f"| {metric_label(metric.metric)} | {len(metric.pair_values)} | {spread} | {_rule(metric)} |"
        )
    lines += [
        "",
        "| row | " + " | ".join(metric_label(m.metric) for m in section.metrics) + " |",
        "|---|" + "---:|" * len(section.metrics),
    ]
    rows = list(dict.fromkeys(v.row for v in section.verdicts))
    for row in rows:
        cells = []
        for metric in section.metrics:
            verdict = next(v for v in section.verdicts if v.row == row and v.metric == metric.metric)
            mark = f" {INSIDE_MARK}" if verdict.inside else ""
            cells.append(f"{format_number(verdict.mean)}{mark}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(section: NoiseFloorSection, table: Table) -> str:
    """One line per row and metric: the row's mean, the table's floor and whether the mean is inside it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["table", "row", "metric", "mean", "n", "direction", "ideal", "bound", "inside_noise_floor"]
    )
    by_name = {m.metric: m for m in section.metrics}
    for verdict in section.verdicts:
        metric = by_name[verdict.metric]
        writer.writerow(
            [
                table.id,
                verdict.row,
                verdict.metric,
                "" if verdict.mean is None else verdict.mean,
                verdict.n,
                str(metric.direction),
                "" if metric.ideal is None else metric.ideal,
                "" if metric.bound is None else metric.bound,
                "" if verdict.inside is None else verdict.inside,
            ]
        )
    return buffer.getvalue()
