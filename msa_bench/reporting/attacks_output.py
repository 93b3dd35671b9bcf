"""The "Robustness attacks" section of a report (msa_bench.reporting.attacks) as Markdown, LaTeX and CSV, and the
recovery per attack at matched forgetting."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from msa_bench.reporting import tables as T
from msa_bench.reporting.attacks import (
    RECOVERY_DEFINITION,
    AttackSection,
    AttackTable,
    Recovery,
    RecoveryCell,
    attacked_key,
)

QUANTITIES = ("unattacked", "attacked", "recovery")


class Footnotes:
    """Numbered reasons of undefined recoveries, each reason once."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def marks(self, reasons: Sequence[str]) -> str:
        for reason in reasons:
            if reason not in self.reasons:
                self.reasons.append(reason)
        return " ".join(f"[{self.reasons.index(r) + 1}]" for r in reasons)

    def lines(self) -> list[str]:
        return [f"[{i}] {reason}" for i, reason in enumerate(self.reasons, 1)]


def recovery_text(value: RecoveryCell, row_n: int, notes: Footnotes) -> str:
    """mean ± std (n=k when not every run of the row), "undefined [i]" where no run has one, never 0."""
    cell, marks = value.cell, notes.marks(value.reasons)
    if cell.mean is None:
        return f"undefined {marks}".strip() if cell.undefined else "—"
    text = T.format_cell(cell, row_n)
    if cell.undefined:
        text += f"; undefined in {cell.undefined} {marks}".rstrip()
    return text


def _size(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def attack_caption(attack: AttackTable) -> str:
    parts = [f"kind {attack.kind}"]
    if attack.settings:
        parts.append("settings " + ", ".join(f"{k}={v}" for k, v in attack.settings.items()))
    if attack.evaluated:
        parts.append(f"evaluated on {attack.evaluated}")
    if attack.model_size_bytes:
        sizes = ", ".join(f"{role} {_size(c.mean)}" for role, c in attack.model_size_bytes.items())
        parts.append(f"quantized model size {sizes}")
    return "; ".join(parts) + "."


def _header(metric: str, quantity: str) -> str:
    return f"{metric}: {quantity}"


def _attack_cells(attack: AttackTable, notes: Footnotes) -> list[tuple[str, str, list[str], int]]:
    """(label, kind, cells, n) per row of one attack's table."""
    rows = []
    for row in attack.rows:
        cells = []
        for metric in attack.metrics:
            values = row.cells[metric]
            cells += [
                T.format_cell(values.unattacked, row.n),
                T.format_cell(values.attacked, row.n),
                recovery_text(values.recovery, row.n, notes),
            ]
        rows.append((row.label, row.kind, cells, row.n))
    return rows


def _summary_cells(section: AttackSection, notes: Footnotes) -> list[tuple[str, str, list[str]]]:
    return [
        (
            label,
            kind,
            [
                recovery_text(cells[a.attack], -1, notes) if a.attack in cells else "—"
                for a in section.attacks
            ],
        )
        for label, kind, cells in section.summary()
    ]


def _skip_lines(section: AttackSection) -> list[str]:
    return [f"`{s.attack}`: skipped in {s.runs} of {s.total} runs: {s.reason}" for s in section.skipped]


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(headers), "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|", *map(line, rows)]


def _label(label: str, kind: str) -> str:
    return f"*{label}*" if kind == "reference" else label


def to_markdown(section: AttackSection) -> str:
    notes = Footnotes()
    lines = [f"### Robustness attacks: {section.table.title}", "", RECOVERY_DEFINITION, ""]
    if section.attacks:
        headers = ["", *(f"{a.attack}: {a.metrics[0]}" for a in section.attacks)]
        rows = [[_label(label, kind), *cells] for label, kind, cells in _summary_cells(section, notes)]
        lines += [
            "#### Recovery per attack (its first recovery metric)",
            "",
            *_markdown_table(headers, rows),
            "",
        ]
    for attack in section.attacks:
        headers = ["", *(_header(m, q) for m in attack.metrics for q in QUANTITIES), "n"]
        rows = [
            [_label(label, kind), *cells, str(n)] for label, kind, cells, n in _attack_cells(attack, notes)
        ]
        lines += [
            f"#### {attack.attack}",
            "",
            attack_caption(attack),
            "",
            *_markdown_table(headers, rows),
            "",
        ]
    if section.skipped:
        lines += ["#### Skipped attacks", "", *(f"- {line}" for line in _skip_lines(section)), ""]
    if notes.reasons:
        lines += [
            "Undefined recoveries (never counted as 0):",
            "",
            *(f"- {line}" for line in notes.lines()),
            "",
        ]
    return "\n".join(lines) + "\n"


def _latex_tabular(
    caption: str, headers: Sequence[str], rows: Sequence[tuple[str, str, list[str]]]
) -> list[str]:
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + T.latex_escape(caption) + "}",
        r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
        r"\toprule",
        " & ".join(T.latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    previous = None
    for label, kind, cells in rows:
        if previous == "reference" and kind != "reference":
            lines.append(r"\midrule")
        previous = kind
        lines.append(" & ".join([T.latex_escape(label), *(T.latex_cell(c) for c in cells)]) + r" \\")
    return [*lines, r"\bottomrule", r"\end{tabular}"]


def to_latex(section: AttackSection) -> str:
    notes = Footnotes()
    title = section.table.title
    parts: list[str] = []
    if section.attacks:
        headers = ["", *(f"{a.attack}: {a.metrics[0]}" for a in section.attacks)]
        parts += _latex_tabular(f"Recovery per attack: {title}", headers, _summary_cells(section, notes))
        parts += [r"\label{tab:" + section.table.id + "_attack_recovery}", r"\end{table}", ""]
    for attack in section.attacks:
        headers = ["", *(_header(m, q) for m in attack.metrics for q in QUANTITIES), "n"]
        rows = [(label, kind, [*cells, str(n)]) for label, kind, cells, n in _attack_cells(attack, notes)]
        parts += _latex_tabular(f"{attack.attack}: {title}. {attack_caption(attack)}", headers, rows)
        parts += [r"\label{tab:" + section.table.id + "_attack_" + attack.attack + "}", r"\end{table}", ""]
    remarks = [f"Skipped: {line}" for line in _skip_lines(section)] + notes.lines()
    if remarks:
        parts.append(r"\par{\footnotesize " + r" \\ ".join(T.latex_escape(r) for r in remarks) + "}")
    return "\n".join(parts) + "\n"


# --- CSV ----------------------------------------------------------------------------------------------------------


def long_rows(section: AttackSection) -> list[dict]:
    """Rows in the layout of report.csv (msa_bench.reporting.tables.long_rows): metric attack/<A>/<m> (attacked),
    attack/<A>/unattacked/<m> (unattacked, wherever the value came from) and unit "recovery" for the recovery."""
    table, rows = section.table, []
    for attack in section.attacks:
        for row in attack.rows:
            for metric in attack.metrics:
                values = row.cells[metric]
                key = attacked_key(attack.attack, metric)
                before = attacked_key(attack.attack, f"unattacked/{metric}")
                for name, unit, cell in (
                    (before, "value", values.unattacked),
                    (key, "value", values.attacked),
                    (key, "recovery", values.recovery.cell),
                ):
                    rows.append(
                        {
                            "table": table.id + "_attacks",
                            "family": table.family,
                            "benchmark": table.benchmark,
                            "forget_split": table.forget_split,
                            "model": table.model,
                            "row": row.label,
                            "kind": row.kind,
                            "metric": name,
                            "unit": unit,
                            "mean": _number(cell.mean),
                            "std": _number(cell.std),
                            "n": cell.n,
                        }
                    )
    return rows


def wide_csv(section: AttackSection) -> str:
    """tables/<table>_attacks.csv: one line per attack, metric and row, with the undefined recoveries' reasons, and
    one line per skipped attack."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    fields = [f"{q}_{s}" for q in QUANTITIES for s in ("mean", "std", "n")]
    writer.writerow(["attack", "metric", "row", "kind", "n", *fields, "recovery_undefined", "note"])
    for attack in section.attacks:
        for row in attack.rows:
            for metric in attack.metrics:
                values = row.cells[metric]
                numbers: list[Any] = []
                for cell in (values.unattacked, values.attacked, values.recovery.cell):
                    numbers += [_number(cell.mean), _number(cell.std), cell.n]
                note = "; ".join(values.recovery.reasons)
                writer.writerow(
                    [
                        attack.attack,
                        metric,
                        row.label,
                        row.kind,
                        row.n,
                        *numbers,
                        values.recovery.cell.undefined,
                        note,
                    ]
                )
    for skip in section.skipped:
        blank = [""] * (len(fields) + 1)
        writer.writerow([skip.attack, "", "", "skipped", skip.runs, *blank, f"skipped: {skip.reason}"])
    return buffer.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


# --- at matched forgetting ----------------------------------------------------------------------------------------


def matched_markdown(
    section: AttackSection, matched: Sequence, recoveries: Sequence[dict[str, Recovery]]
) -> str:
    """Recovery of each attack's first metric at each method's matched point."""
    if not section.attacks or not matched:
        return ""
    notes = Footnotes()
    headers = ["method", *(f"{a.attack}: {a.metrics[0]}" for a in section.attacks), "note"]
    rows = []
    for result, found in zip(matched, recoveries, strict=True):
        cells = []
        for attack in section.attacks:
            value = found.get(attacked_key(attack.attack, attack.metrics[0]))
            if value is None:
                cells.append("—")
            elif value.value is None:
                cells.append(f"undefined {notes.marks([value.reason] if value.reason else [])}".strip())
            else:
                cells.append(T.format_number(value.value))
        rows.append([result.label, *cells, "" if result.reached else result.note])
    lines = [
        f"### Matched forgetting, recovery per attack: {section.table.title}",
        "",
        f"At each method's matched point (matched on {matched[0].metric}): recovery from the interpolated attacked "
        "and unattacked values and the target's unattacked value.",
        "",
        *_markdown_table(headers, rows),
        "",
    ]
    if notes.reasons:
        lines += [*(f"- {line}" for line in notes.lines()), ""]
    return "\n".join(lines) + "\n"


def matched_record_fields(recoveries: dict[str, Recovery]) -> dict[str, dict]:
    """What a matched_forgetting.json record adds: {attack key: recovery or None}, {attack key: why undefined}."""
    return {
        "attack_recovery": {key: r.value for key, r in recoveries.items()},
        "attack_recovery_undefined": {key: r.reason for key, r in recoveries.items() if r.value is None},
    }
