"""results.json: the record of one run, written by the runner and by `msa-bench parity --out`, read by the report.

    schema_version      2 (version 1 files are read as they are; files without the field are version 0, converted on
                        reading: see `_from_version_0`)
    method              the method's name ("msa", "npo", ...; "open-unlearning:<run>" for a parity file)
    benchmark           the benchmark's name (config `benchmark.name`; "TOFU" / "MUSE" for a parity file)
    metrics             {metric: value} of the method's model, the requested metrics (and their sub-metrics); a
                        value is null where the metric is undefined by its definition (since version 2; the reason
                        is in metric_provenance), never NaN: the file is strict JSON
    benchmark_kind      config `benchmark.kind` (synthetic_tofu, tofu, restor, muse), null for a parity file
    model               config `model.name`
    forget_split        config `benchmark.forget_split`
    checkpoint          the θ0 the method starts from (config `checkpoint.name`)
    metric_provenance   {metric: what produced it} where that is a choice (e.g. which judge), or "undefined: <why>"
                        for a null metric; a null reference metric's reason is under "reference_metrics.<model>.<metric>"
    reference_metrics   {"target": {metric: value}, "oracle": {metric: value}}, the same metrics of θ_D and θ_r
    cost                {stage: {"wall_seconds", "flops", ...}} of every stage the run built or reused
    seed, device, wall_seconds
    device_name         the CPU model or GPU name the run computed on (since version 2)
    versions            {package: version, "git_commit": <sha, "-dirty" when uncommitted changes>} of what computed the
                        values
    artifacts           {"model", "target", "oracle": the cache folder of each model}
    config              the resolved Hydra config of the run ({} for a parity file)
    missing_metrics     {metric: why it could not be computed} (parity files)
    source              {"eval", "retain": the open-unlearning logs the values come from} (parity files)
    settings            how the values were computed, where no config says it ({"ou_compatible": ...}, parity)
    attacks             {attack: {"kind", "settings", "recovery_metrics", "evaluated", "skipped", ...}} of the robustness
                        attacks the run applied (docs/attacks.md); their values are the `attack/<attack>/<metric>` keys
                        of metrics and reference_metrics. Left out when the run applied none.
    requests            [{"index", "units", "n_items", "data_id"}] of the sequential deletion requests (benchmark.requests
                        > 1, docs/sequential_requests.md): what each deletes; their values are the `request/<k>/...`
                        keys. MUSE's add "eval_items" ({eval set: items the request is evaluated on}) and
                        "eval_items_left_out" ({eval set: {reason: items no request is evaluated on}}). Left out of a
                        run of one request.
    dynamics            [{"epoch", "step", "final", "metrics", ...}]: the unlearning dynamics (method.eval_every_epochs or
                        method.eval_every_steps, docs/unlearning_dynamics.md), one entry per evaluation point of the
                        one training run, in training order; the last ("final": true) is the run's model, its metrics
                        those of `metrics`. The others add "eval_wall_seconds", "eval_flops" (their evaluation's
                        cost, also in `cost` as "eval:<method> (epoch e, step s)") and, for undefined metrics,
                        "metric_provenance". Left out when the option is off.
    noise_floor         {"oracle_seeds", "seed_rule", "oracles", "pairs", "floor"}: benchmark.oracle_seeds > 1
                        (msa_bench/pipeline/noise_floor.py). pairs: [{"oracle_seed", "reference_seed", "metrics"}],
                        each cross-model metric of one oracle against another; floor: {metric: {"direction",
                        "ideal", "bound", "n_pairs"}}. Left out when the option is off.

`method`, `benchmark` and `metrics` are required; every other field may be absent (it then takes its empty value;
the runner writes all but the three parity fields, `attacks`, `requests`, `dynamics` and `noise_floor`, which are
left out when empty).
A file of a newer schema version, or one whose field has the wrong JSON type, is refused with a ReportError naming the
file and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msa_bench.errors import ReportError
from msa_bench.results.files import newer_version_error, read_json_object, write_json_atomically

SCHEMA_VERSION = 2
# Versions whose layout is the current one but for fields added since (each optional on reading).
_CURRENT_LAYOUT_VERSIONS = (1, SCHEMA_VERSION)
RESULTS_FILE = "results.json"
_WHAT = "results file"


@dataclass(frozen=True)
class ReferenceMetrics:
    """The metrics of the two reference models of a run: θ_D (target, before unlearning) and θ_r (oracle)."""

    target: dict[str, Any] = field(default_factory=dict)
    oracle: dict[str, Any] = field(default_factory=dict)

    def of(self, which: str) -> dict[str, Any]:
        if which not in ("target", "oracle"):
            raise ValueError(f"reference model {which!r}: expected 'target' or 'oracle'")
        return getattr(self, which)


@dataclass(frozen=True)
class RunResults:
    """One results.json (see the module docstring for every field)."""

    method: str
    benchmark: str
    metrics: dict[str, Any]
    benchmark_kind: str | None = None
    model: str | None = None
    forget_split: str | None = None
    checkpoint: str | None = None
    metric_provenance: dict[str, str] = field(default_factory=dict)
    reference_metrics: ReferenceMetrics = field(default_factory=ReferenceMetrics)
    cost: dict[str, dict] = field(default_factory=dict)
    seed: Any = None
    device: str | None = None
    device_name: str | None = None
    wall_seconds: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    missing_metrics: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    attacks: dict[str, dict] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    dynamics: list[dict] = field(default_factory=list)
    noise_floor: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the current schema version (schema_version first). The fields only parity files
        fill are left out when empty."""
        payload: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        payload.update(dataclasses.asdict(self))
        for name in _LEFT_OUT_WHEN_EMPTY:
            if not payload[name]:
                del payload[name]
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], source: Path | str = "<results>") -> RunResults:
        """A record from a results.json object of any version this code reads; `source` names it in errors."""
        version = payload.get("schema_version", 0)
        if version == 0:
            payload = _from_version_0(payload, source)
        elif version not in _CURRENT_LAYOUT_VERSIONS:
            raise newer_version_error(source, _WHAT, version, SCHEMA_VERSION)
        return cls._from_current(payload, source)

    def write(self, path: Path) -> None:
        write_json_atomically(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> RunResults:
        return cls.from_json(read_json_object(path, _WHAT), source=path)

    @classmethod
    def _from_current(cls, payload: Mapping[str, Any], source: Path | str) -> RunResults:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - known - {"schema_version"})
        if unknown:
            version = payload.get("schema_version", SCHEMA_VERSION)
            raise ReportError(f"{source}: unknown field(s) {unknown} in a version {version} {_WHAT}")
        for name in ("method", "benchmark", "metrics"):
            if name not in payload:
                raise ReportError(f"{source}: the {_WHAT} lacks the required field {name!r}")
        values = {name: _checked(payload, name, source) for name in known if name in payload}
        reference = values.get("reference_metrics")
        if reference is not None:
            extra = sorted(set(reference) - {"target", "oracle"})
            if extra:
                raise ReportError(f"{source}: reference_metrics has unknown model(s) {extra}")
            for which in ("target", "oracle"):
                _check_type(reference.get(which, {}), dict, f"reference_metrics.{which}", source)
            values["reference_metrics"] = ReferenceMetrics(**reference)
        return cls(**values)


# JSON type of every field; None values are allowed for the fields that default to None.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "method": str,
    "benchmark": str,
    "metrics": dict,
    "benchmark_kind": str,
    "model": str,
    "forget_split": str,
    "checkpoint": str,
    "metric_provenance": dict,
    "reference_metrics": dict,
    "cost": dict,
    "seed": (int, str, float),
    "device": str,
    "device_name": str,
    "wall_seconds": (int, float),
    "versions": dict,
    "artifacts": dict,
    "config": dict,
    "missing_metrics": dict,
    "source": dict,
    "settings": dict,
    "attacks": dict,
    "requests": list,
    "dynamics": list,
    "noise_floor": dict,
}
_PARITY_FIELDS = ("missing_metrics", "source", "settings")
_LEFT_OUT_WHEN_EMPTY = (*_PARITY_FIELDS, "attacks", "requests", "dynamics", "noise_floor")
_NULLABLE = {
    "benchmark_kind",
    "model",
    "forget_split",
    "checkpoint",
    "seed",
    "device",
    "device_name",
    "wall_seconds",
}


def _checked(payload: Mapping[str, Any], name: str, source: Path | str) -> Any:
    value = payload[name]
    if value is None and name in _NULLABLE:
        return None
    _check_type(value, _FIELD_TYPES[name], name, source)
    return value


def _check_type(value: Any, expected: type | tuple[type, ...], name: str, source: Path | str) -> None:
    if isinstance(value, bool) or not isinstance(value, expected):
        wanted = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ReportError(f"{source}: field {name!r} of the {_WHAT} is {value!r}, expected a JSON {wanted}")


def _from_version_0(payload: Mapping[str, Any], source: Path | str) -> dict[str, Any]:
    """A results.json written before schema versions existed, in the version-1 layout.

    Those files have the same fields, but the report read them leniently, and so does this conversion: the name
    fields may be missing (hand-written or early files), and the method and benchmark then come from the config
    (files with neither say "unknown"); a field that is null or of the wrong JSON type is dropped (it takes its empty
    value, as the report's reader treated it); fields version 1 does not have are dropped. `metrics` was required
    then too: a file without it is not a results file."""
    if not isinstance(payload.get("metrics"), dict):
        raise ReportError(f"{source}: not an msa_bench {_WHAT} (no 'metrics' object)")
    converted = {}
    for name, expected in _FIELD_TYPES.items():
        value = payload.get(name)
        if isinstance(value, expected) and not isinstance(value, bool):
            converted[name] = value
    config = converted.get("config", {})
    for name in ("method", "benchmark"):
        if not converted.get(name):
            group = config.get(name)
            fallback = group.get("name") if isinstance(group, dict) else None
            converted[name] = str(fallback) if fallback else "unknown"
    reference = converted.get("reference_metrics")
    if reference is not None:
        converted["reference_metrics"] = {
            which: reference[which]
            for which in ("target", "oracle")
            if isinstance(reference.get(which), dict)
        }
    return converted
