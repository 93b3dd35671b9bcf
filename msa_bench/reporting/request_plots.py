"""The sequential-requests plot of a table (benchmark.requests > 1, docs/sequential_requests.md): per method row, a
forget metric and a utility metric against the request index k (mean over the row's seeds, error bar = ±1 sample
std, as the tables' cells), the forget metric also on the earlier requests' items (persistence, dashed), and the
target and the step-k oracles (their mean over the table's runs) as references. One legend for both panels sits
below them, over no line."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from msa_bench.metrics.registry import REQUEST_PREFIX
from msa_bench.reporting.plot_layout import LOG_BAR_NOTE, error_bar, new_figure, save, series_style, wrapped
from msa_bench.reporting.tables import Table, metric_label

# The metric drawn in each panel: the first of these the runs hold (forget quality where the benchmark has it).
FORGET_CHOICES = (
    "forget_quality",
    "forget_Q_A_Prob",
    "muse_privleak",
    "forget_verbmem_ROUGE",
    "restor_accuracy",
)
UTILITY_CHOICES = ("model_utility", "retain_knowmem_ROUGE", "retain_Q_A_Prob")
_KEY = re.compile(rf"^{re.escape(REQUEST_PREFIX)}(\d+)/(\w+)/(.+)$")


def _requests(values: dict) -> dict[tuple[str, str], dict[int, float]]:
    """{(section, metric): {k: value}} of one run's per-request values."""
    found: dict[tuple[str, str], dict[int, float]] = {}
    for key, value in values.items():
        match = _KEY.match(key)
        if match:
            found.setdefault((match[2], match[3]), {})[int(match[1])] = value
    return found


def _series(runs_values: list[dict], section: str, metric: str) -> dict[int, list[float]]:
    """{request index: the values of the runs that hold it}."""
    by_k: dict[int, list[float]] = {}
    for values in runs_values:
        for k, value in _requests(values).get((section, metric), {}).items():
            by_k.setdefault(k, []).append(value)
    return dict(sorted(by_k.items()))


def _draw(axes, by_k: dict[int, list[float]], log_axis: bool, **style) -> None:
    ks = list(by_k)
    means = [statistics.fmean(v) for v in by_k.values()]
    stds = [statistics.stdev(v) if len(v) > 1 else None for v in by_k.values()]
    bars = [error_bar(m, s, v, log_axis) for m, s, v in zip(means, stds, by_k.values(), strict=True)]
    axes.errorbar(ks, means, yerr=[[b[0] for b in bars], [b[1] for b in bars]], capsize=2, **style)


def _choose(runs_values: list[dict], section: str, choices) -> str | None:
    held = {metric for values in runs_values for s, metric in _requests(values) if s == section}
    return next((m for m in choices if m in held), min(held) if held else None)


def plot_requests(table: Table, out_dir: Path) -> Path | None:
    """`<table id>_requests.png`, None when no run of the table ran sequential requests."""
    rows = [r for r in table.rows if r.kind == "method" and r.group]
    all_values = [run.metrics for row in rows for run in row.group.runs]
    forget = _choose(all_values, "forget", FORGET_CHOICES)
    utility = _choose(all_values, "utility", UTILITY_CHOICES)
    if forget is None:
        return None
    panels = [("forget", forget), *([("utility", utility)] if utility else [])]
    figure, grid = new_figure(5.5 * len(panels), 4.4, 1, len(panels))
    logged = False
    for axes, (section, metric) in zip(grid[0], panels, strict=True):
        sections = [section, "persistence"] if section == "forget" else [section]
        held = [v for s in sections for row in rows for v in _values(row, s, metric)]
        held += [
            v
            for row in rows
            for run in row.group.runs
            for role in ("target", "oracle")
            for v in _requests(run.reference(role)).get((section, metric), {}).values()
        ]
        log_axis = metric == "forget_quality" and bool(held) and all(v > 0 for v in held)
        if log_axis:
            axes.set_yscale("log")
            logged = True
        for index, row in enumerate(rows):
            values = [run.metrics for run in row.group.runs]
            style = series_style(index, len(rows))
            if by_k := _series(values, section, metric):
                _draw(axes, by_k, log_axis, label=row.label, **style)
            if section == "forget" and (by_k := _series(values, "persistence", metric)):
                label = f"{row.label} (requests 1..k−1)"
                _draw(axes, by_k, log_axis, label=label, linestyle="--", color=style["color"], marker="x")
        for role, linestyle in (("target", ":"), ("oracle", "-.")):
            references = [run.reference(role) for row in rows for run in row.group.runs]
            if by_k := _series(references, section, metric):
                label = "target" if role == "target" else "oracle k (without requests 1..k)"
                axes.plot(
                    list(by_k),
                    [statistics.fmean(v) for v in by_k.values()],
                    linestyle=linestyle,
                    color="gray",
                    label=label,
                )
        axes.set_xlabel("request k")
        name = metric_label(metric)
        axes.set_ylabel(name + (" (log scale)" if log_axis else ""))
        axes.set_title(f"{name} ({'request k items' if section == 'forget' else 'utility'})", fontsize=9)
        axes.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = grid[0, 0].get_legend_handles_labels()
    for axes in grid[0, 1:]:  # the utility panel's references, where the forget panel has none
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=7)
    note = "points: mean over seeds; bars: ±1 sample std over seeds" + (f"; {LOG_BAR_NOTE}" if logged else "")
    width = 5.5 * len(panels)
    figure.suptitle(wrapped(table.title, width, 9) + "\n" + wrapped(note, width, 8), fontsize=8)
    return save(figure, out_dir / f"{table.id}_requests.png")


def _values(row, section: str, metric: str) -> list[float]:
    return [v for run in row.group.runs for v in _requests(run.metrics).get((section, metric), {}).values()]
