"""Building a report from results.json files: tables, their relative-to-ideal versions, the paper's numbers beside
them, matched-forgetting comparisons, costs and plots; written as Markdown, LaTeX and CSV."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from msa_bench.errors import ReportError
from msa_bench.reporting import attacks_output
from msa_bench.reporting import noise_floor as floor_output
from msa_bench.reporting import selection as selection_output
from msa_bench.reporting import tables as T
from msa_bench.reporting.attacks import AttackSection, Recovery, attack_section, matched_recovery
from msa_bench.reporting.collect import Run, UnreadableInput, collect_runs
from msa_bench.reporting.matched import MatchedResult, matched_forgetting
from msa_bench.reporting.matched import to_markdown as matched_markdown
from msa_bench.reporting.matched import to_records as matched_records
from msa_bench.reporting.selection import Criterion, Selection, select_on_validation
from msa_bench.reporting.tables import Table

log = logging.getLogger("msa_bench.report")

FORMATS = ("md", "tex", "csv")


@dataclass
class ReportOptions:
    formats: tuple[str, ...] = FORMATS
    relative_to_ideal: bool = False
    paper_reference: Path | None = None
    matched_metric: str | None = None
    matched_scale: str = "linear"  # the metric's scale on which a crossing is placed (matched.SCALES)
    sweep_param: str | None = None
    metrics: list[str] | None = None
    plots: bool = True
    # --select-on validation (msa_bench/reporting/selection.py); None: no selection section
    select_on: str | None = None
    selection: Criterion = field(default_factory=Criterion)


@dataclass
class Section:
    """One of our tables and everything reported beside it."""

    table: Table
    relative: Table | None = None
    paper: list[Table] = field(default_factory=list)
    paper_relative: list[Table] = field(default_factory=list)
    matched: list[MatchedResult] = field(default_factory=list)
    matched_error: str | None = None
    costs: list[dict] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    attacks: AttackSection | None = None  # the robustness attacks of the table's runs
    matched_recovery: list[dict[str, Recovery]] = field(default_factory=list)  # per matched result
    noise_floor: floor_output.NoiseFloorSection | None = None  # benchmark.oracle_seeds > 1


@dataclass
class Report:
    runs: list[Run]
    sections: list[Section]
    sources: list[str]
    unreadable: list[UnreadableInput] = field(default_factory=list)  # inputs that could not be read, with why
    selections: list[Selection] = field(default_factory=list)  # --select-on validation

    def all_tables(self) -> list[Table]:
        tables = []
        for section in self.sections:
            tables.append(section.table)
            if section.relative:
                tables.append(section.relative)
            tables += section.paper + section.paper_relative
        return tables

    @property
    def plots(self) -> list[Path]:
        return [p for s in self.sections for p in s.plots]


def build_report(
    sources: Sequence[str | Path], options: ReportOptions, plot_dir: Path | None = None
) -> Report:
    collected = collect_runs(sources)
    runs = collected.runs
    where = ", ".join(str(s) for s in sources)
    if not runs and collected.unreadable:
        raise ReportError(
            f"{len(collected.unreadable)} results.json under {where}, none readable: "
            + "; ".join(entry.reason for entry in collected.unreadable)
        )
    if not runs:
        raise FileNotFoundError(f"no results.json under {where}")
    paper_reference = None
    if options.paper_reference is not None:
        from msa_bench.reporting.paper import load_paper_reference

        paper_reference = load_paper_reference(options.paper_reference)

    sections = []
    for table in T.build_tables(runs, options.metrics):
        section = Section(table)
        ablation = table.id.endswith("_checkpoints")
        if options.relative_to_ideal:
            try:
                section.relative = T.relative_to_ideal(table)
            except ValueError as error:
                section.notes.append(str(error))
        if paper_reference is not None and not ablation:
            from msa_bench.reporting.paper import matching_tables

            section.paper = matching_tables(paper_reference, table)
            if not section.paper:
                section.notes.append(
                    f"No table in {options.paper_reference} matches benchmark {table.benchmark} "
                    f"({table.family}, {table.forget_split}) with model {table.model}."
                )
            if options.relative_to_ideal:
                section.paper_relative = [
                    T.relative_to_ideal(p) for p in section.paper if p.row("oracle") is not None and p.rows
                ]
        if options.matched_metric and not ablation:
            try:
                section.matched = matched_forgetting(
                    table, options.matched_metric, options.sweep_param, options.matched_scale
                )
            except ValueError as error:
                section.matched_error = str(error)
        if not ablation:
            from msa_bench.reporting.plots import cost_rows

            section.costs = cost_rows(table)
            section.attacks = attack_section(table)
            section.noise_floor = floor_output.noise_floor_section(table)
        if section.attacks is not None and section.matched:
            section.matched_recovery = matched_recovery(table, section.attacks, section.matched)
        if options.plots and plot_dir is not None:
            section.plots = make_plots(section, plot_dir, options.sweep_param)
        sections.append(section)
    selections = []
    if options.select_on == "validation":
        families = dict.fromkeys(run.table_key[0] for run in runs)
        test_columns = [
            column
            for family in families
            for column in T.FAMILY_COLUMNS.get(family, ())
            if any(column in run.metrics for run in runs)
        ]
        selections = select_on_validation(runs, options.selection, list(dict.fromkeys(test_columns)))
    # Plots have read the per_item.json files they needed by now, so the list is complete.
    return Report(
        runs=runs,
        sections=sections,
        sources=[str(s) for s in sources],
        unreadable=collected.unreadable,
        selections=selections,
    )


def make_plots(section: Section, plot_dir: Path, sweep_param: str | None) -> list[Path]:
    from msa_bench.reporting import plots
    from msa_bench.reporting.checkpoint_plots import plot_checkpoint_ablation
    from msa_bench.reporting.tradeoff_plots import TRADEOFF_AXES, plot_tradeoff
    from msa_bench.reporting.truth_ratio_plots import plot_truth_ratios

    table = section.table
    made: list[Path | None] = []
    if table.id.endswith("_checkpoints"):
        made.append(plot_checkpoint_ablation(table, plot_dir))
    else:
        if table.family in TRADEOFF_AXES:
            kept, forgotten = TRADEOFF_AXES[table.family]
            made.append(plot_tradeoff(table, plot_dir, kept, forgotten, param=sweep_param))
        made += plot_truth_ratios(table, plot_dir)
        made.append(plots.plot_costs(table, plot_dir))
        from msa_bench.reporting.request_plots import plot_requests

        made.append(plot_requests(table, plot_dir))  # None unless the runs ran sequential requests
        from msa_bench.reporting.dynamics_plots import plot_dynamics

        made.append(plot_dynamics(table, plot_dir))  # None unless some run has unlearning dynamics
        if section.attacks is not None:
            from msa_bench.reporting.attack_plots import plot_attack_recovery

            made.append(plot_attack_recovery(section.attacks, plot_dir))
    return [p for p in made if p is not None]


# --- writing ------------------------------------------------------------------------------------------------------


def _cost_markdown(section: Section) -> str:
    if not section.costs:
        return ""
    lines = [
        f"### Cost: {section.table.title}",
        "",
        "Unlearning cost of each method (its own stages: vectors and arithmetic, or the unlearning fine-tune; cached "
        "stages count at their original cost) beside retraining the oracle.",
        "",
        "| method | stages | wall s | FLOPs | oracle wall s | oracle FLOPs | FLOPs / oracle |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in section.costs:
        ratio = f"{row['flops'] / row['oracle_flops']:.3g}" if row.get("oracle_flops") else "—"
        lines.append(
            f"| {row['row']} | {', '.join(row['stages']) or '—'} | {row['wall_seconds']:.3g} | {row['flops']:.3g} | "
            f"{T.format_number(row['oracle_wall_seconds'])} | {T.format_number(row['oracle_flops'])} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def to_markdown(report: Report, relative_to: Path | None = None) -> str:
    lines = [
        "# msa_bench report",
        "",
        f"{len(report.runs)} results files from {', '.join(report.sources)}. Cells: mean ± sample std over the "
        "row's runs (seeds); n = runs (for target and oracle: distinct models). `—`: no run has the metric; "
        "`n/a`: the metric is undefined by its definition in these runs (each results.json's metric_provenance "
        "says why); `NaN`: a value that is not a number.",
        "",
    ]
    if report.unreadable:
        lines += [
            f"## Unreadable inputs ({len(report.unreadable)}, left out of every table)",
            "",
            *(
                f"- `{entry.path}`: {entry.reason.removeprefix(f'{entry.path}: ')}"
                for entry in report.unreadable
            ),
            "",
        ]
    if report.selections:
        lines.append(selection_output.to_markdown(report.selections))
    for section in report.sections:
        lines.append(T.to_markdown(section.table))
        if section.relative:
            lines.append(T.to_markdown(section.relative))
        for paper in section.paper:
            lines.append(T.to_markdown(paper))
        for paper in section.paper_relative:
            lines.append(T.to_markdown(paper))
        if section.matched:
            lines.append(matched_markdown(section.table, section.matched[0].metric, section.matched))
        if section.matched_error:
            lines.append(f"Matched forgetting: {section.matched_error}\n")
        if section.noise_floor is not None:
            lines.append(floor_output.to_markdown(section.noise_floor, section.table))
        cost = _cost_markdown(section)
        if cost:
            lines.append(cost)
        from msa_bench.reporting.dynamics_plots import dynamics_markdown

        dynamics = dynamics_markdown(section.table)
        if dynamics:
            lines.append(dynamics)
        if section.attacks is not None:
            lines.append(attacks_output.to_markdown(section.attacks))
            if section.matched_recovery:
                lines.append(
                    attacks_output.matched_markdown(
                        section.attacks, section.matched, section.matched_recovery
                    )
                )
        lines += [f"{note}\n" for note in section.notes]
        for plot in section.plots:
            shown = (
                plot.relative_to(relative_to) if relative_to and plot.is_relative_to(relative_to) else plot
            )
            lines.append(f"![{plot.stem}]({shown})\n")
    return "\n".join(lines)


def to_latex(report: Report) -> str:
    parts = [
        "% msa_bench report; needs \\usepackage{booktabs} (and amsmath for \\text).",
        "",
    ]
    for table in report.all_tables():
        parts.append(T.to_latex(table))
    parts += [attacks_output.to_latex(s.attacks) for s in report.sections if s.attacks is not None]
    return "\n".join(parts)


def all_matched_records(report: Report) -> list[dict]:
    """The matched_forgetting records of every section, each with its recovery per attack at the matched point."""
    records = []
    for section in report.sections:
        found = matched_records(section.table, section.matched)
        for record, recoveries in zip(found, section.matched_recovery, strict=False):
            record.update(attacks_output.matched_record_fields(recoveries))
        records += found
    return records


def matched_csv(report: Report) -> str:
    records = all_matched_records(report)
    if not records:
        return ""
    metrics = sorted({m for r in records for m in r["values"]})
    recovered = sorted({k for r in records for k in r.get("attack_recovery", {})})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "table",
            "method",
            "param",
            "metric",
            "scale",
            "oracle_value",
            "reached",
            "param_value",
            "note",
            *metrics,
            *(f"recovery:{key}" for key in recovered),
        ]
    )
    for r in records:
        writer.writerow(
            [
                r["table"],
                r["method"],
                r["param"],
                r["metric"],
                r["scale"],
                r["oracle_value"],
                r["reached"],
                r["param_value"],
                r["note"],
            ]
            + [r["values"].get(m, "") for m in metrics]
            + [_blank_if_none(r.get("attack_recovery", {}).get(key)) for key in recovered]
        )
    return buffer.getvalue()


def _blank_if_none(value):
    return "" if value is None else value


def write_report(report: Report, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """Write report.md / report.tex / report.csv (+ tables/<id>.csv, matched_forgetting.csv/json) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        path = out_dir / "report.md"
        path.write_text(to_markdown(report, relative_to=out_dir))
        written.append(path)
    if "tex" in formats:
        path = out_dir / "report.tex"
        path.write_text(to_latex(report))
        written.append(path)
    if "csv" in formats:
        path = out_dir / "report.csv"
        attack_rows = [r for s in report.sections if s.attacks for r in attacks_output.long_rows(s.attacks)]
        path.write_text(T.long_csv(report.all_tables(), extra_rows=attack_rows))
        written.append(path)
        for table in report.all_tables():
            table_path = out_dir / "tables" / f"{table.id}.csv"
            table_path.parent.mkdir(exist_ok=True)
            table_path.write_text(T.wide_csv(table))
            written.append(table_path)
        from msa_bench.reporting.dynamics_plots import dynamics_csv

        for section in report.sections:
            dynamics = dynamics_csv(section.table)
            if dynamics is not None:
                table_path = out_dir / "tables" / f"{section.table.id}_dynamics.csv"
                table_path.parent.mkdir(exist_ok=True)
                table_path.write_text(dynamics)
                written.append(table_path)
            if section.noise_floor is not None:
                table_path = out_dir / "tables" / f"{section.table.id}_noise_floor.csv"
                table_path.parent.mkdir(exist_ok=True)
                table_path.write_text(floor_output.to_csv(section.noise_floor, section.table))
                written.append(table_path)
            if section.attacks is not None:
                table_path = out_dir / "tables" / f"{section.table.id}_attacks.csv"
                table_path.parent.mkdir(exist_ok=True)
                table_path.write_text(attacks_output.wide_csv(section.attacks))
                written.append(table_path)
        matched = matched_csv(report)
        if matched:
            path = out_dir / "matched_forgetting.csv"
            path.write_text(matched)
            written.append(path)
    if report.selections:
        path = out_dir / "selection.json"
        path.write_text(json.dumps(selection_output.to_records(report.selections), indent=2) + "\n")
        written.append(path)
        if "csv" in formats:
            path = out_dir / "selection.csv"
            path.write_text(selection_output.to_csv(report.selections))
            written.append(path)
    records = all_matched_records(report)
    if records:
        path = out_dir / "matched_forgetting.json"
        path.write_text(json.dumps(records, indent=2, default=str) + "\n")
        written.append(path)
    return written
