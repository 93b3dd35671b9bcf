"""The checkpoint ablation plot: per metric, MSA's value against its θ0, from the earliest state to θ_D itself.

The x axis is a distance where the results give one for every θ0: the pretraining step (`checkpoint.step`) or the
pretraining tokens a hub revision names (olmo2_7b_500b -> 500e9). A mix of saved steps and named stages (base,
instruct, target) has no common measure in results.json, so it is an ordered axis whose ticks name each θ0 with
its step. Rows that differ in more than θ0 (β = 0 and β = 1) are separate lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msa_bench.reporting.collect import Run
from msa_bench.reporting.plot_layout import LOG_BAR_NOTE, error_bar, new_figure, save, series_style, wrapped
from msa_bench.reporting.tables import Row, Table, metric_label

_TOKENS = re.compile(r"(\d+(?:\.\d+)?)\s*([bt])\b", re.IGNORECASE)
# Where each stage sits between the start of pretraining and θ_D (closest is the instruct model, or the clean one).
STAGE_ORDER = {"pretrain": 0, "base": 1, "instruct": 2, "closest": 2, "clean": 2, "target": 3}
MAX_MEASURED_TICKS = 12
STAGE_NAMES = {"base": "base (end of pretraining)", "target": "target (θ0 = θ_D)"}


def checkpoint_position(run: Run) -> float | None:
    """Where θ0 sits in training, when known: a pretraining step, or a token count in the checkpoint's name
    (olmo2_7b_500b -> 500e9)."""
    checkpoint = run.config.get("checkpoint") or {}
    if checkpoint.get("step") is not None:
        return float(checkpoint["step"])
    for text in (str(checkpoint.get("name", "")).replace("_", " "), str(checkpoint.get("revision") or "")):
        match = _TOKENS.search(text.replace("-", " "))
        if match:
            return float(match.group(1)) * (1e12 if match.group(2).lower() == "t" else 1e9)
    return None


@dataclass(frozen=True)
class Theta0:
    """One θ0 of the ablation, as a point on its x axis."""

    name: str
    stage: str
    step: Any
    position: float | None
    unit: str | None  # "step" or "tokens", when `position` is known

    @classmethod
    def of(cls, run: Run) -> Theta0:
        checkpoint = run.config.get("checkpoint") or {}
        step = checkpoint.get("step")
        position = checkpoint_position(run)
        unit = None if position is None else ("step" if step is not None else "tokens")
        return cls(run.checkpoint, str(checkpoint.get("stage") or run.checkpoint), step, position, unit)

    def order(self) -> tuple:
        # Only a pretraining state has a step (checkpoint=pretrain_step); a revision with a token count is one too.
        if self.step is not None:
            rank = STAGE_ORDER["pretrain"]
        else:
            rank = STAGE_ORDER.get(self.stage, STAGE_ORDER["pretrain"] if self.position is not None else 1)
        return (rank, self.position is None, self.position or 0.0, self.name)

    def tick(self) -> str:
        if self.step is not None:
            return f"pretraining step {self.step}"
        return STAGE_NAMES.get(self.stage, self.name)


def _series_label(row: Row) -> str:
    others = {k: v for k, v in row.group.settings.items() if not k.startswith("checkpoint")}
    settings = " ".join(f"{k}={v}" for k, v in others.items())
    return f"{row.group.method} {settings}" if settings else row.group.method


def _values(row: Row, column: str) -> list[float]:
    return [r.metrics[column] for r in row.group.runs if column in r.metrics]


def _axis(thetas: Sequence[Theta0]) -> tuple[dict[Theta0, float], str, bool]:
    """x of each θ0, the axis label, and whether x is a measure (rather than a rank)."""
    units = {t.unit for t in thetas}
    if len(units) == 1 and None not in units:
        label = "θ0's pretraining step" if units == {"step"} else "pretraining tokens seen by θ0"
        return {t: t.position for t in thetas}, label, True
    return {t: float(i) for i, t in enumerate(thetas)}, "θ0, from the earliest state to θ_D", False


def plot_checkpoint_ablation(table: Table, out_dir: Path) -> Path | None:
    """`<table id>.png` (the id ends in _checkpoints): one panel per column, one line per setting other than θ0,
    mean over seeds with ±1 sample std bars; target and oracle as horizontal lines."""
    rows = [r for r in table.rows if r.kind == "method" and r.group]
    if len(rows) < 2 or not table.columns:
        return None
    theta_of = {id(r): Theta0.of(r.group.runs[0]) for r in rows}
    thetas = sorted(set(theta_of.values()), key=Theta0.order)
    xs, x_label, measured = _axis(thetas)
    lines: dict[str, list[Row]] = {}
    for row in rows:
        lines.setdefault(_series_label(row), []).append(row)
    # Lines side by side at each θ0 rather than on top of each other: a small shift, a fraction of the spacing.
    spacing = min(
        (b - a for a, b in zip(sorted(xs.values()), sorted(xs.values())[1:], strict=False)), default=1.0
    )
    shift = 0.06 * (spacing or 1.0)
    figure, grid = new_figure(8.0, 1.9 * len(table.columns) + 1.6, len(table.columns), 1, sharex=True)
    logged = False
    for axes, column in zip(grid[:, 0], table.columns, strict=True):
        references = {label: table.row(label) for label in ("target", "oracle")}
        reference_means = [
            r.cells[column].mean for r in references.values() if r and r.cells[column].mean is not None
        ]
        means = [r.cells[column].mean for r in rows if r.cells[column].mean is not None]
        log_axis = column == "forget_quality" and all(m > 0 for m in means + reference_means) and bool(means)
        if log_axis:
            axes.set_yscale("log")
            logged = True
        for index, (label, members) in enumerate(lines.items()):
            members = sorted(
                (r for r in members if r.cells[column].mean is not None),
                key=lambda r: theta_of[id(r)].order(),
            )
            if not members:
                continue
            offset = (index - (len(lines) - 1) / 2) * shift
            bars = [
                error_bar(r.cells[column].mean, r.cells[column].std, _values(r, column), log_axis)
                for r in members
            ]
            axes.errorbar(
                [xs[theta_of[id(r)]] + offset for r in members],
                [r.cells[column].mean for r in members],
                yerr=[[b[0] for b in bars], [b[1] for b in bars]],
                capsize=3,
                label=label,
                **series_style(index, len(lines)),
            )
        for (reference, row), style in zip(references.items(), (":", "--"), strict=True):
            if row and row.cells[column].mean is not None:
                axes.axhline(row.cells[column].mean, linestyle=style, color="grey", label=reference)
        axes.set_ylabel(metric_label(column) + ("\n(log scale)" if log_axis else ""), fontsize=8)
        axes.tick_params(labelsize=7)
    bottom = grid[-1, 0]
    if not measured:
        bottom.set_xticks(list(xs.values()), [t.tick() for t in thetas], rotation=30, ha="right", fontsize=7)
    else:
        if max(xs.values()) / max(min(xs.values()), 1e-300) > 100:
            bottom.set_xscale("log")
        if len(xs) <= MAX_MEASURED_TICKS:  # a tick at each θ0 measured, labelled with its own value
            bottom.set_xticks(sorted(xs.values()), [f"{x:g}" for x in sorted(xs.values())], fontsize=7)
            bottom.minorticks_off()
    bottom.set_xlabel(x_label)
    legend: dict[
        str, object
    ] = {}  # every panel's entries, once: a line missing from the first panel still shows
    for axes in grid[:, 0]:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    figure.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=7)
    note = "points: mean over seeds; bars: ±1 sample std over seeds" + (f"; {LOG_BAR_NOTE}" if logged else "")
    title = f"{table.title}, θ0 from the earliest state to θ_D"
    figure.suptitle(wrapped(title, 7.5, 9) + "\n" + wrapped(note, 7.5, 8), fontsize=8)
    return save(figure, out_dir / f"{table.id}.png")
