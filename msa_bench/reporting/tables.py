"""Tables shaped like the paper's, aggregated over seeds, as Markdown, LaTeX and CSV.

Every table has a `target` and an `oracle` row (from each run's reference_metrics; a target trained once and shared
by many runs counts once per seed) and one row per method configuration. A cell is the mean over the row's runs,
with the sample standard deviation and the number of runs n.

"Relative to ideal" (shared/notes/paper.md §3.2, the convention of the paper's v3 tables): per column, a method
that matches or beats the ideal (oracle) model gets 100%; otherwise its value is given as a percentage of a reference,
which is the ideal's value when at least one method beats the ideal, and the best method's value when none does.
For metrics where lower is better the ratio is inverted (reference / value). Metrics that should *equal* the oracle's
value rather than beat it (privleak, truth ratio, answer probability and membership-attack AUCs on the forget set) get
100% minus the remaining distance to the oracle as a percentage of the target's distance to it (100% = at the oracle,
0% = no closer than the target); the paper does not say how it treats such columns. Each metric's direction is the
one its suite registers (msa_bench/metrics/registry.py::metric_info).
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from msa_bench.metrics.registry import ATTACK_PREFIX, REQUEST_PREFIX, Direction, metric_info
from msa_bench.reporting.collect import RowGroup, Run, group_rows, partition

# Short names for the directions, as `relative_score` takes them.
HIGHER, LOWER, TOWARD_ORACLE = Direction.HIGHER, Direction.LOWER, Direction.TOWARD_ORACLE

# The paper's columns per table family, in its order; a column shows when any row has the metric. TOFU's then has
# open-unlearning's aggregate scores (msa_bench/metrics/aggregates.py): metrics=tofu_full computes Memorization and
# Privacy, metrics=tofu_full_aggregates Utility and Overall too (they need the fluency classifier).
FAMILY_COLUMNS: dict[str, tuple[str, ...]] = {
    "tofu": ("forget_quality", "model_utility", "acc_forget", "acc_recover", "acc_retain")
    + ("memorization_score", "privacy_score", "utility_score", "overall_score"),
    "restor": ("restor_accuracy", "model_utility"),
    "muse": (
        "muse_extraction_strength",
        "muse_exact_memorization",
        "forget_verbmem_ROUGE",
        "forget_knowmem_ROUGE",
        "muse_mia_min_k",
        "muse_mia_min_k_plus_plus",
        "retain_knowmem_ROUGE",
        "muse_privleak",
    ),
}
FAMILY_TITLES = {"tofu": "TOFU", "restor": "RESTOR", "muse": "MUSE"}
REFERENCE_ROWS = ("target", "oracle")
ABLATION_METHOD = "msa"  # the method whose θ0 is the checkpoint


def metric_label(name: str) -> str:
    """The column header of a metric, from the metadata its suite registers (an unknown metric is an error)."""
    return metric_info(name).label


def metric_direction(name: str) -> Direction:
    return metric_info(name).direction


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int
    undefined: int = 0  # runs where the metric is undefined by its definition (null in results.json)

    @classmethod
    def of(cls, values: Sequence[float], undefined: int = 0) -> Cell:
        """Mean and std of `values`; a NaN among them makes the cell NaN (shown, never averaged away)."""
        values = [float(v) for v in values]
        if not values:
            return cls(None, None, 0, undefined)
        if any(math.isnan(v) for v in values):
            return cls(math.nan, None, len(values), undefined)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values), undefined)


@dataclass
class Row:
    label: str
    kind: str  # reference | method | paper
    cells: dict[str, Cell]
    n: int
    group: RowGroup | None = None
    note: str = ""


@dataclass
class Table:
    id: str
    title: str
    family: str
    benchmark: str
    forget_split: str
    model: str
    columns: list[str]
    rows: list[Row]
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    percent: bool = False  # cells are relative-to-ideal percentages

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)


def _safe_id(*parts: str) -> str:
    text = "_".join(p for p in parts if p and p != "-")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _reference_row(label: str, runs: Sequence[Run], columns: Sequence[str]) -> Row:
    """Target or oracle: one value per distinct model (its artifact path, else its seed), not one per run."""
    distinct: dict[str, tuple[dict[str, float], set[str]]] = {}
    for run in runs:
        values, undefined = run.reference(label), run.undefined(label)
        if not values and not undefined:
            continue
        artifact = run.artifacts.get(label)
        identity = str(artifact) if artifact else f"seed={run.seed}"
        distinct.setdefault(identity, (values, undefined))
    cells = {
        c: Cell.of([v[c] for v, _ in distinct.values() if c in v], sum(c in u for _, u in distinct.values()))
        for c in columns
    }
    return Row(label=label, kind="reference", cells=cells, n=len(distinct))


def _method_row(group: RowGroup, columns: Sequence[str]) -> Row:
    cells = {
        c: Cell.of(
            [r.metrics[c] for r in group.runs if c in r.metrics], sum(c in r.undefined() for r in group.runs)
        )
        for c in columns
    }
    return Row(label=group.label, kind="method", cells=cells, n=len(group.runs), group=group)


def choose_columns(family: str, runs: Sequence[Run], requested: Sequence[str] | None) -> list[str]:
    available: set[str] = set()
    for run in runs:
        available |= set(run.metrics) | set(run.reference("target")) | set(run.reference("oracle"))
        available |= run.undefined() | run.undefined("target") | run.undefined("oracle")
    if requested:
        return [m for m in requested if m in available]
    # Attack metrics have their own section (reporting/attacks.py); they would flood the paper-shaped tables.
    # So have the sequential requests' (reporting/request_plots.py).
    plain = {m for m in available if not m.startswith((ATTACK_PREFIX, REQUEST_PREFIX))}
    return [m for m in FAMILY_COLUMNS.get(family, ()) if m in plain] or sorted(plain)


def build_table(key: tuple[str, str, str, str], runs: Sequence[Run], columns: Sequence[str]) -> Table:
    family, benchmark, split, model = key
    groups = [g for g in group_rows(runs) if g.method not in REFERENCE_ROWS]
    rows = [_reference_row(label, runs, columns) for label in REFERENCE_ROWS]
    rows = [r for r in rows if r.n] + [_method_row(g, columns) for g in groups]
    title = f"{FAMILY_TITLES.get(family, family)}: {benchmark} / {split}, model {model}"
    table = Table(
        _safe_id(family, benchmark, split, model),
        title,
        family,
        benchmark,
        split,
        model,
        list(columns),
        rows,
        list(runs),
    )
    if not any(r.kind == "reference" for r in rows):
        table.notes.append("no target/oracle reference metrics in these results")
    return table


def ablation_label(run: Run) -> str:
    """A checkpoint row's name: the checkpoint, with its pretraining step when it has one."""
    step = (run.config.get("checkpoint") or {}).get("step")
    return run.checkpoint if step is None else f"{run.checkpoint} (step {step})"


def build_ablation(table: Table) -> Table | None:
    """Checkpoint-distance ablation: MSA rows named by checkpoint, when the table has MSA at 2+ checkpoints (two
    saved pretraining steps are two checkpoints)."""
    msa_rows = [r for r in table.rows if r.kind == "method" and r.group and r.group.method == ABLATION_METHOD]
    checkpoints = {ablation_label(r.group.runs[0]) for r in msa_rows}
    if len(checkpoints) < 2:
        return None
    rows = [r for r in table.rows if r.kind == "reference"]
    for row in msa_rows:
        name = ablation_label(row.group.runs[0])
        others = {k: v for k, v in row.group.settings.items() if not k.startswith("checkpoint")}
        if others:
            name += " [" + " ".join(f"{k}={v}" for k, v in others.items()) + "]"
        rows.append(Row(label=name, kind="method", cells=row.cells, n=row.n, group=row.group))
    return Table(
        id=table.id + "_checkpoints",
        title=f"Checkpoint ablation (MSA, rows = θ0): {table.benchmark} / {table.forget_split}, model {table.model}",
        family=table.family,
        benchmark=table.benchmark,
        forget_split=table.forget_split,
        model=table.model,
        columns=table.columns,
        rows=rows,
        runs=[r for row in msa_rows for r in row.group.runs],
    )


def build_tables(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> list[Table]:
    """One table per (family, benchmark, split, model), each followed by its checkpoint ablation if it has one."""
    tables = []
    for key, members in partition(runs).items():
        table = build_table(key, members, choose_columns(key[0], members, metrics))
        tables.append(table)
        ablation = build_ablation(table)
        if ablation is not None:
            tables.append(ablation)
    return tables


# --- relative to ideal --------------------------------------------------------------------------------------------


def relative_score(
    value: float, ideal: float, reference: float, direction: Direction, target: float | None = None
) -> float | None:
    """One cell relative to the ideal, in percent (see the module docstring)."""
    if direction == TOWARD_ORACLE:
        if target is None or target == ideal:
            return None
        return 100.0 * (1.0 - abs(value - ideal) / abs(target - ideal))
    if direction == HIGHER:
        if value >= ideal:
            return 100.0
        return 100.0 * value / reference if reference else None
    if value <= ideal:  # lower is better
        return 100.0
    return 100.0 * reference / value if value else None


def relative_to_ideal(table: Table) -> Table:
    """A copy of the table whose method and target cells are percentages relative to the ideal (oracle) row."""
    oracle, target = table.row("oracle"), table.row("target")
    if oracle is None:
        raise ValueError(f"table {table.id} has no oracle row: 'relative to ideal' needs the ideal model")
    methods = [r for r in table.rows if r.kind != "reference"]  # our methods, or the paper's rows
    new_rows = []
    for row in table.rows:
        cells = {}
        for column in table.columns:
            ideal = oracle.cells[column].mean
            value = row.cells[column].mean
            if ideal is None or value is None or math.isnan(ideal) or math.isnan(value):
                # Nothing to score stays so (missing or undefined); a NaN on either side scores NaN.
                unscored = None if ideal is None or value is None else math.nan
                n = 0 if unscored is None else row.cells[column].n
                cells[column] = Cell(unscored, None, n, row.cells[column].undefined)
                continue
            direction = metric_direction(column)
            values = [r.cells[column].mean for r in methods if _is_value(r.cells[column].mean)]
            if direction == HIGHER:
                best = max(values, default=ideal)
                reference = ideal if best >= ideal else best
            elif direction == LOWER:
                best = min(values, default=ideal)
                reference = ideal if best <= ideal else best
            else:
                reference = ideal
            target_value = target.cells[column].mean if target is not None else None
            score = (
                100.0 if row is oracle else relative_score(value, ideal, reference, direction, target_value)
            )
            cells[column] = Cell(score, None, row.cells[column].n)
        new_rows.append(Row(row.label, row.kind, cells, row.n, row.group, row.note))
    relative = Table(**{**table.__dict__, "rows": new_rows, "percent": True})
    relative.id = table.id + "_relative"
    relative.title = table.title + " — relative to ideal (%)"
    relative.notes = [
        *table.notes,
        "100% = matches or beats the ideal (oracle); otherwise % of the ideal's value when some method beats the "
        "ideal, else % of the best method's; columns that should equal the oracle's value: 100% minus the "
        "remaining distance as % of the target's distance (paper.md §3.2)",
    ]
    return relative


# --- formatting ---------------------------------------------------------------------------------------------------


def _is_value(mean: float | None) -> bool:
    return mean is not None and not math.isnan(mean)


def format_number(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    if percent:
        return f"{value:.1f}%"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.3e}"
    return f"{value:.4f}"


def format_cell(cell: Cell, row_n: int, percent: bool = False, plus_minus: str = "±") -> str:
    if cell.mean is None:
        return "n/a" if cell.undefined else "—"  # undefined by the metric's definition, or not in any run
    text = format_number(cell.mean, percent)
    if cell.std is not None and not percent:
        text += f" {plus_minus} {format_number(cell.std)}"
    if cell.n != row_n:
        text += f" (n={cell.n})"
    return text


def to_markdown(table: Table) -> str:
    with_notes = any(row.note for row in table.rows)
    headers = ["", *(metric_label(c) for c in table.columns), "n", *(["note"] if with_notes else [])]
    lines = [
        f"### {table.title}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(table.columns) + 1) + (["---"] if with_notes else [])) + "|",
    ]
    for row in table.rows:
        label = f"*{row.label}*" if row.kind == "reference" else row.label
        cells = [format_cell(row.cells[c], row.n, table.percent) for c in table.columns]
        extra = [row.note] if with_notes else []
        lines.append(
            "| " + " | ".join(x.replace("|", "\\|") for x in [label, *cells, str(row.n), *extra]) + " |"
        )
    lines += [f"\n{note}" for note in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("θ", r"$\theta$")


_SCIENTIFIC = re.compile(r"(-?\d+(?:\.\d+)?)e([+-]\d+)")


def latex_cell(text: str) -> str:
    """A formatted cell in LaTeX: ± as \\pm, 1.2e-05 as 1.2\\times10^{-5}, % escaped, — as --."""
    text = latex_escape(text).replace("—", "--")
    text = _SCIENTIFIC.sub(lambda m: f"${m.group(1)}\\times10^{{{int(m.group(2))}}}$", text)
    return text.replace("±", r"$\pm$")


def to_latex(table: Table) -> str:
    headers = [metric_info(c).latex or latex_escape(metric_label(c)) for c in table.columns]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + latex_escape(table.title) + "}",
        r"\begin{tabular}{l" + "r" * (len(table.columns) + 1) + "}",
        r"\toprule",
        " & ".join(["", *headers, "$n$"]) + r" \\",
        r"\midrule",
    ]
    previous_kind = None
    for row in table.rows:
        if previous_kind == "reference" and row.kind != "reference":
            lines.append(r"\midrule")
        previous_kind = row.kind
        label = latex_escape(row.label)
        cells = [latex_cell(format_cell(row.cells[c], row.n, table.percent)) for c in table.columns]
        lines.append(" & ".join([label, *cells, str(row.n)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\label{tab:" + table.id + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def wide_csv(table: Table) -> str:
    """One line per row: row, kind, n, then mean/std/n for every column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "kind", "n", *[f"{c}_{s}" for c in table.columns for s in ("mean", "std", "n")]])
    for row in table.rows:
        values = []
        for c in table.columns:
            cell = row.cells[c]
            values += [_csv_number(cell.mean), _csv_number(cell.std), cell.n]
        writer.writerow([row.label, row.kind, row.n, *values])
    return buffer.getvalue()


def long_rows(tables: Iterable[Table]) -> list[dict]:
    rows = []
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                cell = row.cells[column]
                rows.append(
                    {
                        "table": table.id,
                        "family": table.family,
                        "benchmark": table.benchmark,
                        "forget_split": table.forget_split,
                        "model": table.model,
                        "row": row.label,
                        "kind": row.kind,
                        "metric": column,
                        "unit": "percent_of_ideal" if table.percent else "value",
                        "mean": _csv_number(cell.mean),
                        "std": _csv_number(cell.std),
                        "n": cell.n,
                    }
                )
    return rows


def long_csv(tables: Iterable[Table], extra_rows: Sequence[dict] = ()) -> str:
    """report.csv: long_rows of the tables, then extra_rows in the same layout (the robustness attacks')."""
    rows = [*long_rows(tables), *extra_rows]
    buffer = io.StringIO()
    fields = ["table", "family", "benchmark", "forget_split", "model", "row", "kind", "metric", "unit"]
    fields += ["mean", "std", "n"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def cells_by_label(table: Table) -> Mapping[str, Mapping[str, Cell]]:
    return {row.label: row.cells for row in table.rows}
