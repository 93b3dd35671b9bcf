"""The robustness attacks of a table (issue 14): each attack's forget metrics beside the unattacked ones, and the
recovery.

For attack A and metric m, on the attack's items: recovery = (A_model − U_model) / (U_target − U_model), where U is
the unattacked value (results.json's `attack/<A>/unattacked/<m>` where the attack evaluates other items than the
plain metrics, as relearning does; else the plain `<m>`) and A the attacked one, `attack/<A>/<m>`. 0: the attack
recovers nothing; 1: back to the target. It is computed per run, from that run's own reference_metrics.target, and
then aggregated over seeds. The oracle's own recovery, computed the same way, is the floor: what the attack does to a
model that never learned the forget set. Where |U_target − U_model| is below 1e-9 or a value is not a finite number,
the recovery is undefined: shown as such, with the reason, never as 0.

Attacks a run records as skipped (results.json `attacks[<A>].skipped`) have no metrics; they are listed with their
reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from msa_bench.metrics.registry import ATTACK_PREFIX, UNATTACKED_PREFIX
from msa_bench.reporting.collect import Run
from msa_bench.reporting.tables import REFERENCE_ROWS, Cell, Table

# Below this distance between the target's and the model's unattacked values there is nothing forgotten to recover.
MIN_GAP = 1e-9
FLOOR_LABEL = "oracle (floor)"
RECOVERY_DEFINITION = (
    "Recovery = (attacked − unattacked) / (target's unattacked − unattacked) on the attack's items, computed per "
    "run from that run's target, then mean ± std over seeds: 0 = the attack recovers nothing, 1 = back to the "
    f"target. The *{FLOOR_LABEL}* row is the oracle's own recovery (it never saw the forget set): what the attack "
    "gives a model that never learned the forget items."
)


def attacked_key(attack: str, metric: str) -> str:
    return f"{ATTACK_PREFIX}{attack}/{metric}"


def unattacked_key(attack: str, metric: str, values: dict[str, Any]) -> str:
    """The key of `metric`'s value before `attack`, on the attack's items, in one model's results."""
    key = f"{ATTACK_PREFIX}{attack}/{UNATTACKED_PREFIX}{metric}"
    return key if key in values else metric


def is_attack_metric(name: str) -> bool:
    return name.startswith(ATTACK_PREFIX)


@dataclass(frozen=True)
class Recovery:
    value: float | None
    reason: str | None = None  # why it is undefined (value None)


def recovery(attacked: Any, unattacked: Any, target_unattacked: Any) -> Recovery:
    """(attacked − unattacked) / (target_unattacked − unattacked), or undefined with the reason."""
    for what, value in (
        ("the attacked value", attacked),
        ("the unattacked value", unattacked),
        ("the target's unattacked value", target_unattacked),
    ):
        if not _finite(value):
            return Recovery(None, f"{what} is {'undefined' if value is None else value}")
    gap = target_unattacked - unattacked
    if abs(gap) < MIN_GAP:
        return Recovery(
            None, f"|U_target − U_model| = {abs(gap):.3g} < {MIN_GAP:g}: nothing forgotten to recover"
        )
    return Recovery((attacked - unattacked) / gap)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def role_values(run: Run, role: str) -> dict[str, Any]:
    """Every value of one model of the run (None where undefined): role is method, target or oracle."""
    return run.record.metrics if role == "method" else run.record.reference_metrics.of(role)


def _provenance(run: Run, role: str, key: str) -> str | None:
    place = key if role == "method" else f"reference_metrics.{role}.{key}"
    return run.record.metric_provenance.get(place)


@dataclass(frozen=True)
class Sample:
    """One model's values for one attack and metric, in one run."""

    unattacked: Any
    attacked: Any
    recovery: Recovery


def sample(run: Run, role: str, attack: str, metric: str) -> Sample | None:
    """None when the run has no value of the attack for the model (not a sample, unlike an undefined one)."""
    values, target = role_values(run, role), role_values(run, "target")
    key = attacked_key(attack, metric)
    if key not in values:
        return None
    before_key, target_key = unattacked_key(attack, metric, values), unattacked_key(attack, metric, target)
    result = recovery(values[key], values.get(before_key), target.get(target_key))
    if role == "target":
        result = Recovery(None, "the target is the recovery's reference: U_target − U_target = 0")
    # An undefined value says why in the run's metric_provenance: the recovery's reason quotes it.
    for what, model, place in (
        ("the attacked value", role, key),
        ("the unattacked value", role, before_key),
        ("the target's unattacked value", "target", target_key),
    ):
        why = _provenance(run, model, place)
        if result.value is None and role_values(run, model).get(place) is None and why:
            result = Recovery(None, f"{what} is {why}")
            break
    return Sample(values.get(before_key), values[key], result)


@dataclass
class RecoveryCell:
    """Recoveries over the runs of a row: the defined ones aggregated, the undefined ones counted with why."""

    cell: Cell
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, recoveries: Iterable[Recovery]) -> RecoveryCell:
        recoveries = list(recoveries)
        defined = [r.value for r in recoveries if r.value is not None]
        reasons = list(dict.fromkeys(r.reason for r in recoveries if r.value is None and r.reason))
        return cls(Cell.of(defined, undefined=len(recoveries) - len(defined)), reasons)


@dataclass
class MetricCells:
    unattacked: Cell
    attacked: Cell
    recovery: RecoveryCell


def _value_cell(values: Sequence[Any]) -> Cell:
    return Cell.of([v for v in values if v is not None], undefined=sum(v is None for v in values))


def metric_cells(samples: Sequence[Sample]) -> MetricCells:
    return MetricCells(
        _value_cell([s.unattacked for s in samples]),
        _value_cell([s.attacked for s in samples]),
        RecoveryCell.of(s.recovery for s in samples),
    )


@dataclass
class AttackRow:
    label: str
    kind: str  # reference | method
    n: int
    cells: dict[str, MetricCells]  # by recovery metric


@dataclass
class AttackTable:
    """One attack on one table: its rows (target, oracle, every method row) and what it is."""

    attack: str
    kind: str
    settings: dict[str, Any]
    evaluated: str
    metrics: list[str]  # its recovery metrics, the first one the summary's
    rows: list[AttackRow]
    model_size_bytes: dict[str, Cell] = field(default_factory=dict)  # by role (quantization)

    def row(self, label: str) -> AttackRow | None:
        return next((r for r in self.rows if r.label == label), None)


@dataclass
class Skip:
    attack: str
    reason: str
    runs: int  # runs that skipped it for this reason
    total: int  # runs of the table


@dataclass
class AttackSection:
    """The "Robustness attacks" section of one table."""

    table: Table
    attacks: list[AttackTable]
    skipped: list[Skip]

    def summary(self) -> list[tuple[str, str, dict[str, RecoveryCell]]]:
        """(label, kind, {attack: recovery of its first metric}): the oracle's floor, then every method row."""

        def recoveries(label: str) -> dict[str, RecoveryCell]:
            return {a.attack: a.row(label).cells[a.metrics[0]].recovery for a in self.attacks if a.row(label)}

        floor = recoveries("oracle")
        rows = [(FLOOR_LABEL, "reference", floor)] if floor else []
        methods = dict.fromkeys(r.label for a in self.attacks for r in a.rows if r.kind == "method")
        return rows + [(label, "method", recoveries(label)) for label in methods]


def _attack_records(runs: Sequence[Run]) -> dict[str, list[tuple[Run, dict]]]:
    """Every attack of the runs, in order of first appearance, with each run's record of it. Attack metrics of a run
    without an `attacks` record of them (an older writer) still count, with the metrics their keys name."""
    found: dict[str, list[tuple[Run, dict]]] = {}
    for run in runs:
        recorded = run.record.attacks
        records = {
            name: dict(record) if isinstance(record, dict) else {} for name, record in recorded.items()
        }
        keys = set(run.record.metrics) | set(run.record.reference_metrics.target)
        for key in sorted(k for k in keys if is_attack_metric(k)):
            attack, metric = key.removeprefix(ATTACK_PREFIX).split("/", 1)
            if attack not in recorded and not metric.startswith(UNATTACKED_PREFIX):
                records.setdefault(attack, {"recovery_metrics": []})["recovery_metrics"].append(metric)
        for name, record in records.items():
            found.setdefault(name, []).append((run, record))
    return found


def _reference_runs(runs: Sequence[Run], role: str) -> list[Run]:
    """One run per distinct reference model (its artifact path, else its seed), as the tables count them."""
    distinct: dict[str, Run] = {}
    for run in runs:
        artifact = run.artifacts.get(role)
        distinct.setdefault(str(artifact) if artifact else f"seed={run.seed}", run)
    return list(distinct.values())


def _row(label: str, kind: str, role: str, runs: Sequence[Run], attack: str, metrics: Sequence[str]):
    samples = {m: [s for s in (sample(r, role, attack, m) for r in runs) if s is not None] for m in metrics}
    n = max((len(s) for s in samples.values()), default=0)
    if not n:
        return None
    return AttackRow(label, kind, n, {m: metric_cells(s) for m, s in samples.items()})


def attack_table(table: Table, attack: str, records: Sequence[tuple[Run, dict]]) -> AttackTable | None:
    ran = [(run, record) for run, record in records if not record.get("skipped")]
    if not ran:
        return None
    first = ran[0][1]
    metrics = list(dict.fromkeys(m for _, record in ran for m in record.get("recovery_metrics") or ()))
    runs = [run for run, _ in ran]
    rows = [
        _row(role, "reference", role, _reference_runs(runs, role), attack, metrics) for role in REFERENCE_ROWS
    ]
    for row in table.rows:
        if row.kind == "method" and row.group:
            members = [r for r in row.group.runs if any(r is ran_run for ran_run in runs)]
            rows.append(_row(row.label, "method", "method", members, attack, metrics))
    sizes: dict[str, Cell] = {}
    for role in ("method", *REFERENCE_ROWS):
        chosen = runs if role == "method" else _reference_runs(runs, role)
        by_run = [dict(r.record.attacks.get(attack) or {}).get("model_size_bytes") or {} for r in chosen]
        values = [size[role] for size in by_run if _finite(size.get(role))]
        if values:
            sizes[role] = Cell.of(values)
    return AttackTable(
        attack,
        str(first.get("kind") or "unknown"),
        dict(first.get("settings") or {}),
        str(first.get("evaluated") or ""),
        metrics,
        [r for r in rows if r is not None],
        sizes,
    )


def attack_section(table: Table) -> AttackSection | None:
    """The attack section of a table, None when none of its runs evaluated or skipped an attack."""
    records = _attack_records(table.runs)
    if not records:
        return None
    attacks, skipped = [], []
    for attack, entries in records.items():
        reasons: dict[str, int] = {}
        for _, record in entries:
            if record.get("skipped"):
                reasons[str(record["skipped"])] = reasons.get(str(record["skipped"]), 0) + 1
        skipped += [Skip(attack, reason, count, len(table.runs)) for reason, count in reasons.items()]
        built = attack_table(table, attack, entries)
        if built is not None and built.metrics:
            attacks.append(built)
        elif built is not None:  # ran, but names nothing to report: listed, not dropped
            reason = "its record names no recovery_metrics, so there is nothing to compare"
            skipped.append(Skip(attack, reason, len(entries) - sum(reasons.values()), len(table.runs)))
    return AttackSection(table, attacks, skipped)


# --- at matched forgetting ----------------------------------------------------------------------------------------


def target_unattacked(table: Table, attack: str, metric: str) -> float | None:
    """The target's mean unattacked value of `metric` on the attack's items, over the table's distinct targets."""
    values = []
    for run in _reference_runs(table.runs, "target"):
        target = role_values(run, "target")
        value = target.get(unattacked_key(attack, metric, target))
        if attacked_key(attack, metric) in target and _finite(value):
            values.append(float(value))
    return sum(values) / len(values) if values else None


def matched_recovery(table: Table, section: AttackSection, matched: Sequence) -> list[dict[str, Recovery]]:
    """Per matched result (msa_bench.reporting.matched.MatchedResult): {attacked key: recovery} at the matched
    point, from the interpolated attacked and unattacked values and the target's. Empty for a curve that never
    reached the match."""
    found = []
    for result in matched:
        recoveries: dict[str, Recovery] = {}
        if result.reached:
            for attack in section.attacks:
                for metric in attack.metrics:
                    key = attacked_key(attack.attack, metric)
                    before = result.values.get(unattacked_key(attack.attack, metric, result.values))
                    target = target_unattacked(table, attack.attack, metric)
                    if key not in result.values:
                        recoveries[key] = Recovery(None, "a run bracketing the match has no attacked value")
                    else:
                        recoveries[key] = recovery(result.values[key], before, target)
        found.append(recoveries)
    return found
