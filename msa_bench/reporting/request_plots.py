"""The sequential-requests plot of a table (benchmark.requests > 1, docs/sequential_requests.md): per method row, a
forget metric and a utility metric against the request index k (mean over the row's seeds, error bar = std), the
forget metric also on the earlier requests' items (persistence, dashed), and the target and the step-k oracles
(their mean over the table's runs) as references."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from msa_bench.metrics.registry import REQUEST_PREFIX  # noqa: E402
from msa_bench.reporting.tables import Table  # noqa: E402

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


def _series(runs_values: list[dict], section: str, metric: str) -> tuple[list[int], list[float], list[float]]:
    """Request indices, mean and std over the runs that hold the value."""
    by_k: dict[int, list[float]] = {}
    for values in runs_values:
        for k, value in _requests(values).get((section, metric), {}).items():
            by_k.setdefault(k, []).append(value)
    ks = sorted(by_k)
    means = [statistics.fmean(by_k[k]) for k in ks]
    stds = [statistics.pstdev(by_k[k]) if len(by_k[k]) > 1 else 0.0 for k in ks]
    return ks, means, stds


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
    figure, axes_list = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for axes, (section, metric) in zip(axes_list[0], panels, strict=True):
        for index, row in enumerate(rows):
            values = [run.metrics for run in row.group.runs]
            color = colors(index % colors.N)
            ks, means, stds = _series(values, section, metric)
            if ks:
                axes.errorbar(ks, means, yerr=stds, marker="o", capsize=2, color=color, label=row.label)
            if section == "forget":
                ks, means, stds = _series(values, "persistence", metric)
                if ks:
                    axes.errorbar(
                        ks,
                        means,
                        yerr=stds,
                        marker="x",
                        capsize=2,
                        color=color,
                        linestyle="--",
                        label=f"{row.label} (requests 1..k−1)",
                    )
        for role, style in (("target", ":"), ("oracle", "-.")):
            references = [run.reference(role) for row in rows for run in row.group.runs]
            ks, means, _ = _series(references, section, metric)
            if ks:
                label = "target" if role == "target" else "oracle k (without requests 1..k)"
                axes.plot(ks, means, linestyle=style, color="gray", label=label)
        axes.set_xlabel("request k")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} ({'request k items' if section == 'forget' else 'utility'})", fontsize=9)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.legend(fontsize=6)
    figure.suptitle(table.title, fontsize=8)
    path = out_dir / f"{table.id}_requests.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
