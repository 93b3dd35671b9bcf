"""Finding results.json files and grouping their runs into tables and rows.

A *table* holds the runs of one benchmark family (TOFU, RESTOR, MUSE), benchmark, forget split and model. A *row*
holds the runs that differ only in their seed (and in settings that do not change what is computed: paths, logger,
threads, device, the list of metrics asked for). Rows are labelled by method; when several rows of a table share a
method, the label adds what differs between them, written like Hydra overrides (`msa [checkpoint=base alpha=2.0]`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msa_bench.benchmarks.base import report_families
from msa_bench.errors import ReportError
from msa_bench.results import PER_ITEM_FILE, RESULTS_FILE, PerItemRecords, RunResults

log = logging.getLogger("msa_bench.report")

# results["config"]["benchmark"]["kind"] -> the paper's table family, as each benchmark declares it.
FAMILIES = report_families()
# Config keys (dotted prefixes) that never separate two rows.
ROW_EXCLUDED = (
    "seed",
    "paths",
    "logger",
    "progress",
    "num_threads",
    "device",
    "preflight",
    "metrics.names",
    "metrics.batch_size",
    "metrics.name",
    # The unlearning dynamics evaluate the same training run at more points; its final model is the same
    # (docs/unlearning_dynamics.md), so a run with them and one without are one row.
    "method.eval_every_epochs",
    "method.eval_every_steps",
    # More oracles (the noise floor) change neither the method's model nor the run's oracle.
    "benchmark.oracle_seeds",
    # Validation runs have tables of their own (their forget split is labelled "(validation)"); within a table the
    # key only tells results written before it existed from those written after.
    "benchmark.forget_set",
)
# Config groups whose `name` stands for the whole group in a label (checkpoint=base rather than its fields).
NAMED_GROUPS = ("model", "checkpoint", "benchmark", "metrics", "method")
STATE_SELECTING_KEYS = ("checkpoint.step", "checkpoint.revision")


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept whole (as JSON text, so they can be compared and hashed)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        elif isinstance(value, list):
            flat[dotted] = json.dumps(value, sort_keys=True, default=str)
        else:
            flat[dotted] = value
    return flat


def _excluded(key: str, excluded: Sequence[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in excluded)


@dataclass(frozen=True)
class UnreadableInput:
    """A file the report could not read: a results.json, or the per_item.json a plot needed. `reason` is the
    reader's message (it names the file)."""

    path: Path
    reason: str


@dataclass
class Run:
    """One results.json, read through `RunResults`. Where the config and the record both say something (the
    benchmark, split, model), the config wins: rows and tables are made of configs. `unreadable`: where a file of
    the run that cannot be read is listed (shared by the runs of one report)."""

    path: Path
    record: RunResults
    unreadable: list[UnreadableInput] = field(default_factory=list, repr=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def config(self) -> dict:
        return self.record.config

    @property
    def flat_config(self) -> dict[str, Any]:
        return flatten(self.config)

    def _config_value(self, group: str, key: str) -> Any:
        section = self.config.get(group)
        return section.get(key) if isinstance(section, dict) else None

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def kind(self) -> str:
        # Results files without a config (e.g. `msa-bench parity --out`) name only the benchmark.
        kind = self._config_value("benchmark", "kind") or self.record.benchmark_kind
        return str(kind) if kind else self.record.benchmark.lower()

    @property
    def family(self) -> str:
        return FAMILIES.get(self.kind, self.kind)

    @property
    def benchmark(self) -> str:
        return str(self._config_value("benchmark", "name") or self.record.benchmark)

    @property
    def forget_split(self) -> str:
        """The forget split, with " (validation)" for a validation run: its tables are apart from the test runs'."""
        split = str(self._config_value("benchmark", "forget_split") or self.record.forget_split or "-")
        return f"{split} (validation)" if self.is_validation else split

    @property
    def is_validation(self) -> bool:
        """Whether the run unlearnt the validation forget set (benchmark.forget_set=validation)."""
        return self._config_value("benchmark", "forget_set") == "validation"

    @property
    def model(self) -> str:
        return str(self._config_value("model", "name") or self.record.model or "unknown")

    @property
    def model_hub_id(self) -> str | None:
        return self._config_value("model", "hub_id")

    @property
    def checkpoint(self) -> str:
        return str(self.record.checkpoint or self._config_value("checkpoint", "name") or "-")

    @property
    def seed(self) -> Any:
        return self.record.seed if self.record.seed is not None else self.config.get("seed")

    @property
    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.record.metrics.items() if _is_number(v)}

    def reference(self, which: str) -> dict[str, float]:
        return {k: v for k, v in self.record.reference_metrics.of(which).items() if _is_number(v)}

    def undefined(self, which: str = "method") -> set[str]:
        """The metrics that are null in the run's results (undefined by their definition; the reason is in
        metric_provenance) for the method's model, or for the reference model `which` (target, oracle)."""
        values = self.record.metrics if which == "method" else self.record.reference_metrics.of(which)
        return {name for name, value in values.items() if value is None}

    @property
    def cost(self) -> dict[str, dict]:
        return self.record.cost

    @property
    def artifacts(self) -> dict[str, str]:
        return self.record.artifacts

    def per_item(self) -> PerItemRecords | None:
        """The run's per_item.json, None when it has none or it cannot be read (a warning says why, and the file is
        listed in `unreadable`)."""
        path = self.folder / PER_ITEM_FILE
        if not path.is_file():
            return None
        try:
            return PerItemRecords.read(path)
        except ReportError as error:
            log.warning("could not read %s", error)
            if all(entry.path != path for entry in self.unreadable):
                self.unreadable.append(UnreadableInput(path, str(error)))
            return None

    @property
    def table_key(self) -> tuple[str, str, str, str]:
        return (self.family, self.benchmark, self.forget_split, self.model)

    def row_identity(self) -> str:
        """What makes two runs the same row: the config without seed and other non-computing settings."""
        kept = {k: v for k, v in self.flat_config.items() if not _excluded(k, ROW_EXCLUDED)}
        if not kept:  # no config at all: one row per method and results file name
            kept = {"method": self.method, "file": str(self.path)}
        return json.dumps(kept, sort_keys=True, default=str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def find_result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every results.json under the given folders (a file given directly is taken as it is), each once."""
    found: dict[Path, None] = {}
    for path in paths:
        path = Path(path)
        if path.is_file():
            found[path.resolve()] = None
        elif path.is_dir():
            for candidate in sorted(path.rglob(RESULTS_FILE)):
                if "wandb" not in candidate.parts:
                    found[candidate.resolve()] = None
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return list(found)


@dataclass
class Collected:
    """What the report read: the runs, and every input it could not read (results files here; per_item.json files
    join as plots ask for them)."""

    runs: list[Run]
    unreadable: list[UnreadableInput]


def collect_runs(paths: Iterable[str | Path]) -> Collected:
    """The runs of every results file found; a file that cannot be read as one is listed, with a warning."""
    collected = Collected(runs=[], unreadable=[])
    for path in find_result_files(paths):
        try:
            record = RunResults.read(path)
        except ReportError as error:
            log.warning("skipping %s", error)
            collected.unreadable.append(UnreadableInput(path, str(error)))
            continue
        collected.runs.append(Run(path=path, record=record, unreadable=collected.unreadable))
    return collected


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The readable runs of `collect_runs`."""
    return collect_runs(paths).runs


@dataclass
class RowGroup:
    """The runs of one row (seeds of one configuration)."""

    label: str
    method: str
    runs: list[Run]
    settings: dict[str, Any] = field(default_factory=dict)  # what tells this row apart from its namesakes

    @property
    def flat_config(self) -> dict[str, Any]:
        return self.runs[0].flat_config


def _label_parts(differing: Mapping[str, Any]) -> dict[str, Any]:
    """Shorten differing config keys to override-like parts: a group's name stands for the group; method.x -> x."""
    parts: dict[str, Any] = {}
    named = {key.split(".")[0] for key in differing if key.count(".") == 1 and key.endswith(".name")}
    named &= set(NAMED_GROUPS)
    for group in sorted(named):
        parts[group] = differing[f"{group}.name"]
    for key, value in differing.items():
        group = key.split(".")[0]
        # A named group's name stands for it, except the fields that pick a state within one checkpoint config
        # (`checkpoint=pretrain_step checkpoint.step=200`).
        if group in named and (key not in STATE_SELECTING_KEYS or value is None):
            continue
        parts[key.removeprefix("method.")] = value
    return parts


def format_setting(value: Any) -> str:
    return "null" if value is None else str(value)


MAX_LABEL_PARTS = 5


def distinguishing_settings(configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each flat config, the override-like settings that set it apart from the others. Keys missing from some
    configs (results written by different versions of the schema) are not settings and are left out."""
    if len(configs) < 2:
        return [{} for _ in configs]
    common = set(configs[0]).intersection(*configs[1:])
    differing = sorted(k for k in common if len({json.dumps(c[k], default=str) for c in configs}) > 1)
    return [_label_parts({k: c[k] for k in differing}) for c in configs]


def settings_label(method: str, settings: Mapping[str, Any]) -> str:
    if not settings:
        return method
    parts = [f"{k}={format_setting(v)}" for k, v in settings.items()]
    if len(parts) > MAX_LABEL_PARTS:
        parts = [*parts[:MAX_LABEL_PARTS], f"+{len(parts) - MAX_LABEL_PARTS} more"]
    return f"{method} [{' '.join(parts)}]"


def comparable_config(run: Run, excluded: Sequence[str] = ROW_EXCLUDED) -> dict[str, Any]:
    return {k: v for k, v in run.flat_config.items() if not _excluded(k, excluded)}


def group_rows(runs: Sequence[Run]) -> list[RowGroup]:
    """Runs grouped into rows (same config but seed), labelled; rows keep the order of their first run."""
    by_identity: dict[str, list[Run]] = {}
    seen: set[tuple[str, str]] = set()
    for run in runs:
        # The same configuration and seed run twice (two sweeps both holding it) is one run, not two samples.
        identity = (run.row_identity(), json.dumps(run.seed, default=str))
        if identity in seen:
            log.info("counting %s once: the same configuration and seed as an earlier result", run.path)
            continue
        seen.add(identity)
        by_identity.setdefault(run.row_identity(), []).append(run)
    groups = [
        RowGroup(label=members[0].method, method=members[0].method, runs=members)
        for members in by_identity.values()
    ]
    by_method: dict[str, list[RowGroup]] = {}
    for group in groups:
        by_method.setdefault(group.method, []).append(group)
    for namesakes in by_method.values():
        settings = distinguishing_settings([comparable_config(g.runs[0]) for g in namesakes])
        for group, setting in zip(namesakes, settings, strict=True):
            group.settings = setting
            group.label = settings_label(group.method, setting)
        _disambiguate(namesakes)
    # A method's rows together (methods in order of first appearance), ordered by their settings (sweep values).
    method_order = {method: index for index, method in enumerate(by_method)}
    return sorted(groups, key=lambda g: (method_order[g.method], _settings_order(g.settings)))


def _settings_order(settings: Mapping[str, Any]) -> tuple:
    return tuple(
        (0, float(v), "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0.0, str(v))
        for v in settings.values()
    )


def _disambiguate(groups: Sequence[RowGroup]) -> None:
    """Rows whose configs differ only in keys some results lack (another schema version) get numbered labels."""
    seen: dict[str, int] = {}
    for group in groups:
        count = seen.get(group.label, 0) + 1
        seen[group.label] = count
        if count > 1:
            group.label = f"{group.label} (config variant {count})"


def partition(runs: Sequence[Run]) -> dict[tuple[str, str, str, str], list[Run]]:
    """Runs by table: (family, benchmark, forget split, model), in order of first appearance."""
    tables: dict[tuple[str, str, str, str], list[Run]] = {}
    for run in runs:
        tables.setdefault(run.table_key, []).append(run)
    return tables
