"""The unlearning dynamics of a report table (results.json's `dynamics`, docs/unlearning_dynamics.md): per method row,
a forget metric and a utility metric against the epoch of the one training run they were evaluated in (mean over
the row's seeds, error bar = ±1 sample std, as the tables' cells), the target and the oracle as horizontal lines;
and the points themselves as a CSV (one line per run and point) and a Markdown summary.

The points never enter the tables or the matched-forgetting comparison, which read each run's final model: with a
learning rate that decays over the run, the point at epoch e is not the model an e-epoch run gives.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from msa_bench.pipeline.dynamics import schedule_matches_shorter_runs
from msa_bench.reporting.collect import Run
from msa_bench.reporting.plot_layout import LOG_BAR_NOTE, error_bar, new_figure, save, series_style, wrapped
from msa_bench.reporting.request_plots import FORGET_CHOICES, UTILITY_CHOICES
from msa_bench.reporting.tables import Cell as TableCell
from msa_bench.reporting.tables import Row, Table, format_cell, metric_label

PANEL_WIDTH = 5.5  # inches per panel
DODGE = 0.012  # sideways shift between rows, as a fraction of the epochs' span
NOTE = (
    "each line: one training run per seed, evaluated along the way (rows shifted slightly sideways); points: mean "
    "over seeds, bars: ±1 sample std. "
    "With a decaying learning rate the point at epoch e is not an e-epoch run (docs/unlearning_dynamics.md)"
)


def dynamics_rows(table: Table) -> list[Row]:
    """The method rows of which some run has dynamics (the checkpoint ablation's rows are MSA's, which has none)."""
    return [
        row
        for row in table.rows
        if row.kind == "method" and row.group and any(run.record.dynamics for run in row.group.runs)
    ]


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def by_epoch(runs: list[Run], metric: str) -> dict[float, list[float]]:
    """{epoch: the values of `metric` at that epoch, one per run that has it}, in epoch order."""
    found: dict[float, list[float]] = {}
    for run in runs:
        for point in run.record.dynamics:
            value = (point.get("metrics") or {}).get(metric)
            if _number(value):
                found.setdefault(round(float(point["epoch"]), 6), []).append(float(value))
    return dict(sorted(found.items()))


def chosen_metrics(rows: list[Row]) -> tuple[str | None, str | None]:
    """The forget and the utility metric to draw: the first of each list that the points hold."""
    held = {
        name
        for row in rows
        for run in row.group.runs
        for point in run.record.dynamics
        for name, value in (point.get("metrics") or {}).items()
        if _number(value)
    }
    forget = next((m for m in FORGET_CHOICES if m in held), None)
    utility = next((m for m in UTILITY_CHOICES if m in held), None)
    return forget, utility


def _schedule(run: Run) -> dict:
    method = run.config.get("method")
    recipe = method.get("recipe") if isinstance(method, dict) else None
    return recipe if isinstance(recipe, dict) else {}


def series_label(row: Row) -> str:
    """The row's name and its learning-rate schedule, which says how far a point is from a shorter run."""
    schedules = sorted({str(_schedule(run).get("lr_scheduler", "?")) for run in row.group.runs})
    return f"{row.label} (LR {', '.join(schedules)})"


def _references(rows: list[Row], role: str, metric: str) -> list[float]:
    """The target's or the oracle's value of `metric`, one per distinct model among the rows' runs."""
    distinct: dict[str, float] = {}
    for row in rows:
        for run in row.group.runs:
            value = run.reference(role).get(metric)
            if value is not None:
                distinct.setdefault(str(run.artifacts.get(role) or run.seed), value)
    return list(distinct.values())


def plot_dynamics(table: Table, out_dir: Path) -> Path | None:
    """`<table id>_dynamics.png`, None when no run of the table has dynamics."""
    rows = dynamics_rows(table)
    forget, utility = chosen_metrics(rows)
    metrics = [m for m in (forget, utility) if m is not None]
    if not rows or not metrics:
        return None
    figure, grid = new_figure(PANEL_WIDTH * len(metrics), 4.4, 1, len(metrics))
    logged = False
    all_epochs: set[float] = set()
    for axes, metric in zip(grid[0], metrics, strict=True):
        series = [(row, by_epoch(row.group.runs, metric)) for row in rows]
        references = {role: _references(rows, role, metric) for role in ("target", "oracle")}
        held = [v for _, points in series for values in points.values() for v in values]
        held += [v for values in references.values() for v in values]
        log_axis = metric == "forget_quality" and bool(held) and all(v > 0 for v in held)
        if log_axis:
            axes.set_yscale("log")
            logged = True
        epochs = {e for _, points in series for e in points}
        span = (max(epochs) - min(epochs)) if len(epochs) > 1 else 1.0
        for index, (row, points) in enumerate(series):
            if not points:
                continue
            all_epochs |= set(points)
            # Rows share their epochs: each is shifted a little sideways so that no bar hides another's.
            shift = (index - (len(series) - 1) / 2) * DODGE * span
            means = [statistics.fmean(v) for v in points.values()]
            stds = [statistics.stdev(v) if len(v) > 1 else None for v in points.values()]
            bars = [
                error_bar(m, s, v, log_axis) for m, s, v in zip(means, stds, points.values(), strict=True)
            ]
            axes.errorbar(
                [epoch + shift for epoch in points],
                means,
                yerr=[[b[0] for b in bars], [b[1] for b in bars]],
                capsize=2,
                label=series_label(row),
                **series_style(index, len(series)),
            )
        for role, linestyle in (("target", ":"), ("oracle", "-.")):
            if references[role]:
                axes.axhline(
                    statistics.fmean(references[role]), linestyle=linestyle, color="gray", label=role
                )
        axes.set_xlabel("epoch of the training run")
        name = metric_label(metric)
        axes.set_ylabel(name + (" (log scale)" if log_axis else ""))
        axes.set_title(f"{name} ({'forgetting' if metric == forget else 'utility'})", fontsize=9)
        axes.grid(True, alpha=0.3)
    if all_epochs and all(float(e).is_integer() for e in all_epochs):
        for axes in grid[0]:
            axes.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = grid[0, 0].get_legend_handles_labels()
    # The method rows first, then the two references (matplotlib lists the plain lines before the error bars).
    order = sorted(range(len(labels)), key=lambda i: labels[i] in ("target", "oracle"))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    figure.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=7)
    width = PANEL_WIDTH * len(metrics)
    note = NOTE + (f"; {LOG_BAR_NOTE}" if logged else "")
    figure.suptitle(
        wrapped(f"Unlearning dynamics: {table.title}", width, 9) + "\n" + wrapped(note, width, 8), fontsize=8
    )
    return save(figure, out_dir / f"{table.id}_dynamics.png")


def dynamics_csv(table: Table) -> str | None:
    """One line per run and point: the row, the seed, the epoch and step, whether it is the run's final model,
    the schedule (and whether the point is therefore the model of a shorter run), then every metric."""
    rows = dynamics_rows(table)
    if not rows:
        return None
    runs = [(row, run) for row in rows for run in row.group.runs if run.record.dynamics]
    names = sorted(
        {name for _, run in runs for point in run.record.dynamics for name in point.get("metrics") or {}}
    )
    first = [n for n in table.columns if n in names]
    names = first + [n for n in names if n not in first]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "row",
            "seed",
            "epoch",
            "step",
            "final",
            "lr_scheduler",
            "point_is_a_shorter_run",
            "eval_wall_seconds",
            *names,
        ]
    )
    for row, run in runs:
        schedule = _schedule(run)
        for point in run.record.dynamics:
            metrics = point.get("metrics") or {}
            writer.writerow(
                [
                    row.label,
                    run.seed,
                    point.get("epoch"),
                    point.get("step"),
                    bool(point.get("final")),
                    schedule.get("lr_scheduler", ""),
                    schedule_matches_shorter_runs(schedule) if schedule else "",
                    _blank(point.get("eval_wall_seconds")),
                    *(_blank(metrics.get(name)) for name in names),
                ]
            )
    return buffer.getvalue()


def _blank(value):
    return "" if value is None else value


def dynamics_markdown(table: Table) -> str:
    """The curves' numbers, mean ± std over seeds per row and epoch, below the table they belong to."""
    rows = dynamics_rows(table)
    forget, utility = chosen_metrics(rows)
    metrics = [m for m in (forget, utility) if m is not None]
    if not rows or not metrics:
        return ""
    lines = [
        f"### Unlearning dynamics: {table.title}",
        "",
        "Each method row's training run evaluated along the way (results.json `dynamics`; mean ± std over seeds, n "
        "runs). These points are not in the table above, which reads each run's final model: with a decaying "
        "learning rate, the point at epoch e is not an e-epoch run (docs/unlearning_dynamics.md).",
        "",
        "| row | epoch | " + " | ".join(metric_label(m) for m in metrics) + " | n |",
        "|---|---:|" + "---:|" * len(metrics) + "---:|",
    ]
    for row in rows:
        per_metric = {m: by_epoch(row.group.runs, m) for m in metrics}
        epochs = sorted({e for points in per_metric.values() for e in points})
        for epoch in epochs:
            cells = [TableCell.of(per_metric[m].get(epoch, [])) for m in metrics]
            n = max(cell.n for cell in cells)
            shown = " | ".join(format_cell(cell, n) for cell in cells)
            lines.append(f"| {series_label(row)} | {epoch:g} | {shown} | {n} |")
    return "\n".join(lines) + "\n"
