"""Truth-ratio histograms: per method row, the per-item forget-set truth ratios of the target, the method and the
oracle (from the per_item.json beside each results.json, pooled over the row's seeds), as outlines in small
multiples on one shared axis: three filled histograms on one axes blend into colours no one can read."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from msa_bench.reporting.plot_layout import new_figure, plot_stem, save, unique_stems, wrapped
from msa_bench.reporting.tables import Row, Table

TRUTH_RATIO = "forget_truth_ratio"
# role in per_item.json, in the order of the panels -> (colour, style of its median line, outline width); the
# median lines' dashes tell the models apart without colour.
STYLES = {
    "target": ("tab:red", "--", 1.4),
    "method": ("tab:blue", "-", 1.6),
    "oracle": ("tab:green", ":", 1.4),
}


def _log_bins(values: Sequence[float], count: int = 30) -> list[float] | int:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if len(positive) < 2 or min(positive) == max(positive):
        return count
    low, high = math.log10(min(positive)), math.log10(max(positive))
    return [10 ** (low + (high - low) * i / count) for i in range(count + 1)]


def truth_ratio_series(row: Row, metric: str = TRUTH_RATIO) -> tuple[dict[str, list[float]], int]:
    """{role: values pooled over the row's runs} and how many runs had a per_item.json."""
    series: dict[str, list[float]] = {role: [] for role in STYLES}
    seeds = 0
    for run in row.group.runs:
        per_item = run.per_item()
        if not per_item:
            continue
        seeds += 1
        for role in STYLES:
            values = per_item.values(role, metric)
            series[role].extend(float(v) for v in values if isinstance(v, int | float))
    return series, seeds


def truth_ratio_stems(table: Table, rows: Sequence[Row]) -> list[str]:
    """One file stem per row: the table, the method and every setting that tells the row apart (the pretraining
    step of θ0 included), complete and distinct."""
    stems = [plot_stem(f"{table.id}_truth_ratio", row.group.method, row.group.settings) for row in rows]
    return unique_stems(stems, [row.group.runs[0].row_identity() for row in rows])


def plot_truth_ratios(table: Table, out_dir: Path, metric: str = TRUTH_RATIO) -> list[Path]:
    """One PNG per method row with per-item values: small multiples on one shared log axis, the target above, the
    method in the middle (where it moved to) and the oracle below (where it should be), each an outline with its
    median marked; the three medians are drawn in every panel so that the shift reads straight down the page."""
    rows = [r for r in table.rows if r.kind == "method" and r.group]
    paths = []
    for row, stem in zip(rows, truth_ratio_stems(table, rows), strict=True):
        series, seeds = truth_ratio_series(row, metric)
        if not series["method"]:
            continue
        shown = {role: [max(v, 1e-300) for v in values] for role, values in series.items() if values}
        every = [v for values in shown.values() for v in values]
        bins = _log_bins(every, max(10, min(30, round(2 * math.sqrt(max(map(len, shown.values())))))))
        medians = {role: statistics.median(values) for role, values in shown.items()}
        figure, grid = new_figure(6.5, 1.5 * len(shown) + 1.4, len(shown), 1, sharex=True, sharey=True)
        for axes, (role, values) in zip(grid[:, 0], shown.items(), strict=True):
            color, linestyle, width = STYLES[role]
            name = row.group.method if role == "method" else role
            axes.hist(values, bins=bins, histtype="step", color=color, linewidth=width)
            for other, median in medians.items():
                other_color, other_style, _ = STYLES[other]
                axes.axvline(
                    median, color=other_color, linestyle=other_style, linewidth=1.0 if other == role else 0.7
                )
            axes.text(
                0.01,
                0.95,
                f"{name}: n={len(values)}, median {medians[role]:.3g}",
                transform=axes.transAxes,
                ha="left",
                va="top",
                fontsize=7,
                color=color,
            )
            axes.set_ylabel("items", fontsize=8)
            axes.tick_params(which="both", labelsize=7)
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
            axes.margins(y=0.25)  # headroom for the panel's name above the tallest bin
            if not isinstance(bins, int):
                axes.set_xscale("log")
        grid[-1, 0].set_xlabel(
            "forget-set truth ratio P(perturbed)/P(paraphrased) per item (log scale)", fontsize=8
        )
        pooled = f"items pooled over {seeds} seed{'s' if seeds != 1 else ''}"
        note = (
            f"{pooled}; vertical lines: the medians (red dashed: target, blue: method, green dotted: oracle)"
        )
        figure.suptitle(
            wrapped(f"{row.label}: {table.title}", 6.3, 8) + "\n" + wrapped(note, 6.3, 7), fontsize=8
        )
        paths.append(save(figure, out_dir / f"{stem}.png"))
    return paths
