"""`msa-bench report --select-on validation` (issue 16, point 1; docs/validation_protocol.md): each method's
hyperparameters chosen on the validation forget set by a declared criterion, then the test forget set's metrics at
the chosen point.

The criterion, stated in every report that uses it:
1. A method's candidates are its grid points on the validation forget set (its rows among the validation runs:
   one row per configuration, mean over seeds).
2. A point *reaches* the oracle's forgetting when its forget metric (`--select-metric`, default forget_Q_A_Prob, on
   MUSE muse_mia_min_k) is
   within a factor 1 + `--select-tolerance` (default 0.2) of the validation oracle's, above or below:
   |ln(value / oracle)| <= ln(1.2), the log-ratio distance (`--select-distance log_ratio`, the default). With
   `--select-distance relative` it is |value − oracle| / |oracle| <= 0.2 instead.
3. Among the points that reach it, the one with the highest utility (`--select-utility`, default model_utility, on
   MUSE retain_knowmem_ROUGE); a
   method with none is reported at its closest point (smallest distance) and flagged "never reaches".
4. The test runs whose configuration is the chosen point's, but for benchmark.forget_set, give the reported metrics
   (mean ± std over their seeds). Without one, the report says which run to make.

The matched-forgetting comparison interpolates each sweep on the test forget set itself: selection on test.

Why the log ratio by default: forget metrics are probabilities and ratios, and an oracle's forget probability can be
near 0 (0.001 on cpu/tofu). A relative distance is then lopsided: a point far *below* the oracle is at most 100%
away, one a factor 2 above it is 100% away too, so "closest" favours over-forgetting. The log ratio treats a factor
k above and below alike, and is what "as close as retraining" means for a probability.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from msa_bench.errors import ReportError
from msa_bench.reporting.collect import ROW_EXCLUDED, Run, comparable_config, group_rows
from msa_bench.reporting.tables import Cell, format_cell, format_number, metric_label

# The default criterion's metrics: the first of each that a table's validation runs computed. TOFU's forget answer
# probability and model utility; MUSE's min-k% membership AUC (the forget metric that separates target and oracle at
# CPU scale, results/cpu_reproduction) and retain KnowMem.
DEFAULT_FORGET_METRICS = ("forget_Q_A_Prob", "muse_mia_min_k")
DEFAULT_UTILITY_METRICS = ("model_utility", "retain_knowmem_ROUGE")
DEFAULT_TOLERANCE = 0.2
DISTANCES = ("log_ratio", "relative")
DEFAULT_DISTANCE = "log_ratio"
REFERENCE_METHODS = ("target", "oracle")
# What a validation run and its test run may differ in: what tells no two rows apart (benchmark.forget_set among it).
_PAIRING_EXCLUDED = ROW_EXCLUDED


@dataclass(frozen=True)
class Criterion:
    # None: the first of DEFAULT_FORGET_METRICS / DEFAULT_UTILITY_METRICS the validation runs have (`resolved`).
    forget_metric: str | None = None
    utility_metric: str | None = None
    tolerance: float = DEFAULT_TOLERANCE
    distance: str = DEFAULT_DISTANCE

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"--select-distance {self.distance!r}: must be one of {', '.join(DISTANCES)}")
        if not self.tolerance >= 0:
            raise ValueError(f"--select-tolerance {self.tolerance}: must be a fraction >= 0, e.g. 0.2")

    def resolved(self, runs: Sequence[Run]) -> Criterion:
        """The criterion with its unset metrics chosen from the defaults, by what the validation runs computed (the
        first default when none has any: the error then names it). `select_on_validation` resolves it per table, so
        a report of TOFU and MUSE runs reads each benchmark by its own defaults."""
        held = {name for run in runs if run.is_validation for name in run.metrics}

        def first(choices: tuple[str, ...]) -> str:
            return next((name for name in choices if name in held), choices[0])

        return replace(
            self,
            forget_metric=self.forget_metric or first(DEFAULT_FORGET_METRICS),
            utility_metric=self.utility_metric or first(DEFAULT_UTILITY_METRICS),
        )

    @property
    def threshold(self) -> float:
        """The largest distance that still reaches the oracle."""
        return math.log1p(self.tolerance) if self.distance == "log_ratio" else self.tolerance

    def measure(self, value: float, oracle: float) -> float | None:
        """The distance of a point's forget metric from the oracle's; None where the log ratio is undefined."""
        if self.distance == "log_ratio":
            return abs(math.log(value / oracle)) if value > 0 and oracle > 0 else None
        # Relative to the oracle's value; an oracle at exactly 0 makes it the absolute distance (the note says so).
        return abs(value - oracle) / abs(oracle) if oracle else abs(value)

    def describe(self, distance: float) -> str:
        if self.distance == "log_ratio":
            return f"a factor {math.exp(distance):.3g} from the oracle"
        return f"{distance:.0%} from the oracle"

    def text(self) -> str:
        closeness = (
            f"within a factor {1 + self.tolerance:g} of the validation oracle's, above or below (log-ratio distance)"
            if self.distance == "log_ratio"
            else f"within {self.tolerance:.0%} of the validation oracle's (relative to it)"
        )
        return (
            f"among each method's grid points on the validation forget set, those whose {self.forget_metric} is "
            f"{closeness}; of those, the highest {self.utility_metric}. A method with none is shown at its closest "
            'point, flagged "never reaches". The test forget set\'s metrics are then read at the chosen configuration'
        )


@dataclass
class Selection:
    """One method's chosen point on one benchmark."""

    table: str  # "<benchmark> / <split>, model <model>"
    method: str
    chosen: dict[str, Any]  # the settings that tell the chosen point apart from the method's other points
    label: str
    n_candidates: int
    reached: bool
    distance: float | None  # the criterion's distance of the chosen point's forget metric from the oracle's
    validation: dict[str, Cell]  # forget and utility metric on the validation forget set
    validation_oracle: float | None
    test: dict[str, Cell] = field(default_factory=dict)  # the test runs at the chosen configuration
    test_n: int = 0
    note: str = ""
    criterion: Criterion | None = None  # the table's criterion, its metrics resolved (`Criterion.resolved`)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _oracle_value(runs: Sequence[Run], metric: str) -> float | None:
    """The oracle's value, one per distinct oracle model (runs of one seed share theirs)."""
    distinct: dict[str, float] = {}
    for run in runs:
        value = run.reference("oracle").get(metric)
        if _number(value):
            distinct.setdefault(str(run.artifacts.get("oracle") or run.seed), float(value))
    return _mean(list(distinct.values()))


def _cell(runs: Sequence[Run], metric: str) -> Cell:
    return Cell.of([run.metrics[metric] for run in runs if _number(run.metrics.get(metric))])


def _pairing_identity(run: Run) -> str:
    return json.dumps(comparable_config(run, _PAIRING_EXCLUDED), sort_keys=True, default=str)


def _plain_key(run: Run) -> tuple[str, str, str, str]:
    family, benchmark, _, model = run.table_key
    split = str(run.config.get("benchmark", {}).get("forget_split") or run.record.forget_split or "-")
    return family, benchmark, split, model


def select_on_validation(
    runs: Sequence[Run], criterion: Criterion, test_columns: Sequence[str] = ()
) -> list[Selection]:
    """Every method's chosen point per benchmark (see the module docstring), with the test metrics there. The
    criterion's unset metrics are resolved per table, from that table's validation runs."""
    validation_runs = [run for run in runs if run.is_validation]
    if not validation_runs:
        raise ReportError(
            "--select-on validation: no results.json among the inputs ran on the validation forget set; run the "
            "sweep again with benchmark.forget_set=validation (docs/validation_protocol.md) and report both"
        )
    tests_by_identity: dict[tuple, dict[str, list[Run]]] = {}
    for run in runs:
        if not run.is_validation:
            tests_by_identity.setdefault(_plain_key(run), {}).setdefault(_pairing_identity(run), []).append(
                run
            )
    by_table: dict[tuple, list[Run]] = {}
    for run in validation_runs:
        by_table.setdefault(_plain_key(run), []).append(run)
    selections = []
    for key, table_runs in by_table.items():
        _, benchmark, split, model = key
        title = f"{benchmark} / {split}, model {model}"
        table_criterion = criterion.resolved(table_runs)
        for metric in (table_criterion.forget_metric, table_criterion.utility_metric):
            if not any(_number(run.metrics.get(metric)) for run in table_runs):
                raise ReportError(
                    f"--select-on validation: no validation run of {title} has the metric {metric!r} "
                    "(--select-metric / --select-utility); choose one the runs computed, e.g. forget_Q_A_Prob and "
                    "model_utility on TOFU, muse_mia_min_k and retain_knowmem_ROUGE on MUSE, or leave both unset "
                    "so that each benchmark is read by its own defaults"
                )
        oracle = _oracle_value(table_runs, table_criterion.forget_metric)
        by_method: dict[str, list] = {}
        for group in group_rows(table_runs):
            if group.method not in REFERENCE_METHODS:
                by_method.setdefault(group.method, []).append(group)
        for method, groups in by_method.items():
            selections.append(
                _select(
                    title,
                    method,
                    groups,
                    oracle,
                    table_criterion,
                    tests_by_identity.get(key, {}),
                    test_columns,
                )
            )
    return selections


def _differing_settings(groups) -> list[dict[str, Any]]:
    """Per group, the dotted config keys (as overrides name them) whose values differ among the groups."""
    configs = [comparable_config(group.runs[0], _PAIRING_EXCLUDED) for group in groups]
    if len(configs) < 2:
        return [{} for _ in configs]
    common = set(configs[0]).intersection(*configs[1:])
    keys = sorted(k for k in common if len({json.dumps(c[k], default=str) for c in configs}) > 1)
    return [{key: config[key] for key in keys} for config in configs]


def _select(title, method, groups, table_oracle, criterion, tests, test_columns) -> Selection:
    settings = {id(group): values for group, values in zip(groups, _differing_settings(groups), strict=True)}
    scored = []
    oracles = {}
    for group in groups:
        forget = _cell(group.runs, criterion.forget_metric)
        utility = _cell(group.runs, criterion.utility_metric)
        # Against the oracles of the point's own seeds: a sweep whose points ran on different seeds compares each
        # with its own references.
        oracle = oracles[id(group)] = _oracle_value(group.runs, criterion.forget_metric)
        distance = None
        if forget.mean is not None and oracle is not None:
            distance = criterion.measure(forget.mean, oracle)
        scored.append((group, forget, utility, distance))
    oracle = table_oracle
    measurable = [entry for entry in scored if entry[3] is not None]
    if not measurable:
        group = groups[0]
        note = f"no grid point has {criterion.forget_metric} (or the validation oracle lacks it)"
        if criterion.distance == "log_ratio" and any(entry[1].mean is not None for entry in scored):
            note = (
                f"the log-ratio distance needs positive values of {criterion.forget_metric} and of the oracle's; "
                "pass --select-distance relative for a metric that can be 0 or negative"
            )
        return Selection(
            title,
            method,
            settings[id(group)],
            group.label,
            len(groups),
            False,
            None,
            {},
            oracle,
            note=note,
            criterion=criterion,
        )
    reaching = [entry for entry in measurable if entry[3] <= criterion.threshold]
    if reaching:
        chosen = max(reaching, key=lambda e: e[2].mean if e[2].mean is not None else float("-inf"))
        note = f"{len(reaching)} of {len(groups)} points reach the oracle"
    else:
        chosen = min(measurable, key=lambda e: e[3])
        note = f"never reaches (closest of {len(groups)} points, {criterion.describe(chosen[3])})"
    if len(measurable) < len(groups):
        note += f"; {len(groups) - len(measurable)} point(s) without a distance left out"
    group, forget, utility, distance = chosen
    oracle = oracles[id(group)]
    if oracle == 0 and criterion.distance == "relative":
        note += f"; the validation oracle's {criterion.forget_metric} is 0, so the distance is absolute"
    selection = Selection(
        title,
        method,
        settings[id(group)],
        group.label,
        len(groups),
        bool(reaching),
        distance,
        {criterion.forget_metric: forget, criterion.utility_metric: utility},
        oracle,
        note=note,
        criterion=criterion,
    )
    matching = tests.get(_pairing_identity(group.runs[0]), [])
    columns = list(dict.fromkeys([criterion.forget_metric, criterion.utility_metric, *test_columns]))
    selection.test = {column: _cell(matching, column) for column in columns}
    selection.test_n = len({json.dumps(run.seed, default=str) for run in matching})
    if not matching:
        overrides = " ".join(f"{k}={v}" for k, v in settings[id(group)].items())
        selection.note += (
            f"; no test run at this point: run it with benchmark.forget_set=test {overrides}".rstrip()
        )
    return selection


def _criteria(selections: Sequence[Selection]) -> list[Criterion]:
    """The distinct criteria of the selections' tables, in order (one unless benchmarks with other defaults mix)."""
    return list(dict.fromkeys(s.criterion for s in selections if s.criterion is not None))


def to_markdown(selections: Sequence[Selection]) -> str:
    if not selections:
        return ""
    test_columns = list(dict.fromkeys(c for s in selections for c in s.test))
    criteria = _criteria(selections)
    stated_once = len(criteria) == 1
    lines = [
        "## Selection on validation",
        "",
        (f"Criterion: {criteria[0].text()}. " if stated_once else "Criterion: per benchmark, below. ")
        + "Values: mean ± std over seeds (n). The matched-forgetting comparison interpolates on the test forget "
        "set itself (selection on test).",
        "",
    ]
    for title in dict.fromkeys(s.table for s in selections):
        rows = [s for s in selections if s.table == title]
        criterion = rows[0].criterion
        forget, utility = criterion.forget_metric, criterion.utility_metric
        oracle = rows[0].validation_oracle
        lines += [
            f"### {title}: chosen on the validation forget set (its oracle's {metric_label(forget)}: "
            f"{format_number(oracle)})",
            "",
            *([] if stated_once else [f"Criterion: {criterion.text()}.", ""]),
            "| method | chosen | points | val. "
            + metric_label(forget)
            + " | val. "
            + metric_label(utility)
            + " | "
            + " | ".join(f"test {metric_label(c)}" for c in test_columns)
            + " | test n | note |",
            "|---|---|---:|---:|---:|" + "---:|" * len(test_columns) + "---:|---|",
        ]
        for s in rows:
            chosen = ", ".join(f"{k}={v}" for k, v in s.chosen.items()) or "(its only point)"
            val = [
                format_cell(s.validation[m], s.validation[m].n) if m in s.validation else "—"
                for m in (forget, utility)
            ]
            test = [
                format_cell(s.test[c], s.test[c].n) if s.test.get(c) and s.test[c].n else "—"
                for c in test_columns
            ]
            lines.append(
                f"| {s.method} | {chosen} | {s.n_candidates} | {' | '.join(val)} | {' | '.join(test)} | "
                f"{s.test_n} | {s.note} |"
            )
        lines.append("")
    return "\n".join(lines)


def to_records(selections: Sequence[Selection]) -> list[dict]:
    """selection.json: one record per method and benchmark, with its table's criterion."""
    return [
        {
            "table": s.table,
            "method": s.method,
            "criterion": {
                "forget_metric": s.criterion.forget_metric,
                "utility_metric": s.criterion.utility_metric,
                "tolerance": s.criterion.tolerance,
                "distance": s.criterion.distance,
            },
            "chosen": s.chosen,
            "label": s.label,
            "n_candidates": s.n_candidates,
            "reached": s.reached,
            "distance": s.distance,
            "validation_oracle": s.validation_oracle,
            "validation": {m: c.mean for m, c in s.validation.items()},
            "test": {m: {"mean": c.mean, "std": c.std, "n": c.n} for m, c in s.test.items()},
            "test_n": s.test_n,
            "note": s.note,
        }
        for s in selections
    ]


def to_csv(selections: Sequence[Selection]) -> str:
    """selection.csv: one row per method and benchmark; a validation column per criterion metric of any table (a
    table's row is empty under another table's metrics)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    test_columns = list(dict.fromkeys(c for s in selections for c in s.test))
    criteria = _criteria(selections)
    validation_columns = list(dict.fromkeys(m for c in criteria for m in (c.forget_metric, c.utility_metric)))
    distances = "/".join(dict.fromkeys(c.distance for c in criteria))
    writer.writerow(
        ["table", "method", "chosen", "reached", f"distance ({distances})", "validation_oracle"]
        + [f"validation:{m}" for m in validation_columns]
        + [f"test:{c}" for c in test_columns]
        + ["test_n", "note"]
    )
    for s in selections:
        own = (s.criterion.forget_metric, s.criterion.utility_metric)
        writer.writerow(
            [s.table, s.method, json.dumps(s.chosen, default=str), s.reached, s.distance, s.validation_oracle]
            + [s.validation[m].mean if m in own and m in s.validation else "" for m in validation_columns]
            + [s.test[c].mean if c in s.test and s.test[c].mean is not None else "" for c in test_columns]
            + [s.test_n, s.note]
        )
    return buffer.getvalue()
