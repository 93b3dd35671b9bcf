"""The validation protocol (docs/validation_protocol.md): TOFU's validation forget set, its oracle and retain pools,
the cache keys of test runs left as they were, and `msa-bench report --select-on validation`'s criterion on
hand-written results.

The real-TOFU cases read ../shared/data/tofu, as CI has it (skipped without it).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest

from msa_bench.benchmarks.base import BenchmarkError
from msa_bench.benchmarks.tofu_validation import validation_block
from msa_bench.errors import ConfigError
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.stages import Pipeline
from msa_bench.reporting.command import main as report_main
from msa_bench.reporting.report import ReportOptions, build_report
from msa_bench.reporting.selection import Criterion
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.test_benchmark_sources import SHARED_TOFU, needs_tofu


def pipeline_for(tmp_path: Path, overrides: list[str]) -> Pipeline:
    config = validate_config(compose_config(["logger=none", *overrides], tmp_path))
    return Pipeline(config, ArtifactStore(tmp_path / "cache"), "cpu")


def real_tofu(tmp_path: Path, split: str, forget_set: str) -> Pipeline:
    return pipeline_for(
        tmp_path,
        [
            "benchmark=tofu",
            f"benchmark.data_dir={SHARED_TOFU}",
            f"benchmark.forget_split={split}",
            f"benchmark.forget_set={forget_set}",
        ],
    )


# --- real TOFU --------------------------------------------------------------------------------------------------


@needs_tofu
@pytest.mark.parametrize(("split", "rows"), [("forget01", (3920, 3960)), ("forget05", (3600, 3800))])
def test_the_validation_authors_are_those_just_before_the_test_split(tmp_path, split, rows):
    pipeline = real_tofu(tmp_path, split, "validation")
    pipeline.preflight()
    full = pipeline.split("full")
    start, end = rows  # forget01: authors 196-197 (TOFU's 20 QA each); forget05: authors 180-189
    forget = pipeline.forget_items()
    assert forget == full[start:end]
    questions = {item["question"] for item in forget}
    assert not questions & {item["question"] for item in pipeline.split(split)}  # disjoint from the test set
    # the oracle never saw them; the target did
    oracle = pipeline.benchmark.oracle_items()
    assert len(oracle) == len(full) - (end - start) and not questions & {i["question"] for i in oracle}
    assert questions <= {item["question"] for item in pipeline.benchmark.target_items()}
    retain = pipeline.retain_items()
    assert not questions & {item["question"] for item in retain}
    assert len(retain) == len(pipeline.split(pipeline.benchmark.retain_split)) - (end - start)
    # the eval records carry TOFU's own perturbed answers (forget10_perturbed), in the same order
    records = pipeline.eval_sets({"forget"})["forget"]
    by_question = {item["question"]: item for item in pipeline.split("forget10_perturbed")}
    assert records == [by_question[item["question"]] for item in forget]
    assert not questions & {item["question"] for item in pipeline.eval_sets({"retain"})["retain"]}
    # every cache name of the forget set, the oracle and the retain pool is the validation set's own
    assert pipeline.forget_split.startswith(f"{split}-validation[full rows {start}-{end - 1}, sha256 ")
    assert pipeline.benchmark.data_id("oracle") == f"full-minus-{pipeline.forget_split}"
    assert pipeline.benchmark.data_id("target") == "full"


@needs_tofu
def test_a_named_retain_split_leaves_the_validation_authors_out_under_its_own_name(tmp_path):
    pipeline = real_tofu(tmp_path, "forget01", "validation")
    items, data_id = pipeline.retain_subset(10, 0, split="retain99")
    assert data_id.startswith(f"retain99-minus-{pipeline.forget_split}[10 of 3920, sample seed 0]")
    assert not {i["question"] for i in items} & {i["question"] for i in pipeline.forget_items()}
    # retain90 holds none of authors 196-197: nothing to leave out, the name it always had
    _, data_id = pipeline.retain_subset(10, 0, split="retain90")
    assert data_id == "retain90[10 of 3600, sample seed 0]"


@needs_tofu
@pytest.mark.parametrize("split", ["forget01", "forget05", "forget10"])
def test_a_test_run_keeps_every_name_its_caches_had(tmp_path, split):
    pipeline = real_tofu(tmp_path, split, "test")
    retain = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}[split]
    assert pipeline.forget_split == split
    assert [pipeline.benchmark.data_id(role) for role in ("target", "oracle", "retain")] == [
        "full",
        retain,
        retain,
    ]
    assert pipeline.forget_items() == pipeline.split(split)
    assert pipeline.eval_sets({"forget"})["forget"] == pipeline.split(f"{split}_perturbed")
    assert pipeline.retain_subset(5, 0, split="retain90")[1] == "retain90[5 of 3600, sample seed 0]"


@needs_tofu
def test_forget10_has_no_perturbed_answers_for_its_validation_authors_and_is_refused(tmp_path):
    pipeline = real_tofu(tmp_path, "forget10", "validation")
    with pytest.raises(
        BenchmarkError, match=r"rows 3200-3599 of full.*no perturbed answers.*forget01 or forget05"
    ):
        pipeline.preflight()


# --- the generated benchmark --------------------------------------------------------------------------------------


def test_the_smoke_benchmarks_validation_set_comes_with_its_own_perturbed_answers(tmp_path):
    pipeline = pipeline_for(tmp_path, ["experiment=smoke", "benchmark.forget_set=validation"])
    full = pipeline.split("full")
    n = len(pipeline.split("forget10"))
    assert pipeline.forget_items() == full[-2 * n : -n]
    subjects = {item["subject"] for item in pipeline.forget_items()}
    assert len(subjects) == 3  # smoke's forget10: 3 of its 30 authors; validation: the 3 before them
    assert not subjects & {item["subject"] for item in pipeline.split("forget10")}
    records = pipeline.eval_sets({"forget"})["forget"]
    assert [r["question"] for r in records] == [i["question"] for i in pipeline.forget_items()]
    assert all(r["perturbed_answer"] for r in records)


def test_the_block_rule_refuses_a_forget_set_that_is_not_fulls_tail():
    full = [{"question": f"q{i}", "answer": "a"} for i in range(6)]
    assert validation_block(full, full[4:], "forget")[1] == (2, 4)
    with pytest.raises(BenchmarkError, match="needs forget to be full's last 2 items"):
        validation_block(full, full[:2], "forget")
    with pytest.raises(BenchmarkError, match="needs 4 items of full before"):
        validation_block(full, full[2:], "forget")


# --- config checks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["benchmark.forget_set=dev"], "benchmark.forget_set='dev' must be one of test, validation"),
        (
            ["benchmark=restor", "benchmark.forget_set=validation"],
            "benchmark.kind=restor has no validation forget set yet (these kinds do: muse, synthetic_tofu, tofu)",
        ),
        (
            ["benchmark.forget_set=validation", "benchmark.requests=3"],
            "benchmark.forget_set=validation with benchmark.requests=3",
        ),
    ],
)
def test_a_forget_set_the_run_cannot_have_is_refused_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as raised:
        validate_config(compose_config(["experiment=smoke", *overrides]))
    assert any(expected in problem for problem in raised.value.problems), raised.value.problems


# --- selection on validation --------------------------------------------------------------------------------------

ORACLE = {"validation": 0.10, "test": 0.12}


def _write_results(
    root: Path,
    method: str,
    alpha: float,
    seed: int,
    forget_set: str,
    metrics: dict,
    references: dict,
    benchmark: tuple[str, str, str] = ("synthetic_tofu", "synthetic_tofu", "forget10"),
) -> None:
    """A results.json of `method` at `alpha` on `forget_set`; `benchmark` is (name, kind, forget split)."""
    name, kind, split = benchmark
    folder = root / f"{method}-{alpha}-{forget_set}-{seed}"
    folder.mkdir(parents=True)
    payload = {
        "schema_version": 2,
        "method": method,
        "benchmark": name,
        "seed": seed,
        "metrics": metrics,
        "reference_metrics": references,
        "artifacts": {"oracle": f"/c/oracle-{forget_set}-{seed}", "target": f"/c/target-{seed}"},
        "config": {
            "seed": seed,
            "method": {"name": method, "alpha": alpha},
            "benchmark": {"name": name, "kind": kind, "forget_split": split, "forget_set": forget_set},
            "model": {"name": "tiny_llama"},
        },
    }
    (folder / "results.json").write_text(json.dumps(payload))


def _write(
    root: Path, method: str, alpha: float, seed: int, forget_set: str, prob: float, utility: float
) -> None:
    metrics = {"forget_Q_A_Prob": prob, "model_utility": utility, "forget_quality": prob / 2}
    references = {
        "target": {"forget_Q_A_Prob": 0.9, "model_utility": 0.5},
        "oracle": {"forget_Q_A_Prob": ORACLE[forget_set], "model_utility": 0.5},
    }
    _write_results(root, method, alpha, seed, forget_set, metrics, references)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """msa's alpha 0.5, 1, 2 (validation prob 0.30, 0.11, 0.09: alpha 1 and 2 within a factor 1.2 of the oracle's
    0.10; utility 0.40, 0.35, 0.30, so alpha 1 wins); npo's lr points never get that close (closest: 0.2, a factor
    2 away)."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        for alpha, prob, utility in ((0.5, 0.30, 0.40), (1.0, 0.11, 0.35), (2.0, 0.09, 0.30)):
            _write(root, "msa", alpha, seed, "validation", prob, utility)
            _write(root, "msa", alpha, seed, "test", prob + 0.01 * (seed + 1), utility - 0.01 * seed)
        for alpha, prob in ((1.0, 0.5), (2.0, 0.2)):
            _write(root, "npo", alpha, seed, "validation", prob, 0.45)
        _write(root, "npo", 2.0, seed, "test", 0.25, 0.44)
    return root


def test_the_criterion_picks_the_most_useful_point_that_reaches_the_validation_oracle(sweep):
    report = build_report([sweep], ReportOptions(plots=False, select_on="validation", selection=Criterion()))
    chosen = {s.method: s for s in report.selections}
    msa, npo = chosen["msa"], chosen["npo"]
    assert msa.chosen == {"method.alpha": 1.0} and msa.reached and msa.n_candidates == 3
    assert msa.validation_oracle == pytest.approx(0.10)
    assert msa.distance == pytest.approx(math.log(1.1))
    # the test runs at alpha 1, mean over their two seeds
    assert msa.test["forget_Q_A_Prob"].mean == pytest.approx((0.12 + 0.13) / 2)
    assert msa.test["model_utility"].mean == pytest.approx((0.35 + 0.34) / 2)
    assert msa.test_n == 2
    assert npo.chosen == {"method.alpha": 2.0} and not npo.reached
    assert "never reaches" in npo.note and npo.distance == pytest.approx(math.log(2.0))
    assert "a factor 2 from the oracle" in npo.note
    assert npo.test["forget_Q_A_Prob"].mean == pytest.approx(0.25)


def _choose(root: Path, criterion: Criterion):
    report = build_report([root], ReportOptions(plots=False, select_on="validation", selection=criterion))
    [selection] = report.selections
    return selection


def test_the_log_ratio_does_not_favour_over_forgetting_when_the_oracle_is_near_0(tmp_path):
    """Oracle 0.10 here; alpha 1 forgets to a tenth of it (relative distance 90%), alpha 2 stays a factor 4 above it
    (300%). The relative distance calls the over-forgetting point closest; the log ratio the one a smaller factor
    away. Neither reaches, so each is the closest point under its own distance."""
    root = tmp_path / "runs"
    _write(root, "msa", 1.0, 0, "validation", 0.01, 0.3)
    _write(root, "msa", 2.0, 0, "validation", 0.40, 0.3)
    log_ratio = _choose(root, Criterion())
    assert log_ratio.chosen == {"method.alpha": 2.0} and not log_ratio.reached
    assert log_ratio.distance == pytest.approx(math.log(4.0))
    assert "a factor 4 from the oracle" in log_ratio.note
    relative = _choose(root, Criterion(distance="relative"))
    assert relative.chosen == {"method.alpha": 1.0} and relative.distance == pytest.approx(0.9)
    assert "90% from the oracle" in relative.note


def test_the_log_ratio_reaches_as_far_below_the_oracle_as_above(tmp_path):
    root = tmp_path / "runs"
    _write(root, "msa", 1.0, 0, "validation", 0.10 / 1.19, 0.3)  # a factor 1.19 below: reaches
    _write(root, "msa", 2.0, 0, "validation", 0.10 * 1.19, 0.2)  # a factor 1.19 above: reaches, less useful
    _write(root, "msa", 3.0, 0, "validation", 0.10 / 1.21, 0.9)  # a factor 1.21 below: does not reach
    selection = _choose(root, Criterion())
    assert selection.chosen == {"method.alpha": 1.0} and selection.reached
    assert selection.note.startswith("2 of 3 points reach the oracle")


def test_a_metric_at_0_under_the_log_ratio_says_which_distance_to_use(tmp_path):
    root = tmp_path / "runs"
    _write(root, "msa", 1.0, 0, "validation", 0.0, 0.3)
    selection = _choose(root, Criterion())
    assert selection.distance is None and "--select-distance relative" in selection.note
    assert _choose(root, Criterion(distance="relative")).distance == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--select-tolerance", "-0.1"], "--select-tolerance -0.1: must be a fraction >= 0"),
        (["--select-distance", "absolute"], "invalid choice: 'absolute'"),
    ],
)
def test_a_bad_criterion_is_refused_naming_the_option(sweep, tmp_path, capsys, argv, expected):
    with contextlib.suppress(SystemExit):  # argparse's choices exit; the rest return 2
        assert (
            report_main([str(sweep), "--out", str(tmp_path / "r"), "--select-on", "validation", *argv]) == 2
        )
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_looser_tolerance_changes_the_choice_as_declared(sweep):
    loose = Criterion(tolerance=2.5)  # within a factor 3.5: every point reaches, the most useful is alpha 0.5
    report = build_report([sweep], ReportOptions(plots=False, select_on="validation", selection=loose))
    assert {s.method: s.chosen for s in report.selections}["msa"] == {"method.alpha": 0.5}


def test_the_command_prints_the_chosen_values_and_writes_the_records(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_main([str(sweep), "--out", str(out), "--no-plots", "--select-on", "validation"]) == 0
    printed = capsys.readouterr().out
    assert "## Selection on validation" in printed
    assert "| msa | method.alpha=1.0 | 3 |" in printed, printed
    assert "never reaches" in printed
    records = json.loads((out / "selection.json").read_text())
    assert {r["method"]: r["chosen"] for r in records} == {
        "msa": {"method.alpha": 1.0},
        "npo": {"method.alpha": 2.0},
    }
    assert (out / "selection.csv").read_text().startswith("table,method,chosen,reached")


def _write_muse(root: Path, alpha: float, seed: int, forget_set: str, auc: float, knowmem: float) -> None:
    metrics = {"muse_mia_min_k": auc, "retain_knowmem_ROUGE": knowmem, "forget_verbmem_ROUGE": auc / 4}
    references = {
        "target": {"muse_mia_min_k": 0.78, "retain_knowmem_ROUGE": 0.024},
        "oracle": {
            "muse_mia_min_k": {"validation": 0.52, "test": 0.51}[forget_set],
            "retain_knowmem_ROUGE": 0.022,
        },
    }
    _write_results(root, "msa", alpha, seed, forget_set, metrics, references, ("muse_news", "muse", "forget"))


def test_on_muse_the_default_criterion_reads_its_membership_auc_and_retain_knowmem(tmp_path, capsys):
    """No --select-metric: a MUSE sweep is chosen by min-k% AUC within a factor 1.2 of the validation oracle's
    (0.52), then the highest retain KnowMem. alpha 1 (0.55) and 2 (0.50) reach, alpha 1 keeps more."""
    root = _muse_sweep(tmp_path / "runs")
    out = tmp_path / "report"
    assert report_main([str(root), "--out", str(out), "--no-plots", "--select-on", "validation"]) == 0
    [record] = json.loads((out / "selection.json").read_text())
    assert record["chosen"] == {"method.alpha": 1.0} and record["reached"]
    assert "muse_mia_min_k" in capsys.readouterr().out
    report = build_report([root], ReportOptions(plots=False, select_on="validation"))
    [selection] = report.selections
    assert selection.criterion.forget_metric == "muse_mia_min_k"
    assert selection.criterion.utility_metric == "retain_knowmem_ROUGE"
    assert selection.test["muse_mia_min_k"].mean == pytest.approx(0.56)
    assert selection.test["forget_verbmem_ROUGE"].mean == pytest.approx(0.56 / 4)  # MUSE's columns at test


def _muse_sweep(root: Path) -> Path:
    for alpha, auc, knowmem in ((0.5, 0.70, 0.020), (1.0, 0.55, 0.018), (2.0, 0.50, 0.010)):
        _write_muse(root, alpha, 0, "validation", auc, knowmem)
        _write_muse(root, alpha, 0, "test", auc + 0.01, knowmem)
    return root


def test_a_report_of_tofu_and_muse_reads_each_benchmark_by_its_own_default_metrics(sweep, tmp_path):
    """One report of a TOFU sweep and a MUSE sweep: the TOFU table is chosen by its forget probability and model
    utility, the MUSE table by min-k% AUC and retain KnowMem (not "no grid point has forget_Q_A_Prob")."""
    muse = _muse_sweep(tmp_path / "muse")
    out = tmp_path / "report"
    assert (
        report_main([str(sweep), str(muse), "--out", str(out), "--no-plots", "--select-on", "validation"])
        == 0
    )
    records = {
        (r["table"].split(" /")[0], r["method"]): r for r in json.loads((out / "selection.json").read_text())
    }
    tofu, muse_msa = records["synthetic_tofu", "msa"], records["muse_news", "msa"]
    assert tofu["criterion"]["forget_metric"] == "forget_Q_A_Prob" and tofu["chosen"] == {"method.alpha": 1.0}
    assert muse_msa["criterion"]["forget_metric"] == "muse_mia_min_k"
    assert muse_msa["criterion"]["utility_metric"] == "retain_knowmem_ROUGE"
    assert muse_msa["chosen"] == {"method.alpha": 1.0} and muse_msa["reached"]
    markdown = (out / "report.md").read_text()
    assert "Criterion: per benchmark, below." in markdown
    assert "whose forget_Q_A_Prob is" in markdown and "whose muse_mia_min_k is" in markdown
    header = (out / "selection.csv").read_text().splitlines()[0]
    assert "validation:forget_Q_A_Prob" in header and "validation:muse_mia_min_k" in header


def test_a_metric_one_benchmark_of_the_report_lacks_is_refused_naming_its_table(sweep, tmp_path, capsys):
    muse = _muse_sweep(tmp_path / "muse")
    out = tmp_path / "report"
    argv = [str(sweep), str(muse), "--out", str(out), "--no-plots", "--select-on", "validation"]
    assert report_main([*argv, "--select-metric", "forget_Q_A_Prob"]) == 2
    error = capsys.readouterr().err
    assert "no validation run of muse_news" in error and "'forget_Q_A_Prob'" in error
    assert "leave both unset" in error
    assert not out.exists()


def test_a_chosen_point_without_a_test_run_names_the_run_to_make(tmp_path):
    root = tmp_path / "runs"
    _write(root, "msa", 1.0, 0, "validation", 0.1, 0.3)
    _write(root, "msa", 2.0, 0, "validation", 0.5, 0.3)
    report = build_report([root], ReportOptions(plots=False, select_on="validation"))
    [selection] = report.selections
    assert (
        "no test run at this point: run it with benchmark.forget_set=test method.alpha=1.0" in selection.note
    )


def test_an_unknown_selection_metric_is_refused_naming_it(sweep, tmp_path, capsys):
    argv = [
        str(sweep),
        "--out",
        str(tmp_path / "r"),
        "--select-on",
        "validation",
        "--select-metric",
        "forget_prob",
    ]
    assert report_main(argv) == 2
    assert (
        "no validation run of synthetic_tofu / forget10, model tiny_llama has the metric 'forget_prob'"
        in (capsys.readouterr().err)
    )


def test_each_point_is_compared_with_the_oracles_of_its_own_seeds(tmp_path):
    root = tmp_path / "runs"
    _write(root, "msa", 1.0, 0, "validation", 0.11, 0.3)  # seed 0's oracle: 0.10, so 10% away
    _write(root, "msa", 2.0, 5, "validation", 0.2, 0.9)  # another seed, its oracle moved to 0.2 below
    moved = root / "msa-2.0-validation-5" / "results.json"
    payload = json.loads(moved.read_text())
    payload["reference_metrics"]["oracle"]["forget_Q_A_Prob"] = 0.2
    moved.write_text(json.dumps(payload))
    report = build_report([root], ReportOptions(plots=False, select_on="validation"))
    [selection] = report.selections
    # against its own oracle alpha 2 is at 0% and more useful: chosen (against the pooled 0.15 it would be 33% away)
    assert selection.chosen == {"method.alpha": 2.0} and selection.distance == pytest.approx(0.0)


@needs_tofu
def test_benign_relearning_data_of_a_validation_run_have_a_name_of_their_own(tmp_path):
    test = real_tofu(tmp_path / "t", "forget01", "test").benchmark.relearning_data("retain", 0.25, 0)
    val = real_tofu(tmp_path / "v", "forget01", "validation").benchmark.relearning_data("retain", 0.25, 0)
    assert test.data_id.startswith("retain99[relearn 10 of ")
    assert val.data_id.startswith("retain99-minus-forget01-validation[")


def test_without_validation_runs_the_selection_is_refused_saying_what_to_run(tmp_path, capsys):
    root = tmp_path / "runs"
    _write(root, "msa", 1.0, 0, "test", 0.1, 0.3)
    assert report_main([str(root), "--out", str(tmp_path / "r"), "--select-on", "validation"]) == 2
    assert "benchmark.forget_set=validation" in capsys.readouterr().err
