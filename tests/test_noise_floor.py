"""The noise floor (benchmark.oracle_seeds, msa_bench/pipeline/noise_floor.py; docs/reporting.md): oracles retrained
with other seeds, scored against one another, and the report's verdict on which rows lie inside that floor.

Fast tests: the floor and inside rules on hand-computed cases, the option's checks, and the report on hand-written
results.json files. The slow tests run the smoke pipeline with two and then three oracles in one cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from msa_bench.metrics.registry import Direction
from msa_bench.models.build import load_model
from msa_bench.pipeline.noise_floor import floor_metrics, floor_of, is_inside, oracle_seeds
from msa_bench.reporting.report import ReportOptions, build_report, write_report
from tests.conftest import smoke_config_problems as problems_of
from tests.pipeline_runs import run_job

# --- the rules --------------------------------------------------------------------------------------------------


def test_the_seeds_start_with_the_runs_and_step_by_a_thousand():
    assert oracle_seeds(7, 3) == [7, 1007, 2007]
    assert oracle_seeds(0, 1) == [0]


@pytest.mark.parametrize(
    ("direction", "values", "ideal", "bound"),
    [
        (Direction.HIGHER, [0.9, 0.4, 0.7], None, 0.4),  # forget quality: the worst oracle pair
        (Direction.LOWER, [0.1, 0.3, 0.2], None, 0.3),
        (Direction.TOWARD_ORACLE, [-4.0, 2.5, 1.0], 0.0, 4.0),  # privleak: the largest distance from 0
        (Direction.TOWARD_ORACLE, [0.45, 0.58], 0.5, 0.08),  # an AUC, whose ideal is 0.5
        (Direction.HIGHER, [], None, None),
        (Direction.TOWARD_ORACLE, [1.0], None, None),  # no ideal: no floor
    ],
)
def test_the_floor_is_the_least_favourable_oracle_pair(direction, values, ideal, bound):
    found = floor_of(direction, values, ideal)
    assert found == pytest.approx(bound) if bound is not None else found is None


@pytest.mark.parametrize(
    ("value", "entry", "inside"),
    [
        (0.5, {"direction": "higher", "bound": 0.4}, True),
        (0.4, {"direction": "higher", "bound": 0.4}, True),  # the worst oracle pair itself is inside
        (0.39, {"direction": "higher", "bound": 0.4}, False),
        (0.2, {"direction": "lower", "bound": 0.3}, True),
        (0.31, {"direction": "lower", "bound": 0.3}, False),
        (-3.9, {"direction": "toward_oracle", "ideal": 0.0, "bound": 4.0}, True),
        (4.1, {"direction": "toward_oracle", "ideal": 0.0, "bound": 4.0}, False),
        (None, {"direction": "higher", "bound": 0.4}, None),
        (0.5, {"direction": "higher", "bound": None}, None),
    ],
)
def test_a_value_is_inside_when_no_farther_from_the_oracle_than_an_oracle_pair(value, entry, inside):
    assert is_inside(value, entry) is inside


# --- the option's checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["benchmark.oracle_seeds=0"], "benchmark.oracle_seeds=0 must be an integer >= 1"),
        (
            ["benchmark.oracle_seeds=2", "benchmark.requests=3"],
            "benchmark.oracle_seeds=2 with benchmark.requests=3",
        ),
        (
            ["benchmark.oracle_seeds=2", "metrics.names=[model_utility]"],
            "has no metric that compares a model with the oracle",
        ),
    ],
)
def test_a_floor_it_cannot_measure_is_refused_naming_the_key(overrides, expected):
    problems = problems_of(overrides)
    assert any(expected in problem for problem in problems), problems


def test_a_last_oracle_seed_beyond_numpys_range_is_refused_before_anything_trains():
    problems = problems_of([f"seed={2**32 - 1500}", "benchmark.oracle_seeds=3"])
    assert any("the last oracle's seed, 4294967796, is beyond 4294967295" in p for p in problems), problems


def test_scores_that_never_read_the_oracle_have_no_floor():
    names = ["forget_quality", "memorization_score", "privacy_score", "utility_score", "model_utility"]
    assert floor_metrics(names) == ["forget_quality", "privacy_score"]


def test_restor_whose_oracle_no_seed_changes_is_refused():
    problems = problems_of(["benchmark=restor", "benchmark.oracle_seeds=3"])
    assert any("benchmark.kind=restor" in problem for problem in problems), problems


# --- the report on hand-written results ---------------------------------------------------------------------------


def _results(method: str, seed: int, method_fq: float, method_privleak: float) -> dict:
    pairs = [
        {"oracle_seed": a, "reference_seed": b, "metrics": {"forget_quality": fq, "privleak": pl}}
        for (a, b), fq, pl in zip(
            [(seed, seed + 1000), (seed + 1000, seed)],
            [0.6 + seed / 10, 0.5 + seed / 10],
            [3.0, -5.0 - seed],
            strict=True,
        )
    ]
    return {
        "schema_version": 2,
        "method": method,
        "benchmark": "synthetic_tofu",
        "benchmark_kind": "synthetic_tofu",
        "model": "tiny_llama",
        "forget_split": "forget10",
        "checkpoint": "closest",
        "seed": seed,
        "metrics": {"forget_quality": method_fq, "privleak": method_privleak},
        "reference_metrics": {
            "target": {"forget_quality": 0.01, "privleak": 60.0},
            "oracle": {"forget_quality": 1.0, "privleak": 0.0},
        },
        "artifacts": {"target": f"/c/target{seed}", "oracle": f"/c/oracle{seed}"},
        "config": {
            "method": {"name": method},
            "benchmark": {"name": "synthetic_tofu", "kind": "synthetic_tofu", "forget_split": "forget10"},
            "model": {"name": "tiny_llama"},
            "seed": seed,
        },
        "noise_floor": {
            "oracle_seeds": [seed, seed + 1000],
            "seed_rule": "seed + 1000·i",
            "oracles": {str(seed): f"/c/oracle{seed}", str(seed + 1000): f"/c/oracle{seed + 1000}"},
            "pairs": pairs,
            "floor": {
                "forget_quality": {
                    "direction": "higher",
                    "ideal": None,
                    "bound": 0.5 + seed / 10,
                    "n_pairs": 2,
                },
                "privleak": {"direction": "toward_oracle", "ideal": 0.0, "bound": 5.0 + seed, "n_pairs": 2},
            },
        },
    }


def test_the_report_pools_each_seeds_floor_and_marks_the_rows_inside(tmp_path: Path):
    # Seeds 0 and 1 (their floors: FQ ≥ 0.5 and ≥ 0.6; |privleak| ≤ 5 and ≤ 6): pooled, FQ ≥ 0.5, |privleak| ≤ 6.
    # npo's means: FQ 0.55 (inside), privleak -5.5 (inside); ga's: FQ 0.3 (outside), privleak 7 (outside).
    for method, values in {
        "npo": [(0.5, -5.0), (0.6, -6.0)],
        "grad_ascent": [(0.2, 8.0), (0.4, 6.0)],
    }.items():
        for seed, (fq, privleak) in enumerate(values):
            folder = tmp_path / "runs" / f"{method}-{seed}"
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps(_results(method, seed, fq, privleak)))
    report = build_report([tmp_path / "runs"], ReportOptions(plots=False))
    [section] = report.sections
    floor = section.noise_floor
    assert floor.oracle_sets == [[0, 1000], [1, 1001]]
    by_metric = {m.metric: m for m in floor.metrics}
    assert by_metric["forget_quality"].bound == pytest.approx(0.5)
    assert by_metric["privleak"].bound == pytest.approx(6.0)
    assert sorted(by_metric["forget_quality"].pair_values) == pytest.approx([0.5, 0.6, 0.6, 0.7])
    assert floor.inside("npo", "forget_quality") and floor.inside("npo", "privleak")
    assert floor.inside("grad_ascent", "forget_quality") is False
    assert floor.inside("grad_ascent", "privleak") is False
    assert floor.inside("oracle", "privleak") and floor.inside("target", "privleak") is False
    written = write_report(report, tmp_path / "out", ("md", "csv"))
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "### Noise floor" in markdown
    assert "| npo | 0.5500 ≈ | -5.5000 ≈ |" in markdown, markdown
    assert "| grad_ascent | 0.3000 | 7.0000 |" in markdown, markdown
    csv_path = next(p for p in written if p.name.endswith("_noise_floor.csv"))
    lines = csv_path.read_text().splitlines()
    assert lines[0].endswith("bound,inside_noise_floor")
    assert any(line.split(",")[1:3] == ["npo", "privleak"] and line.endswith("True") for line in lines)


def test_a_report_without_a_floor_has_no_floor_section(tmp_path: Path):
    payload = _results("npo", 0, 0.5, 1.0)
    del payload["noise_floor"]
    (tmp_path / "results.json").write_text(json.dumps(payload))
    report = build_report([tmp_path], ReportOptions(plots=False))
    assert report.sections[0].noise_floor is None
    write_report(report, tmp_path / "out", ("md", "csv"))
    assert "Noise floor" not in (tmp_path / "out" / "report.md").read_text()
    assert not list((tmp_path / "out" / "tables").glob("*_noise_floor.csv"))


# --- the smoke pipeline -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def floor_runs(tmp_path_factory):
    """The target as the method (nothing to unlearn: the cheapest run), with two and then three oracles."""
    root = tmp_path_factory.mktemp("noise_floor")
    cache = root / "cache"
    two = run_job(cache, root / "two", ["method=target", "benchmark.oracle_seeds=2"])
    three = run_job(cache, root / "three", ["method=target", "benchmark.oracle_seeds=3"])
    return two, three


@pytest.mark.slow
def test_two_oracles_give_two_pairs_of_real_values(floor_runs):
    two, _ = floor_runs
    floor = two["noise_floor"]
    assert floor["oracle_seeds"] == [0, 1000]
    assert floor["oracles"]["0"] == two["artifacts"]["oracle"]
    assert floor["oracles"]["1000"] != floor["oracles"]["0"]
    assert [(p["oracle_seed"], p["reference_seed"]) for p in floor["pairs"]] == [(0, 1000), (1000, 0)]
    values = [p["metrics"]["forget_quality"] for p in floor["pairs"]]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert floor["floor"]["forget_quality"] == {
        "direction": "higher",
        "ideal": None,
        "bound": min(values),
        "n_pairs": 2,
    }
    assert two["cost"]["oracle (seed 1000)"]["reused"] is False
    assert "eval:oracle (seed 1000)" in two["cost"]


@pytest.mark.slow
def test_the_other_oracle_is_the_same_recipe_with_another_seed_and_other_weights(floor_runs):
    two, _ = floor_runs
    first, other = (Path(two["noise_floor"]["oracles"][seed]) for seed in ("0", "1000"))
    specs = [json.loads((folder / "_artifact.json").read_text())["spec"] for folder in (first, other)]
    assert specs[0]["seed"] == 0 and specs[1]["seed"] == 1000
    assert {k: v for k, v in specs[0].items() if k != "seed"} == {
        k: v for k, v in specs[1].items() if k != "seed"
    }
    weights = [load_model(folder, "cpu", "float32").state_dict() for folder in (first, other)]
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


@pytest.mark.slow
def test_a_third_oracle_reuses_the_second_and_scores_six_pairs(floor_runs):
    two, three = floor_runs
    floor = three["noise_floor"]
    assert floor["oracle_seeds"] == [0, 1000, 2000]
    assert len(floor["pairs"]) == 6
    assert three["cost"]["oracle (seed 1000)"]["reused"] is True
    assert three["cost"]["oracle (seed 2000)"]["reused"] is False
    # the pair both runs score is the same number
    pair = {(p["oracle_seed"], p["reference_seed"]): p["metrics"] for p in floor["pairs"]}
    assert pair[(0, 1000)] == two["noise_floor"]["pairs"][0]["metrics"]
    # the run's own metrics are what they are without the option: the target scored against the run's oracle
    assert three["metrics"] == two["metrics"]


def test_runs_with_and_without_more_oracles_are_one_row(tmp_path: Path):
    with_floor = _results("npo", 0, 0.5, 1.0)
    with_floor["config"]["benchmark"]["oracle_seeds"] = 2
    without = _results("npo", 1, 0.6, 2.0)
    without["config"]["benchmark"]["oracle_seeds"] = 1
    for name, payload in (("a", with_floor), ("b", without)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(payload))
    report = build_report([tmp_path], ReportOptions(plots=False))
    [npo] = [row for row in report.sections[0].table.rows if row.kind == "method"]
    assert npo.n == 2
