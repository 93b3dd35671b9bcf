"""The paper's reported numbers (results/paper_reference.yaml) as tables beside ours.

A paper table is shown after one of our tables when its family matches, its benchmark list is empty or names our
benchmark, its forget split is null or ours, and our runs' model (hub id or config name) is one it lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from msa_bench.errors import PaperReferenceError  # noqa: F401  (re-exported)
from msa_bench.reporting.tables import Cell, Row, Table


@dataclass
class PaperTable:
    spec: dict

    @property
    def id(self) -> str:
        return str(self.spec["id"])

    def matches(self, table: Table) -> bool:
        spec = self.spec
        if spec.get("family") != table.family:
            return False
        benchmarks = spec.get("benchmarks") or []
        if benchmarks and table.benchmark not in benchmarks:
            return False
        if spec.get("forget_split") and spec["forget_split"] != table.forget_split:
            return False
        model = spec.get("model") or {}
        hub_ids = {r.model_hub_id for r in table.runs if r.model_hub_id}
        names = {r.model for r in table.runs}
        return bool(hub_ids & set(model.get("hub_ids") or []) or names & set(model.get("names") or []))

    def as_table(self) -> Table:
        spec = self.spec
        columns = list((spec.get("columns") or {}).keys())
        rows = []
        for entry in spec.get("rows") or []:
            values = entry.get("values") or {}
            marks = entry.get("marks") or {}
            kind = "reference" if entry.get("method") in ("target", "oracle") else "paper"
            label = entry["method"] if kind == "reference" else str(entry["label"])
            cells = {
                c: Cell(float(values[c]), None, 1) if c in values else Cell(None, None, 0) for c in columns
            }
            note = ", ".join(f"{k}: {v}" for k, v in marks.items())
            row = Row(label=label, kind=kind, cells=cells, n=1, note=note)
            if kind == "reference" and entry.get("label"):
                row.note = f"paper: {entry['label']}" + (f"; {note}" if note else "")
            rows.append(row)
        model = (spec.get("model") or {}).get("label", "?")
        notes = [
            f"Source: {spec.get('provenance', 'not stated')}.",
            f"Confidence: {spec.get('confidence', 'not stated')}.",
            *[str(n) for n in spec.get("notes") or []],
        ]
        renamed = {c: n for c, n in (spec.get("columns") or {}).items() if n}
        if renamed:
            notes.append("Paper columns: " + ", ".join(f"{c} = {n}" for c, n in renamed.items()) + ".")
        return Table(
            id=f"paper_{self.id}",
            title=f"Paper ({spec.get('version', '?')}, {model}): {spec.get('title', self.id)}",
            family=str(spec.get("family")),
            benchmark=", ".join(spec.get("benchmarks") or []) or "any",
            forget_split=str(spec.get("forget_split") or "-"),
            model=str(model),
            columns=columns,
            rows=rows,
            notes=notes,
        )


def load_paper_reference(path: str | Path) -> list[PaperTable]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PaperReferenceError(f"cannot read {path}: {error}") from error
    if not isinstance(data, Mapping) or not isinstance(data.get("tables"), list):
        raise PaperReferenceError(f"{path}: expected a mapping with a 'tables' list")
    tables = []
    for index, spec in enumerate(data["tables"]):
        for key in ("id", "family", "model", "rows"):
            if not isinstance(spec, Mapping) or key not in spec:
                raise PaperReferenceError(f"{path}: tables[{index}] has no '{key}'")
        for row in spec["rows"]:
            if "label" not in row or "method" not in row:
                raise PaperReferenceError(f"{path}: a row of {spec['id']} needs 'label' and 'method'")
        tables.append(PaperTable(dict(spec)))
    return tables


def matching_tables(reference: Sequence[PaperTable], table: Table) -> list[Table]:
    """The paper's tables that go beside `table` (empty ones, whose numbers are not known, included for their
    notes)."""
    return [paper.as_table() for paper in reference if paper.matches(table)]
