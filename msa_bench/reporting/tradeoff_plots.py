"""The trade-off plot: forget quality (MUSE: PrivLeak) against model utility (MUSE: KnowMem on the retain set).

Per method, the seed means at each swept value are joined along the sweep, the swept value written beside each point
where it overlaps nothing; a row of a method without a sweep is a point of its own. Every point has bars of ±1
sample std over seeds on both axes, as the tables' cells; the target and the oracle are reference points. A few
series share one axes, their names in a legend beside it; more than that get one panel each (small multiples on
shared axes, every other series in grey behind), since a dozen curves with bars on one axes cannot be read. A
method's grid over two keys (learning rate × epochs) is a panel of lines, one per value of one key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from msa_bench.reporting.collect import Run
from msa_bench.reporting.matched import method_curves
from msa_bench.reporting.plot_layout import (
    LOG_BAR_NOTE,
    PointLabel,
    error_bar,
    new_figure,
    place_labels,
    save,
    series_style,
    wrapped,
)
from msa_bench.reporting.tables import Cell, Table, metric_label

# The trade-off each benchmark family is read by: (what is kept, what is forgotten). MUSE's forgetting axis is
# PrivLeak, whose ideal is 0 (negative: still recognisable as trained on; positive: over-forgotten).
TRADEOFF_AXES = {
    "tofu": ("model_utility", "forget_quality"),
    "muse": ("retain_knowmem_ROUGE", "muse_privleak"),
}
OVERLAY_MAX_SERIES = 5  # more series than this, or than this many sweeps, get a panel each
PANEL_COLUMNS = 4
CONTEXT_GREY = "0.86"


@dataclass
class TradeoffPoint:
    """Both metrics over the seeds at one point (mean, std, n) and the seeds' values (a log axis's bars need the
    lowest)."""

    x: Cell
    y: Cell
    x_values: list[float]
    y_values: list[float]
    text: str = ""  # written beside the point: the swept value, or the row's name in a panel of unswept rows


@dataclass
class TradeoffSeries:
    method: str
    label: str
    points: list[TradeoffPoint]
    joined: bool  # a line along a sweep of 2+ values; otherwise one point, its text the settings that name it


def _point(runs: Sequence[Run], x_metric: str, y_metric: str, text: str = "") -> TradeoffPoint | None:
    usable = [r for r in runs if x_metric in r.metrics and y_metric in r.metrics]
    if not usable:
        return None
    xs = [r.metrics[x_metric] for r in usable]
    ys = [r.metrics[y_metric] for r in usable]
    return TradeoffPoint(Cell.of(xs), Cell.of(ys), xs, ys, text)


def _sweep_points(runs: Sequence[Run], param: str, x_metric: str, y_metric: str) -> list[TradeoffPoint]:
    """The seeds at each swept value, in the sweep's order."""
    by_value: dict[float, list[Run]] = {}
    for run in runs:
        value = run.flat_config.get(param)
        if isinstance(value, int | float) and not isinstance(value, bool):
            by_value.setdefault(float(value), []).append(run)
    points = [
        _point(members, x_metric, y_metric, f"{value:g}") for value, members in sorted(by_value.items())
    ]
    return [p for p in points if p is not None]


def _settings(label: str, method: str) -> str:
    """`msa [checkpoint=base] (beta=1)` -> `checkpoint=base beta=1`: a point's name once its panel names the
    method."""
    text = (
        label.removeprefix(method).strip().replace("[", "").replace("]", "").replace("(", "").replace(")", "")
    )
    return " ".join(text.split()) or method


def tradeoff_series(table: Table, x_metric: str, y_metric: str, param: str | None) -> list[TradeoffSeries]:
    """Each method curve along its swept key, and each row of a method without one as a point of its own (joining
    its rows, or its seeds, would draw a sweep that was never run). A "curve" of one swept value is a point too."""
    series = []
    rows = [r for r in table.rows if r.kind == "method" and r.group]
    for curve in method_curves(table, param):
        if curve.param:
            points = _sweep_points(curve.runs, curve.param, x_metric, y_metric)
            short = curve.param.removeprefix("method.")
            if len(points) == 1:
                label = f"{curve.label} ({short}={points[0].text})"
                points[0].text = _settings(label, curve.method)
                series.append(TradeoffSeries(curve.method, label, points, joined=False))
            else:
                series.append(
                    TradeoffSeries(curve.method, f"{curve.label} (along {short})", points, joined=True)
                )
            continue
        for row in rows:
            if row.group.method == curve.method:
                point = _point(row.group.runs, x_metric, y_metric, _settings(row.label, curve.method))
                series.append(TradeoffSeries(curve.method, row.label, [point] if point else [], joined=False))
    return [s for s in series if s.points]


def reference_values(table: Table, label: str, metric: str) -> list[float]:
    """The reference model's value per distinct model, as its table row counts them."""
    distinct: dict[str, float] = {}
    for run in table.runs:
        value = run.reference(label).get(metric)
        if value is not None:
            artifact = run.artifacts.get(label)
            distinct.setdefault(str(artifact) if artifact else f"seed={run.seed}", value)
    return list(distinct.values())


def error_bars(points: Sequence[TradeoffPoint], log_y: bool) -> tuple[list[list[float]], list[list[float]]]:
    """matplotlib's xerr and yerr, [[below...], [above...]], of the points."""
    xerr = [error_bar(p.x.mean, p.x.std, p.x_values, False) for p in points]
    yerr = [error_bar(p.y.mean, p.y.std, p.y_values, log_y) for p in points]
    return [list(side) for side in zip(*xerr, strict=True)], [list(side) for side in zip(*yerr, strict=True)]


@dataclass
class _Plot:
    """What every axes of one trade-off figure draws from."""

    series: list[TradeoffSeries]
    references: list[tuple[str, str, str, TradeoffPoint]]  # (name, marker, colour, point)
    log_y: bool

    def y(self, value: float) -> float:
        return max(value, 1e-300) if self.log_y else value

    def draw_references(self, axes) -> list[tuple[float, float]]:
        for name, marker, color, point in self.references:
            xerr, yerr = error_bars([point], self.log_y)
            axes.errorbar(
                [point.x.mean],
                [self.y(point.y.mean)],
                xerr=xerr,
                yerr=yerr,
                fmt=marker,
                markersize=13,
                color=color,
                markeredgecolor="black",
                ecolor="grey",
                elinewidth=0.8,
                capsize=2,
                zorder=4,
                label=f"{name} (n={point.x.n})",
            )
        return [(p.x.mean, self.y(p.y.mean)) for *_, p in self.references]

    def draw(self, axes, entry: TradeoffSeries, style: dict, label: str | None) -> list[PointLabel]:
        xs = [p.x.mean for p in entry.points]
        ys = [self.y(p.y.mean) for p in entry.points]
        xerr, yerr = error_bars(entry.points, self.log_y)
        _, caps, bars = axes.errorbar(
            xs,
            ys,
            xerr=xerr,
            yerr=yerr,
            linestyle="-" if entry.joined else "none",
            linewidth=1.3,
            markersize=5,
            elinewidth=0.7,
            capsize=2,
            zorder=3,
            label=label,
            **style,
        )
        for artist in (*caps, *bars):
            artist.set_alpha(0.55)  # the means and the line stay the strongest marks
        return [
            PointLabel(x, y, p.text, style["color"]) for x, y, p in zip(xs, ys, entry.points, strict=True)
        ]

    def draw_context(self, axes, entry: TradeoffSeries) -> None:
        xs = [p.x.mean for p in entry.points]
        ys = [self.y(p.y.mean) for p in entry.points]
        style = {
            "linestyle": "-" if entry.joined else "none",
            "linewidth": 0.9,
            "marker": "o",
            "markersize": 2.5,
        }
        axes.plot(xs, ys, color=CONTEXT_GREY, zorder=1, **style)  # behind the panel's own series


def plot_tradeoff(
    table: Table,
    out_dir: Path,
    x_metric: str = "model_utility",
    y_metric: str = "forget_quality",
    param: str | None = None,
) -> Path | None:
    """`<table id>_tradeoff.png`, None when the table lacks either metric or nothing has both."""
    if x_metric not in table.columns or y_metric not in table.columns:
        return None
    log_y = y_metric == "forget_quality"  # KS p-values span tens of orders of magnitude
    references = []
    for name, marker, color in (("target", "X", "black"), ("oracle", "*", "gold")):
        xs, ys = reference_values(table, name, x_metric), reference_values(table, name, y_metric)
        if xs and ys:
            references.append((name, marker, color, TradeoffPoint(Cell.of(xs), Cell.of(ys), xs, ys)))
    plot = _Plot(tradeoff_series(table, x_metric, y_metric, param), references, log_y)
    if not plot.series and not references:
        return None
    sweeps = [s for s in plot.series if s.joined]
    note = "points: mean over seeds; bars: ±1 sample std over seeds; numbers: the swept value"
    if log_y:
        note += f"; {LOG_BAR_NOTE}"
    axis_labels = (metric_label(x_metric), metric_label(y_metric) + (" (log scale)" if log_y else ""))
    singles = [s.method for s in plot.series if not s.joined]
    grouped = sweeps or len(set(singles)) < len(singles)  # some panel would hold one method's curve or grid
    if len(plot.series) <= OVERLAY_MAX_SERIES or not grouped:
        figure = _overlay(plot, table.title, note, axis_labels)
    else:
        figure = _panels(plot, table.title, note, axis_labels)
    return save(figure, out_dir / f"{table.id}_tradeoff.png")


def _overlay(plot: _Plot, title: str, note: str, axis_labels: tuple[str, str]):
    figure, grid = new_figure(9.0, 5.4)
    axes = grid[0, 0]
    if plot.log_y:
        axes.set_yscale("log")
    marked = plot.draw_references(axes)
    labels: list[PointLabel] = []
    for index, entry in enumerate(plot.series):
        drawn = plot.draw(axes, entry, series_style(index, len(plot.series)), wrapped(entry.label, 4.0, 7))
        if entry.joined:  # an unswept row is named in the legend; only swept values are written beside points
            labels += drawn
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    axes.set_title(wrapped(title, 6.0, 9) + "\n" + wrapped(note, 6.0, 7), fontsize=8)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    place_labels(axes, labels, obstacles=marked)
    return figure


@dataclass
class Panel:
    """One axes of the small multiples: what it draws in colour (`members`), and which of the plot's series those
    stand for (`covers`: the members themselves, or the single points a grid's lines were built from), so that they
    are not drawn again in grey behind."""

    title: str
    members: list[TradeoffSeries]
    covers: list[TradeoffSeries]
    by_row: bool = False  # its points are named by their row (the panel of methods run at one setting)
    legend: bool = False  # its lines are named in a legend of its own (a grid: one line per value of a key)


def panel_groups(series: Sequence[TradeoffSeries]) -> list[Panel]:
    """One panel per sweep (its points named by the swept value); one per method with several single points (a
    grid over two numeric keys as a line per value of one key, its points named by the other; any other set of
    points named by their settings); one for the methods that are a single point each (named by their row)."""
    panels = [Panel(s.label, [s], [s]) for s in series if s.joined]
    singles: dict[str, list[TradeoffSeries]] = {}
    for entry in series:
        if not entry.joined:
            singles.setdefault(entry.method, []).append(entry)
    alone = []
    for method, members in singles.items():
        if len(members) > 1:
            shared = _drop_shared_settings(members)
            suffix = f" (all {shared})" if shared else ""
            grid = _grid_lines(method, members)
            if grid is not None:
                lines, along, across = grid
                title = f"{method}: along {along}, a line per {across}{suffix}"
                panels.append(Panel(title, lines, members, legend=True))
            else:
                panels.append(Panel(f"{method}: one point per setting{suffix}", members, members))
        else:
            alone.append(members[0])
    if alone:
        panels.append(Panel("methods run at one setting", alone, alone, by_row=True))
    return panels


def _drop_shared_settings(members: Sequence[TradeoffSeries]) -> str:
    """Name each point by what sets it apart in its panel; the settings every point shares are returned, for the
    panel's title, rather than repeated in every label."""
    tokens = [entry.points[0].text.split() for entry in members]
    shared = [word for word in tokens[0] if all(word in words for words in tokens[1:])]
    for entry, words in zip(members, tokens, strict=True):
        entry.points[0].text = " ".join(w for w in words if w not in shared) or entry.points[0].text
    return " ".join(shared)


def _numeric_settings(text: str) -> dict[str, float] | None:
    """`recipe.epochs=10.0 recipe.learning_rate=0.001` -> {"epochs": 10.0, "learning_rate": 0.001}; None when a
    word is not `key=number`."""
    settings = {}
    for word in text.replace(",", " ").split():
        key, _, value = word.partition("=")  # a word without "=" leaves value "", which float refuses
        try:
            settings[key.rsplit(".", 1)[-1]] = float(value)
        except ValueError:
            return None
    return settings


def _grid_lines(
    method: str, members: Sequence[TradeoffSeries]
) -> tuple[list[TradeoffSeries], str, str] | None:
    """A grid over exactly two numeric keys (a learning rate × epochs sweep of separate runs) drawn as one line per
    value of one key along the other, the points named by their value alone: nine points, each named by two full
    keys, cannot be labelled apart in a small panel. Joined along the key with more values (the first on a tie).
    These lines join separate runs; they are not one run's trajectory. None for any other set of points."""
    parsed = [_numeric_settings(entry.points[0].text) for entry in members]
    if any(p is None or len(p) != 2 for p in parsed) or len({tuple(p) for p in parsed}) != 1:
        return None
    first, second = parsed[0]
    counts = {key: len({p[key] for p in parsed}) for key in (first, second)}
    if min(counts.values()) < 2:
        return None
    along, across = (first, second) if counts[first] >= counts[second] else (second, first)
    by_value: dict[float, list[tuple[float, TradeoffPoint]]] = {}
    for settings, entry in zip(parsed, members, strict=True):
        by_value.setdefault(settings[across], []).append((settings[along], entry.points[0]))
    lines = []
    for value, points in sorted(by_value.items()):
        ordered = [replace(point, text=f"{x:g}") for x, point in sorted(points, key=lambda pair: pair[0])]
        lines.append(TradeoffSeries(method, f"{across}={value:g}", ordered, joined=len(ordered) > 1))
    return lines, along, across


def _panels(plot: _Plot, title: str, note: str, axis_labels: tuple[str, str]):
    """Small multiples on shared axes (panel_groups), every other panel's series in grey behind."""
    panels = panel_groups(plot.series)
    columns = min(PANEL_COLUMNS, len(panels))
    rows = -(-len(panels) // columns)
    width = 3.3 * columns
    figure, grid = new_figure(width, 2.9 * rows + 1.2, rows, columns, sharex=True, sharey=True)
    for place, axes in enumerate(grid.flat):
        if place >= len(panels):
            axes.set_visible(False)
        elif place + columns >= len(panels):  # nothing drawn below it: it carries the x ticks
            axes.xaxis.set_tick_params(labelbottom=True)
    for index, (axes, panel) in enumerate(zip(grid.flat, panels, strict=False)):
        if plot.log_y:
            axes.set_yscale("log")
        for entry in plot.series:
            if entry not in panel.covers:
                plot.draw_context(axes, entry)
        marked = plot.draw_references(axes)
        labels = []
        lines = []
        for number, entry in enumerate(panel.members):
            # A sweep keeps the colour it has in every panel; a panel of several series colours them apart.
            count = len(panel.members)
            style = series_style(index, len(panels)) if count == 1 else series_style(number, count)
            drawn = plot.draw(axes, entry, style, None)
            lines.append((axes.containers[-1], entry.label))
            labels += [
                replace(label, text=wrapped(entry.label if panel.by_row else label.text, 1.3, 6.5))
                for label in drawn
            ]
        axes.set_title(wrapped(panel.title, 3.1, 8), fontsize=8)
        axes.tick_params(labelsize=7)
        if panel.legend:
            # Not in the figure's legend, which names what every panel shares (the references, the grey).
            axes.legend(*zip(*lines, strict=True), fontsize=6, loc="best", framealpha=0.8)
        place_labels(axes, [label for label in labels if label.text], obstacles=marked, fontsize=6.5)
    handles, names = grid.flat[0].get_legend_handles_labels()
    (context,) = grid.flat[0].plot([], [], color=CONTEXT_GREY, marker="o", markersize=3)
    legend_names = [*names, "every other panel's series"]
    figure.legend([*handles, context], legend_names, loc="outside lower center", ncols=3, fontsize=7)
    for place, axes in enumerate(grid.flat[: len(panels)]):
        if place + columns >= len(panels):
            axes.set_xlabel(axis_labels[0], fontsize=8)
        if place % columns == 0:
            axes.set_ylabel(axis_labels[1], fontsize=8)
    figure.suptitle(wrapped(title, width, 10) + "\n" + wrapped(note, width, 8), fontsize=9)
    return figure
