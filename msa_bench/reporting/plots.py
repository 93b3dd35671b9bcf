"""PNG plots of a report (matplotlib, no display needed).

- trade-off: forget quality against model utility, one line per method along its swept hyperparameter, with the
  target and the oracle as reference points;
- checkpoint ablation: each metric against θ0 (ordered by pretraining position where the name or step says it);
- truth-ratio histograms: the per-item forget-set truth ratios of the target, the oracle and the method (from the
  per_item.json beside each results.json);
- cost: each method's unlearning cost (wall seconds, FLOPs) beside the cost of retraining the oracle.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from msa_bench.reporting.collect import Run  # noqa: E402
from msa_bench.reporting.matched import method_curves  # noqa: E402
from msa_bench.reporting.tables import Table, metric_label  # noqa: E402

log = logging.getLogger("msa_bench.report")

# Stages every method shares (data, history, target, oracle) and evaluations; every other stage of a run's cost is
# what its method spent to produce the unlearned model (vectors and arithmetic, or the unlearning fine-tune).
SHARED_STAGES = {"world", "tokenizer", "pretrain", "history", "instruct", "clean", "target", "oracle"}
TRUTH_RATIO = "forget_truth_ratio"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:120] or "plot"


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout gives up gracefully on long labels
        figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _positive(value: float) -> float:
    return max(value, 1e-300)


# The trade-off each benchmark family is read by: (what is kept, what is forgotten). MUSE's forgetting axis is
# PrivLeak, whose ideal is 0 (negative: still recognisable as trained on; positive: over-forgotten).
TRADEOFF_AXES = {
    "tofu": ("model_utility", "forget_quality"),
    "muse": ("retain_knowmem_ROUGE", "muse_privleak"),
}


def plot_tradeoff(
    table: Table,
    out_dir: Path,
    x_metric: str = "model_utility",
    y_metric: str = "forget_quality",
    param: str | None = None,
) -> Path | None:
    """y_metric against x_metric for every method run (seed means per swept value), lines along the sweep."""
    if x_metric not in table.columns or y_metric not in table.columns:
        return None
    log_y = y_metric == "forget_quality"  # KS p-values span tens of orders of magnitude

    def y_value(value: float) -> float:
        return _positive(value) if log_y else value

    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    drawn = False
    for reference, marker in (("target", "X"), ("oracle", "*")):
        row = table.row(reference)
        if row and row.cells[x_metric].mean is not None and row.cells[y_metric].mean is not None:
            axes.scatter(
                row.cells[x_metric].mean,
                y_value(row.cells[y_metric].mean),
                marker=marker,
                s=140,
                color="black" if reference == "target" else "gold",
                edgecolor="black",
                zorder=3,
                label=reference,
            )
            drawn = True
    for curve in method_curves(table, param):
        points = [p for p in curve.points() if x_metric in p.metrics and y_metric in p.metrics]
        if points:
            xs = [p.metrics[x_metric] for p in points]
            ys = [y_value(p.metrics[y_metric]) for p in points]
            labels = [f"{p.param:g}" for p in points]
        else:
            usable = [r for r in curve.runs if x_metric in r.metrics and y_metric in r.metrics]
            xs = [r.metrics[x_metric] for r in usable]
            ys = [y_value(r.metrics[y_metric]) for r in usable]
            labels = [""] * len(usable)
        if not xs:
            continue
        name = curve.label if not curve.param else f"{curve.label} ({curve.param.removeprefix('method.')})"
        axes.plot(xs, ys, marker="o", label=name)
        for x, y, text in zip(xs, ys, labels, strict=True):
            if text:
                axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    if log_y:
        axes.set_yscale("log")
    axes.set_xlabel(metric_label(x_metric))
    axes.set_ylabel(metric_label(y_metric))
    axes.set_title(table.title, fontsize=9)
    axes.legend(fontsize=7)
    return _save(figure, out_dir / f"{table.id}_tradeoff.png")


_TOKENS = re.compile(r"(\d+(?:\.\d+)?)\s*([bt])\b", re.IGNORECASE)


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


def plot_checkpoint_ablation(table: Table, out_dir: Path) -> Path | None:
    rows = [r for r in table.rows if r.kind == "method" and r.group]
    if len(rows) < 2 or not table.columns:
        return None

    def order(row):
        position = checkpoint_position(row.group.runs[0])
        return (position is None, position if position is not None else 0.0, row.label)

    rows.sort(key=order)
    figure, axes_list = plt.subplots(
        len(table.columns), 1, figsize=(7, 2.2 * len(table.columns)), squeeze=False
    )
    positions = list(range(len(rows)))
    for axes, column in zip(axes_list[:, 0], table.columns, strict=True):
        means = [r.cells[column].mean for r in rows]
        stds = [r.cells[column].std or 0.0 for r in rows]
        shown = [(p, m, s) for p, m, s in zip(positions, means, stds, strict=True) if m is not None]
        if shown:
            axes.errorbar(
                [p for p, _, _ in shown],
                [m for _, m, _ in shown],
                yerr=[s for _, _, s in shown],
                marker="o",
                capsize=3,
            )
        for reference, style in (("target", ":"), ("oracle", "--")):
            row = table.row(reference)
            if row and row.cells[column].mean is not None:
                axes.axhline(row.cells[column].mean, linestyle=style, color="grey", label=reference)
        axes.set_ylabel(metric_label(column), fontsize=8)
        axes.set_xticks(positions, [r.label for r in rows], rotation=20, fontsize=7)
        if column == "forget_quality" and all(m is None or m > 0 for m in means):
            axes.set_yscale("log")
    axes_list[0, 0].legend(fontsize=7)
    axes_list[0, 0].set_title(table.title + " (θ0 from earliest to closest)", fontsize=9)
    return _save(figure, out_dir / f"{table.id}.png")


def _log_bins(values: Sequence[float], count: int = 30) -> list[float] | int:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if len(positive) < 2 or min(positive) == max(positive):
        return count
    low, high = math.log10(min(positive)), math.log10(max(positive))
    return [10 ** (low + (high - low) * i / count) for i in range(count + 1)]


def plot_truth_ratios(table: Table, out_dir: Path, metric: str = TRUTH_RATIO) -> list[Path]:
    """One PNG per method row: histograms of the per-item forget truth ratios of target, oracle and the method."""
    paths = []
    for index, row in enumerate(table.rows):
        if row.kind != "method" or not row.group:
            continue
        series: dict[str, list[float]] = {"target": [], "oracle": [], row.group.method: []}
        for run in row.group.runs:
            per_item = run.per_item()
            if not per_item:
                continue
            for role, name in (("target", "target"), ("oracle", "oracle"), ("method", row.group.method)):
                values = per_item.values(role, metric)
                series[name].extend(float(v) for v in values if isinstance(v, int | float))
        if not series[row.group.method]:
            continue
        figure, axes = plt.subplots(figsize=(6, 3.8))
        bins = _log_bins([v for values in series.values() for v in values])
        for (name, values), color in zip(series.items(), ("tab:red", "tab:green", "tab:blue"), strict=True):
            if values:
                axes.hist(
                    [max(v, 1e-300) for v in values],
                    bins=bins,
                    alpha=0.45,
                    label=f"{name} (n={len(values)})",
                    color=color,
                )
        if not isinstance(bins, int):
            axes.set_xscale("log")
        axes.set_xlabel("forget-set truth ratio P(perturbed)/P(paraphrased) per item")
        axes.set_ylabel("items")
        axes.set_title(f"{row.label}: {table.title}", fontsize=8)
        axes.legend(fontsize=7)
        paths.append(_save(figure, out_dir / f"{table.id}_truth_ratio_{index}_{_safe(row.label)[:40]}.png"))
    return paths


def method_cost(run: Run) -> dict[str, float]:
    """Wall seconds and FLOPs of the stages that belong to the run's method (every non-shared, non-eval stage)."""
    wall = flops = 0.0
    stages = []
    for stage, record in run.cost.items():
        # Sequential requests retrain an oracle per step ("oracle (request k)"): a reference, not the method's.
        if stage in SHARED_STAGES or stage.startswith(("eval", "oracle")):
            continue
        wall += float(record.get("wall_seconds") or 0.0)
        flops += float(record.get("flops") or 0.0)
        stages.append(stage)
    return {"wall_seconds": wall, "flops": flops, "stages": stages}


def oracle_cost(run: Run) -> dict[str, float] | None:
    record = run.cost.get("oracle")
    if not record:
        return None
    return {
        "wall_seconds": float(record.get("wall_seconds") or 0.0),
        "flops": float(record.get("flops") or 0.0),
    }


def cost_rows(table: Table) -> list[dict]:
    """Per method row: mean unlearning cost and the mean oracle retraining cost of its runs."""
    rows = []
    for row in table.rows:
        if row.kind != "method" or not row.group:
            continue
        costs = [method_cost(r) for r in row.group.runs if r.cost]
        oracles = [c for c in (oracle_cost(r) for r in row.group.runs) if c]
        if not costs:
            continue
        entry = {
            "row": row.label,
            "n": len(costs),
            "stages": sorted({s for c in costs for s in c["stages"]}),
            "wall_seconds": sum(c["wall_seconds"] for c in costs) / len(costs),
            "flops": sum(c["flops"] for c in costs) / len(costs),
            "oracle_wall_seconds": sum(c["wall_seconds"] for c in oracles) / len(oracles)
            if oracles
            else None,
            "oracle_flops": sum(c["flops"] for c in oracles) / len(oracles) if oracles else None,
        }
        rows.append(entry)
    return rows


def plot_costs(table: Table, out_dir: Path) -> Path | None:
    rows = cost_rows(table)
    if not rows:
        return None
    oracle_wall = [r["oracle_wall_seconds"] for r in rows if r["oracle_wall_seconds"] is not None]
    oracle_flops = [r["oracle_flops"] for r in rows if r["oracle_flops"] is not None]
    labels = [r["row"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 2.5))
    for axes, key, oracle_values, title in (
        (left, "wall_seconds", oracle_wall, "wall seconds"),
        (right, "flops", oracle_flops, "FLOPs"),
    ):
        values = [r[key] for r in rows]
        names = list(labels)
        colors = ["tab:blue"] * len(values)
        if oracle_values:
            values.append(sum(oracle_values) / len(oracle_values))
            names.append("retrain oracle")
            colors.append("tab:grey")
        axes.barh(range(len(values)), values, color=colors)
        axes.set_yticks(range(len(values)), names, fontsize=7)
        axes.invert_yaxis()
        axes.set_xlabel(title)
    figure.suptitle(f"Unlearning cost per method vs retraining the oracle: {table.title}", fontsize=9)
    return _save(figure, out_dir / f"{table.id}_cost.png")
