"""The cost plot of a report: each method's unlearning cost (wall seconds, FLOPs; mean over its runs, ±1 sample std
as the bar) beside the cost of retraining the oracle. The other plots have their own modules: tradeoff_plots.py,
checkpoint_plots.py, truth_ratio_plots.py, request_plots.py, attack_plots.py (matplotlib, no display needed)."""

from __future__ import annotations

import logging
from pathlib import Path

from msa_bench.reporting.collect import Run
from msa_bench.reporting.plot_layout import new_figure, save, wrapped
from msa_bench.reporting.tables import Cell, Table

log = logging.getLogger("msa_bench.report")

# Stages every method shares (data, history, target, oracle) and evaluations; every other stage of a run's cost is
# what its method spent to produce the unlearned model (vectors and arithmetic, or the unlearning fine-tune).
SHARED_STAGES = {"world", "tokenizer", "pretrain", "history", "instruct", "clean", "target", "oracle"}


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
    """Per method row: mean unlearning cost (and its sample std over the row's runs, None for one run) and the mean
    oracle retraining cost of its runs."""
    rows = []
    for row in table.rows:
        if row.kind != "method" or not row.group:
            continue
        costs = [method_cost(r) for r in row.group.runs if r.cost]
        oracles = [c for c in (oracle_cost(r) for r in row.group.runs) if c]
        if not costs:
            continue
        wall = Cell.of([c["wall_seconds"] for c in costs])
        flops = Cell.of([c["flops"] for c in costs])
        entry = {
            "row": row.label,
            "n": len(costs),
            "stages": sorted({s for c in costs for s in c["stages"]}),
            "wall_seconds": wall.mean,
            "wall_seconds_std": wall.std,
            "flops": flops.mean,
            "flops_std": flops.std,
            "oracle_wall_seconds": sum(c["wall_seconds"] for c in oracles) / len(oracles)
            if oracles
            else None,
            "oracle_flops": sum(c["flops"] for c in oracles) / len(oracles) if oracles else None,
        }
        rows.append(entry)
    return rows


def plot_costs(table: Table, out_dir: Path) -> Path | None:
    """`<table id>_cost.png`: per method row its mean cost, bar ±1 sample std over its runs, beside the oracle's."""
    rows = cost_rows(table)
    if not rows:
        return None
    oracle_wall = [r["oracle_wall_seconds"] for r in rows if r["oracle_wall_seconds"] is not None]
    oracle_flops = [r["oracle_flops"] for r in rows if r["oracle_flops"] is not None]
    labels = [f"{r['row']} (n={r['n']})" for r in rows]
    figure, grid = new_figure(10.0, 0.3 * len(rows) + 2.0, 1, 2, sharey=True)
    for axes, key, oracle_values, title in (
        (grid[0, 0], "wall_seconds", oracle_wall, "wall seconds"),
        (grid[0, 1], "flops", oracle_flops, "FLOPs"),
    ):
        values = [r[key] for r in rows]
        spreads = [r[f"{key}_std"] or 0.0 for r in rows]
        names = list(labels)
        colors = ["tab:blue"] * len(values)
        if oracle_values:
            values.append(sum(oracle_values) / len(oracle_values))
            spreads.append(0.0)
            names.append("retrain oracle")
            colors.append("tab:grey")
        axes.barh(
            range(len(values)), values, xerr=spreads, color=colors, capsize=2, error_kw={"elinewidth": 0.8}
        )
        axes.set_yticks(range(len(values)), names, fontsize=7)
        axes.set_xlabel(title)
        axes.margins(y=0.01)
    grid[0, 0].invert_yaxis()  # shared: the first row on top in both panels
    title = f"Unlearning cost per method (mean, bar ±1 std over runs) vs retraining the oracle: {table.title}"
    figure.suptitle(wrapped(title, 10.0, 9), fontsize=9)
    return save(figure, out_dir / f"{table.id}_cost.png")
