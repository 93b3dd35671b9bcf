"""Logging a report to Weights & Biases: each table as a wandb.Table, each plot as an image, and the report folder
as an artifact. Offline by default (no account needed); the WANDB_MODE environment variable wins, as for runs."""

from __future__ import annotations

import os
from pathlib import Path

from msa_bench.reporting.report import Report
from msa_bench.reporting.tables import Table, metric_label


def table_rows(table: Table) -> tuple[list[str], list[list]]:
    columns = ["row", "kind", "n"]
    for column in table.columns:
        columns += [f"{column}_mean", f"{column}_std", f"{column}_n"]
    data = []
    for row in table.rows:
        values: list = [row.label, row.kind, row.n]
        for column in table.columns:
            cell = row.cells[column]
            values += [cell.mean, cell.std, cell.n]
        data.append(values)
    return columns, data


def log_report(
    report: Report,
    out_dir: Path,
    project: str = "msa_bench",
    group: str | None = None,
    mode: str = "offline",
    name: str = "report",
) -> str | None:
    """Log the report; returns the W&B run's path (None when W&B is disabled)."""
    import wandb

    run = wandb.init(
        project=project,
        group=group,
        job_type="report",
        name=name,
        dir=str(out_dir),
        mode=os.environ.get("WANDB_MODE") or mode,
        config={"sources": report.sources, "n_results": len(report.runs)},
        reinit="finish_previous",
    )
    try:
        logged = {}
        for table in report.all_tables():
            columns, data = table_rows(table)
            logged[f"table/{table.id}"] = wandb.Table(columns=columns, data=data)
        for plot in report.plots:
            logged[f"plot/{plot.stem}"] = wandb.Image(str(plot), caption=plot.stem)
        run.log(logged)
        summary = {}
        for table in report.all_tables():
            for row in table.rows:
                for column in table.columns:
                    if row.cells[column].mean is not None:
                        summary[f"{table.id}/{row.label}/{metric_label(column)}"] = row.cells[column].mean
        run.summary.update(summary)
        artifact = wandb.Artifact(
            name="msa_bench_report", type="report", metadata={"sources": report.sources}
        )
        for path in sorted(out_dir.rglob("*")):
            if path.is_file() and "wandb" not in path.relative_to(out_dir).parts:
                artifact.add_file(str(path), name=str(path.relative_to(out_dir)))
        run.log_artifact(artifact)
        return getattr(run, "path", None) if not getattr(run, "disabled", False) else None
    finally:
        run.finish()
