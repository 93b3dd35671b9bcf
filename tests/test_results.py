"""results.json as `RunResults`: round trips, reading the committed (version 0) files, and the errors on bad files."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from msa_bench.errors import ReportError
from msa_bench.reporting.collect import load_runs
from msa_bench.results import (
    PER_ITEM_FILE,
    SCHEMA_VERSION,
    PerItemRecords,
    ReferenceMetrics,
    RunResults,
    write_json_atomically,
)

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted((REPO / "results" / "cpu_scale").glob("*.json"))
TOFU_RESULTS = REPO / "results" / "cpu_scale" / "tofu.json"


def full_record() -> RunResults:
    return RunResults(
        method="msa",
        benchmark="synthetic_tofu",
        benchmark_kind="synthetic_tofu",
        model="tiny_llama",
        forget_split="forget10",
        checkpoint="instruct",
        metrics={"forget_quality": 0.25, "model_utility": 0.5},
        metric_provenance={"acc_forget": "judge rouge"},
        reference_metrics=ReferenceMetrics(target={"forget_quality": 1e-5}, oracle={"forget_quality": 1.0}),
        cost={"target": {"wall_seconds": 4.0, "flops": 1e12}},
        seed=3,
        device="cpu",
        wall_seconds=12.5,
        versions={"msa_bench": "0.1.0"},
        artifacts={"model": "/cache/m", "target": "/cache/t", "oracle": "/cache/o"},
        config={"seed": 3, "method": {"name": "msa", "alpha": 1.0}},
    )


def test_a_record_survives_writing_and_reading(tmp_path):
    record = full_record()
    path = tmp_path / "results.json"
    record.write(path)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["reference_metrics"] == {
        "target": {"forget_quality": 1e-5},
        "oracle": {"forget_quality": 1.0},
    }
    # Only parity files carry these; a run's file leaves them out rather than writing empty objects.
    assert not {"missing_metrics", "source", "settings"} & set(on_disk)
    assert RunResults.read(path) == record
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_results_are_read_as_version_0(path):
    raw = json.loads(path.read_text())
    assert "schema_version" not in raw  # written before schema versions: the conversion is what is tested
    record = RunResults.read(path)
    for name in ("method", "benchmark", "benchmark_kind", "model", "forget_split", "checkpoint", "seed"):
        assert getattr(record, name) == raw.get(name), name  # an early file may lack benchmark_kind
    for name in ("metrics", "metric_provenance", "cost", "versions", "artifacts", "config"):
        assert getattr(record, name) == raw.get(name, {}), name
    assert record.reference_metrics.target == raw["reference_metrics"]["target"]
    assert record.reference_metrics.oracle == raw["reference_metrics"]["oracle"]
    # Written again, it is a version-1 file that reads back the same.
    assert RunResults.from_json(record.to_json()) == record


def test_version_0_takes_missing_names_from_the_config():
    record = RunResults.from_json({"metrics": {"x": 1.0}, "config": {"method": {"name": "npo"}}}, "old.json")
    assert (record.method, record.benchmark) == ("npo", "unknown")
    # The old reader ignored fields of the wrong type; so does the conversion.
    lenient = RunResults.from_json({"method": "msa", "metrics": {}, "cost": [1], "config": None}, "old.json")
    assert lenient.cost == {} and lenient.config == {}


def test_version_0_without_metrics_is_not_a_results_file():
    with pytest.raises(
        ReportError, match=r"old\.json: not an msa_bench results file \(no 'metrics' object\)"
    ):
        RunResults.from_json({"method": "msa"}, "old.json")


def test_a_newer_version_is_refused_naming_the_file():
    payload = full_record().to_json() | {"schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(
        ReportError, match=rf"new\.json: schema_version {SCHEMA_VERSION + 1} .* up to {SCHEMA_VERSION}"
    ):
        RunResults.from_json(payload, "new.json")


@pytest.mark.parametrize("field", ["method", "benchmark", "metrics"])
def test_a_missing_required_field_is_named(field):
    payload = full_record().to_json()
    del payload[field]
    with pytest.raises(ReportError, match=rf"run\.json: the results file lacks the required field '{field}'"):
        RunResults.from_json(payload, "run.json")


def test_a_field_of_the_wrong_type_is_named():
    payload = full_record().to_json() | {"cost": [1, 2]}
    with pytest.raises(
        ReportError, match=r"run\.json: field 'cost' of the results file is \[1, 2\], expected a JSON dict"
    ):
        RunResults.from_json(payload, "run.json")
    payload = full_record().to_json()
    payload["reference_metrics"]["oracle"] = None
    with pytest.raises(ReportError, match=r"field 'reference_metrics\.oracle'"):
        RunResults.from_json(payload, "run.json")
    with pytest.raises(ReportError, match=r"unknown field\(s\) \['surprise'\]"):
        RunResults.from_json(full_record().to_json() | {"surprise": 1}, "run.json")


def test_the_report_skips_unreadable_files_with_a_warning(tmp_path, caplog):
    good = tmp_path / "good" / "results.json"
    good.parent.mkdir()
    shutil.copy(TOFU_RESULTS, good)
    files = {
        "newer": json.dumps(full_record().to_json() | {"schema_version": SCHEMA_VERSION + 1}),
        "no_metrics": json.dumps({"method": "msa"}),
        "broken": "{not json",
        "a_list": "[1, 2]",
    }
    for name, text in files.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger="msa_bench.report"):
        runs = load_runs([tmp_path])
    assert [run.path for run in runs] == [good.resolve()]
    assert runs[0].method == "msa" and runs[0].family == "tofu" and runs[0].forget_split == "forget01"
    warnings = "\n".join(caplog.messages)
    for name in files:
        assert str(tmp_path / name / "results.json") in warnings, name
    assert "schema_version" in warnings and "not valid JSON" in warnings and "not an object" in warnings


# --- strict JSON (issue 12, item 2): no NaN or Infinity on writing or reading ------------------------------------


def test_a_nan_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "results.json"
    full_record().write(path)
    before = path.read_bytes()
    broken = dataclasses.replace(full_record(), metrics={"forget_quality": math.nan, "model_utility": 0.5})
    with pytest.raises(
        ValueError, match=r"results\.json: not written, metrics\.forget_quality is not a finite"
    ):
        broken.write(path)
    inf_reference = dataclasses.replace(
        full_record(), reference_metrics=ReferenceMetrics(oracle={"x": math.inf})
    )
    with pytest.raises(ValueError, match=r"reference_metrics\.oracle\.x is not a finite"):
        inf_reference.write(path)
    assert path.read_bytes() == before  # the finished file stays as it was
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # and no temporary is left


@pytest.mark.parametrize(
    ("value", "literal", "where"),
    [
        (math.nan, "NaN", "metrics.forget_quality"),
        (-math.inf, "-Infinity", "reference_metrics.oracle.forget_quality"),
    ],
)
def test_reading_refuses_nan_and_infinity_literals_naming_the_place(tmp_path, value, literal, where):
    payload = full_record().to_json()
    section, *_, name = where.split(".")
    (payload[section] if section == "metrics" else payload[section]["oracle"])[name] = value
    path = tmp_path / "results.json"
    path.write_text(json.dumps(payload))  # Python's json writes the non-JSON literals by default
    with pytest.raises(
        ReportError, match=rf"results\.json: this results file holds {literal} at {where}, which is not"
    ):
        RunResults.read(path)


def test_per_item_files_are_strict_json_too(tmp_path):
    path = tmp_path / PER_ITEM_FILE
    with pytest.raises(
        ValueError, match=r"not written, eval_sets\.forget\[0\]\.method\.values\.tr is not a finite"
    ):
        write_json_atomically(path, {"eval_sets": {"forget": [{"method": {"values": {"tr": math.inf}}}]}})
    assert not path.exists()
    path.write_text(
        '{"schema_version": 1, "method": "msa", "eval_sets": {}, "unaligned": {"method": {"x": NaN}}}'
    )
    with pytest.raises(ReportError, match=r"per-item file holds NaN at unaligned\.method\.x"):
        PerItemRecords.read(path)


def test_a_version_1_file_is_read_without_the_fields_version_2_added():
    payload = full_record().to_json() | {"schema_version": 1}
    del payload["device_name"]
    record = RunResults.from_json(payload, "v1.json")
    assert record.device_name is None and record.metrics == full_record().metrics
