"""`msa-bench report`: tables from synthetic results.json files (no model is run).

Every expected number below is computed by hand from the fixture values.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from msa_bench.reporting import tables as T
from msa_bench.reporting.collect import load_runs
from msa_bench.reporting.command import main as report_main
from msa_bench.reporting.matched import matched_forgetting
from msa_bench.reporting.paper import load_paper_reference, matching_tables
from msa_bench.reporting.report import ReportOptions, Section, build_report, make_plots, write_report

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TARGET = {"forget_quality": 1e-5, "model_utility": 0.45, "forget_Q_A_Prob": 0.9, "acc_forget": 0.1}
ORACLE = {"forget_quality": 1.0, "model_utility": 0.5, "forget_Q_A_Prob": 0.3, "acc_forget": 0.9}


def config(
    method: dict, seed: int = 0, kind: str = "synthetic_tofu", checkpoint: str = "instruct", **extra
) -> dict:
    return {
        "model": {"name": extra.get("model", "tiny_llama"), "hub_id": extra.get("hub_id")},
        "checkpoint": {"name": checkpoint, "stage": checkpoint, "step": extra.get("step")},
        "benchmark": {"name": extra.get("benchmark", kind), "kind": kind, "forget_split": "forget10"},
        "method": method,
        "metrics": {"name": "tofu", "names": ["x"]},
        "logger": {"name": "none"},
        "paths": {"output_dir": f"/runs/{seed}"},
        "seed": seed,
        "num_threads": 1,
    }


def write_run(
    root: Path,
    name: str,
    method: dict,
    metrics: dict,
    seed: int = 0,
    reference: dict | None = None,
    cost: dict | None = None,
    per_item: dict | None = None,
    **config_extra,
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    results = {
        "method": method["name"],
        "checkpoint": config_extra.get("checkpoint", "instruct"),
        "metrics": metrics,
        "reference_metrics": reference or {"target": TARGET, "oracle": ORACLE},
        "cost": cost or {},
        "seed": seed,
        "artifacts": {"target": f"/cache/target-{seed}", "oracle": f"/cache/oracle-{seed}"},
        "config": config(method, seed, **config_extra),
    }
    (folder / "results.json").write_text(json.dumps(results))
    if per_item is not None:
        (folder / "per_item.json").write_text(json.dumps(per_item))
    return folder


def msa(alpha: float, beta: float = 1.0) -> dict:
    return {"name": "msa", "alpha": alpha, "beta": beta}


COST = {
    "target": {"wall_seconds": 40.0, "flops": 4e12},
    "oracle": {"wall_seconds": 36.0, "flops": 3.6e12},
    "forget_vector": {"wall_seconds": 2.0, "flops": 2e11},
    "retain_vector": {"wall_seconds": 2.0, "flops": 2e11},
    "arithmetic": {"wall_seconds": 0.5, "flops": 0.0},
    "eval:msa": {"wall_seconds": 3.0, "flops": 1e10},
}


@pytest.fixture
def tofu_runs(tmp_path) -> Path:
    """An MSA α sweep (α = 0.5, 1, 2; two seeds at α = 1) and one NPO run, on the synthetic TOFU benchmark."""
    root = tmp_path / "runs"
    items = {"forget_truth_ratio": [0.2, 0.5, 1.0, 2.0]}
    per_item = {
        "method": items,
        "target": {"forget_truth_ratio": [0.1, 0.2]},
        "oracle": items,
        "generations": {},
    }
    sweep = [
        ("a05", 0.5, 0, {"forget_quality": 0.01, "model_utility": 0.5, "forget_Q_A_Prob": 0.6}),
        ("a1s0", 1.0, 0, {"forget_quality": 0.2, "model_utility": 0.4, "forget_Q_A_Prob": 0.2}),
        ("a1s1", 1.0, 1, {"forget_quality": 0.4, "model_utility": 0.4, "forget_Q_A_Prob": 0.2}),
        ("a2", 2.0, 0, {"forget_quality": 0.5, "model_utility": 0.2, "forget_Q_A_Prob": 0.05}),
    ]
    for name, alpha, seed, metrics in sweep:
        write_run(root, name, msa(alpha), metrics, seed=seed, cost=COST, per_item=per_item)
    write_run(
        root,
        "npo",
        {"name": "npo", "beta": 0.1},
        {"forget_quality": 0.02, "model_utility": 0.6, "forget_Q_A_Prob": 0.1},
        cost={"oracle": COST["oracle"], "unlearning": {"wall_seconds": 5.0, "flops": 5e11}},
    )
    return root


def tofu_table(root: Path, metrics=None) -> T.Table:
    tables = T.build_tables(load_runs([root]), metrics)
    return next(t for t in tables if t.family == "tofu" and not t.id.endswith("_checkpoints"))


def test_tofu_table_shape_rows_and_labels(tofu_runs):
    table = tofu_table(tofu_runs)
    assert table.columns == ["forget_quality", "model_utility", "acc_forget"]  # the paper's, when present
    assert [r.label for r in table.rows] == [
        "target",
        "oracle",
        "msa [alpha=0.5]",
        "msa [alpha=1.0]",
        "msa [alpha=2.0]",
        "npo",
    ]
    assert [r.n for r in table.rows] == [
        2,
        2,
        1,
        2,
        1,
        1,
    ]  # target/oracle: two distinct models (seeds 0 and 1)


def test_cells_aggregate_over_seeds(tofu_runs):
    row = tofu_table(tofu_runs).row("msa [alpha=1.0]")
    cell = row.cells["forget_quality"]
    assert cell.mean == pytest.approx(0.3) and cell.n == 2
    assert cell.std == pytest.approx(math.sqrt(0.02))  # sample std of 0.2 and 0.4
    assert row.cells["model_utility"].std == pytest.approx(0.0)
    assert row.cells["acc_forget"].n == 0 and row.cells["acc_forget"].mean is None
    markdown = T.to_markdown(tofu_table(tofu_runs))
    assert "| msa [alpha=1.0] | 0.3000 ± 0.1414 | 0.4000 ± 0.0000 | — | 2 |" in markdown
    assert "| *oracle* | 1.0000 ± 0.0000 | 0.5000 ± 0.0000 | 0.9000 ± 0.0000 | 2 |" in markdown


def test_restor_and_muse_tables(tmp_path):
    root = tmp_path / "runs"
    restor_reference = {"target": {"restor_accuracy": 40.0}, "oracle": {"restor_accuracy": 60.0}}
    write_run(root, "r_msa", msa(1.0), {"restor_accuracy": 55.0}, reference=restor_reference, kind="restor")
    muse_metrics = {
        "muse_extraction_strength": 0.1,
        "muse_exact_memorization": 0.5,
        "forget_verbmem_ROUGE": 0.2,
        "muse_mia_min_k": 0.6,
        "retain_knowmem_ROUGE": 0.4,
        "muse_privleak": 10.0,
    }
    muse_reference = {
        "target": {**muse_metrics, "muse_privleak": -100.0},
        "oracle": {**muse_metrics, "muse_privleak": 0},
    }
    write_run(
        root, "m_msa", msa(1.0), muse_metrics, reference=muse_reference, kind="muse", benchmark="muse_news"
    )
    tables = {t.family: t for t in T.build_tables(load_runs([root]))}
    assert tables["restor"].columns == ["restor_accuracy"]
    assert [r.label for r in tables["restor"].rows] == ["target", "oracle", "msa"]
    assert tables["muse"].columns == [
        "muse_extraction_strength",
        "muse_exact_memorization",
        "forget_verbmem_ROUGE",
        "muse_mia_min_k",
        "retain_knowmem_ROUGE",
        "muse_privleak",
    ]
    assert tables["muse"].benchmark == "muse_news"
    made = make_plots(Section(tables["muse"]), tmp_path / "plots", sweep_param=None)
    assert [p.name for p in made if p.name.endswith("_tradeoff.png")] == [f"{tables['muse'].id}_tradeoff.png"]


def test_checkpoint_ablation_rows_are_checkpoints(tmp_path):
    root = tmp_path / "runs"
    for checkpoint in ("base", "instruct"):
        write_run(
            root, checkpoint, msa(1.0), {"forget_quality": 0.5, "model_utility": 0.4}, checkpoint=checkpoint
        )
    write_run(
        root,
        "step",
        msa(1.0),
        {"forget_quality": 0.1, "model_utility": 0.3},
        checkpoint="pretrain_step",
        step=10,
    )
    tables = T.build_tables(load_runs([root]))
    ablation = next(t for t in tables if t.id.endswith("_checkpoints"))
    assert [r.label for r in ablation.rows] == [
        "target",
        "oracle",
        "base",
        "instruct",
        "pretrain_step (step 10)",
    ]


def test_relative_to_ideal_follows_the_papers_rule(tofu_runs):
    relative = T.relative_to_ideal(
        tofu_table(tofu_runs, ["forget_quality", "model_utility", "forget_Q_A_Prob"])
    )

    def value(row, column):
        return relative.row(row).cells[column].mean

    # model utility (higher is better; ideal 0.5; NPO's 0.6 beats it, so the reference is the ideal)
    assert value("npo", "model_utility") == 100.0
    assert value("msa [alpha=0.5]", "model_utility") == 100.0  # matches the ideal
    assert value("msa [alpha=1.0]", "model_utility") == pytest.approx(80.0)  # 0.4 / 0.5
    assert value("msa [alpha=2.0]", "model_utility") == pytest.approx(40.0)  # 0.2 / 0.5
    # forget quality (ideal 1.0, no method reaches it: relative to the best method, α = 2 with 0.5)
    assert value("msa [alpha=2.0]", "forget_quality") == pytest.approx(100.0)
    assert value("msa [alpha=1.0]", "forget_quality") == pytest.approx(60.0)  # 0.3 / 0.5
    assert value("npo", "forget_quality") == pytest.approx(4.0)  # 0.02 / 0.5
    assert value("oracle", "forget_quality") == 100.0
    # forget probability should equal the oracle's 0.3 (target 0.9): 100% - |v - 0.3| / 0.6
    assert value("msa [alpha=0.5]", "forget_Q_A_Prob") == pytest.approx(50.0)  # |0.6 - 0.3| = 0.3
    assert value("msa [alpha=1.0]", "forget_Q_A_Prob") == pytest.approx(100 * (1 - 0.1 / 0.6))
    assert value("target", "forget_Q_A_Prob") == pytest.approx(0.0)
    assert "100.0%" in T.to_markdown(relative)


def test_relative_to_ideal_lower_is_better():
    # ideal 0.2; best method 0.4 does not reach it, so the reference is 0.4: 0.4 -> 100%, 0.8 -> 50%
    assert T.relative_score(0.8, 0.2, 0.4, T.LOWER) == pytest.approx(50.0)
    assert T.relative_score(0.1, 0.2, 0.2, T.LOWER) == 100.0
    assert T.relative_score(0.5, 0.2, 0.2, T.LOWER) == pytest.approx(40.0)


def test_matched_forgetting_interpolates_between_the_bracketing_runs(tofu_runs):
    table = tofu_table(tofu_runs)
    results = {r.label: r for r in matched_forgetting(table, "forget_Q_A_Prob")}
    msa_result = results["msa"]
    assert msa_result.param == "method.alpha" and msa_result.reached
    # forget_Q_A_Prob by α: 0.5 -> 0.6, 1 -> 0.2, 2 -> 0.05; the oracle's 0.3 lies between α = 1 (0.2) and
    # α = 0.5 (0.6), a quarter of the way: t = (0.3 - 0.2) / (0.6 - 0.2) = 0.25.
    low, high = msa_result.bracket
    assert (low.param, high.param) == (1.0, 0.5)
    assert msa_result.weight == pytest.approx(0.25)
    assert msa_result.param_value == pytest.approx(0.875)  # 1 + 0.25 * (0.5 - 1)
    assert msa_result.values["model_utility"] == pytest.approx(0.425)  # 0.4 + 0.25 * (0.5 - 0.4)
    assert msa_result.values["forget_quality"] == pytest.approx(0.2275)  # mean 0.3 at α = 1, 0.01 at α = 0.5
    assert msa_result.values["forget_Q_A_Prob"] == pytest.approx(0.3)
    assert "between alpha=1 (forget_Q_A_Prob=0.2) and alpha=0.5 (forget_Q_A_Prob=0.6)" in msa_result.note
    # NPO has one run and no swept key: no comparison at matched forgetting
    assert not results["npo"].reached and "no swept hyperparameter" in results["npo"].note


def test_matched_forgetting_on_a_log_scale_places_the_crossing_by_the_metric_log(tofu_runs):
    table = tofu_table(tofu_runs)
    results = {r.label: r for r in matched_forgetting(table, "forget_Q_A_Prob", scale="log")}
    msa_result = results["msa"]
    # The same bracket as on the linear scale (α = 1: 0.2, α = 0.5: 0.6), the oracle's 0.3 placed by the log:
    # t = ln(0.3 / 0.2) / ln(0.6 / 0.2) = ln 1.5 / ln 3 = 0.36907.
    low, high = msa_result.bracket
    assert (low.param, high.param) == (1.0, 0.5) and msa_result.scale == "log"
    assert msa_result.weight == pytest.approx(math.log(1.5) / math.log(3))
    assert msa_result.param_value == pytest.approx(1 - 0.5 * 0.369070246)
    assert msa_result.values["model_utility"] == pytest.approx(0.4 + 0.1 * 0.369070246)
    assert msa_result.values["forget_Q_A_Prob"] == pytest.approx(0.2 + 0.4 * 0.369070246)
    # a method with nothing swept is refused on the scale asked for, not the default one
    assert results["npo"].scale == "log" and not results["npo"].reached


def test_matched_forgetting_on_a_log_scale_refuses_a_zero_bracket_for_that_curve_only(tmp_path):
    root = tmp_path / "runs"
    reference = {"target": TARGET, "oracle": {**ORACLE, "forget_Q_A_Prob": 0.1}}
    for alpha, prob in ((0.5, 0.6), (1.0, 0.0)):
        write_run(
            root,
            f"a{alpha}",
            msa(alpha),
            {"forget_Q_A_Prob": prob, "model_utility": 0.4},
            reference=reference,
        )
    for alpha, prob in ((0.5, 0.4), (1.0, 0.05)):
        write_run(
            root,
            f"tv{alpha}",
            {"name": "task_vector", "alpha": alpha},
            {"forget_Q_A_Prob": prob, "model_utility": 0.4},
            reference=reference,
        )
    table = tofu_table(root, ["forget_Q_A_Prob", "model_utility"])
    results = {r.label: r for r in matched_forgetting(table, "forget_Q_A_Prob", scale="log")}
    assert not results["msa"].reached and results["msa"].values == {}
    assert "--matched-scale log" in results["msa"].note and "positive" in results["msa"].note
    assert results["task_vector"].reached  # ln(0.1 / 0.05) / ln(0.4 / 0.05) = 1/3
    assert results["task_vector"].weight == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="scale 'cubic'"):
        matched_forgetting(table, "forget_Q_A_Prob", scale="cubic")


def test_matched_forgetting_never_extrapolates(tmp_path):
    root = tmp_path / "runs"
    reference = {"target": TARGET, "oracle": {**ORACLE, "forget_Q_A_Prob": 0.01}}
    for alpha, prob in ((0.5, 0.6), (1.0, 0.2)):
        write_run(
            root,
            f"a{alpha}",
            msa(alpha),
            {"forget_Q_A_Prob": prob, "model_utility": 0.4},
            reference=reference,
        )
    table = tofu_table(root, ["forget_Q_A_Prob", "model_utility"])
    (result,) = matched_forgetting(table, "forget_Q_A_Prob")
    assert not result.reached and result.values == {} and result.param_value is None
    assert (
        "never reached" in result.note and "[0.2, 0.6]" in result.note and "no extrapolation" in result.note
    )


def test_matched_forgetting_at_an_exact_run(tmp_path):
    root = tmp_path / "runs"
    for alpha, prob in ((0.5, 0.6), (1.0, 0.3), (2.0, 0.1)):
        write_run(root, f"a{alpha}", msa(alpha), {"forget_Q_A_Prob": prob, "model_utility": alpha})
    (result,) = matched_forgetting(tofu_table(root, ["forget_Q_A_Prob", "model_utility"]), "forget_Q_A_Prob")
    assert result.reached and result.param_value == 1.0 and result.values["model_utility"] == 1.0
    assert result.note == "at the run alpha=1"


@pytest.mark.parametrize("length", ["epochs", "max_steps"])
def test_matched_forgetting_along_epochs_for_each_learning_rate_of_a_grid(tmp_path, length):
    # A learning rate × epochs (or × optimizer steps) grid has no single swept key: each learning rate is matched
    # along how long it trains.
    root = tmp_path / "runs"
    probs = {(1e-4, 2): 0.8, (1e-4, 5): 0.5, (1e-3, 2): 0.4, (1e-3, 5): 0.1}
    for (lr, epochs), prob in probs.items():
        recipe = {"learning_rate": lr, length: epochs}
        metrics = {"forget_Q_A_Prob": prob, "model_utility": epochs / 10}
        write_run(root, f"npo-{lr}-{epochs}", {"name": "npo", "recipe": recipe}, metrics)
    table = tofu_table(root, ["forget_Q_A_Prob", "model_utility"])
    slow, fast = sorted(matched_forgetting(table, "forget_Q_A_Prob"), key=lambda r: r.label)
    assert "learning_rate=0.0001" in slow.label and "learning_rate=0.001" in fast.label
    assert slow.param == fast.param == f"method.recipe.{length}"
    # 1e-4 spans [0.5, 0.8] over its epochs: the oracle's 0.3 is never reached
    assert not slow.reached and "never reached" in slow.note
    # 1e-3: 0.3 lies two thirds of the way from 0.1 (5 epochs) to 0.4 (2 epochs): t = (0.3 - 0.1) / (0.4 - 0.1),
    # epochs 5 + t * (2 - 5) = 3, utility 0.5 + t * (0.2 - 0.5) = 0.3
    assert fast.reached and fast.param_value == pytest.approx(3.0)
    assert fast.values["model_utility"] == pytest.approx(0.3)


def test_report_writes_all_formats_and_pngs(tofu_runs, tmp_path):
    out = tmp_path / "report"
    options = ReportOptions(relative_to_ideal=True, matched_metric="forget_Q_A_Prob")
    report = build_report([tofu_runs], options, plot_dir=out / "plots")
    written = write_report(report, out, ("md", "tex", "csv"))
    names = {p.name for p in written}
    assert {
        "report.md",
        "report.tex",
        "report.csv",
        "matched_forgetting.csv",
        "matched_forgetting.json",
    } <= names
    markdown = (out / "report.md").read_text()
    assert "relative to ideal (%)" in markdown and "Matched forgetting" in markdown and "Cost:" in markdown
    latex = (out / "report.tex").read_text()
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and r"$1.000\times10^{-5}$" in latex
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    cell = next(r for r in rows if r["row"] == "msa [alpha=1.0]" and r["metric"] == "forget_quality")
    assert float(cell["mean"]) == pytest.approx(0.3) and cell["n"] == "2" and cell["unit"] == "value"
    wide = (out / "tables" / f"{report.sections[0].table.id}.csv").read_text().splitlines()
    assert wide[0].startswith("row,kind,n,forget_quality_mean,forget_quality_std,forget_quality_n")
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert any(p.endswith("_tradeoff.png") for p in plots) and any(p.endswith("_cost.png") for p in plots)
    assert sum("_truth_ratio_" in p for p in plots) == 3  # the three MSA rows have per_item.json, NPO has not
    for plot in (out / "plots").iterdir():
        assert plot.read_bytes()[:8] == PNG_MAGIC
    cost = {row["row"]: row for row in report.sections[0].costs}
    assert cost["msa [alpha=1.0]"]["wall_seconds"] == pytest.approx(
        4.5
    )  # vectors + arithmetic, no eval/target
    assert cost["msa [alpha=1.0]"]["stages"] == ["arithmetic", "forget_vector", "retain_vector"]
    assert cost["npo"]["flops"] == pytest.approx(5e11) and cost["npo"]["oracle_flops"] == pytest.approx(
        3.6e12
    )


def test_ablation_plot(tmp_path):
    root = tmp_path / "runs"
    for checkpoint, step in (("pretrain_step", 10), ("pretrain_step", 20)):
        write_run(
            root,
            f"s{step}",
            msa(1.0),
            {"forget_quality": 0.1 * step, "model_utility": 0.4},
            checkpoint=checkpoint,
            step=step,
        )
    write_run(root, "inst", msa(1.0), {"forget_quality": 0.9, "model_utility": 0.4}, checkpoint="instruct")
    report = build_report([root], ReportOptions(), plot_dir=tmp_path / "plots")
    ablation = next(s for s in report.sections if s.table.id.endswith("_checkpoints"))
    assert [p.name for p in ablation.plots] == [f"{ablation.table.id}.png"]
    assert ablation.plots[0].read_bytes()[:8] == PNG_MAGIC


def test_paper_reference_matches_benchmark_and_model(tmp_path):
    reference = load_paper_reference(REPO / "results" / "paper_reference.yaml")
    assert {t.id for t in reference} >= {"restor_v3_llama31_8b", "muse_books_v3_olmo2_7b", "tofu_v1_forget01"}
    for table in reference:
        assert table.spec["provenance"] and table.spec["confidence"]
    root = tmp_path / "runs"
    restor_reference = {"target": {"restor_accuracy": 40.0}, "oracle": {"restor_accuracy": 60.0}}
    write_run(
        root,
        "llama",
        msa(1.0),
        {"restor_accuracy": 55.0},
        reference=restor_reference,
        kind="restor",
        model="llama31_8b_instruct",
        hub_id="meta-llama/Llama-3.1-8B-Instruct",
    )
    write_run(root, "tiny", msa(1.0), {"restor_accuracy": 50.0}, reference=restor_reference, kind="restor")
    tables = {t.model: t for t in T.build_tables(load_runs([root]))}
    (paper,) = matching_tables(reference, tables["llama31_8b_instruct"])
    assert paper.row("oracle").cells["restor_accuracy"].mean == 64.80
    assert paper.row("MSA (closest ckpt = instruct)").cells["restor_accuracy"].mean == 63.95
    assert any("Confidence: high" in note for note in paper.notes)
    assert matching_tables(reference, tables["tiny_llama"]) == []
    # relative to the paper's own ideal: Target 44.31 / 64.80 (no baseline beats the ideal: relative to the best,
    # MSA closest 63.95)
    relative = T.relative_to_ideal(paper)
    assert relative.row("target").cells["restor_accuracy"].mean == pytest.approx(100 * 44.31 / 63.95)


def test_report_command_matched_scale_reaches_the_written_records(tofu_runs, tmp_path):
    out = tmp_path / "out"
    args = [str(tofu_runs), "--out", str(out), "--format", "md,csv", "--no-plots", "--quiet"]
    assert report_main([*args, "--matched-forgetting", "forget_Q_A_Prob", "--matched-scale", "log"]) == 0
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO((out / "matched_forgetting.csv").read_text()))}
    assert rows["msa"]["scale"] == rows["npo"]["scale"] == "log"
    assert float(rows["msa"]["param_value"]) == pytest.approx(1 - 0.5 * math.log(1.5) / math.log(3))
    assert "on forget_Q_A_Prob's log scale" in (out / "report.md").read_text()


def test_report_command(tofu_runs, tmp_path, capsys):
    out = tmp_path / "out"
    code = report_main(
        [str(tofu_runs), "--out", str(out), "--format", "md,csv", "--no-plots", "--relative-to-ideal"]
        + ["--paper-reference", str(REPO / "results" / "paper_reference.yaml"), "--wandb"]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "### TOFU: synthetic_tofu / forget10, model tiny_llama" in printed.out
    assert "No table in" in printed.out  # the embedded model is in no paper table
    assert (
        (out / "report.md").is_file() and (out / "report.csv").is_file() and not (out / "report.tex").exists()
    )
    assert report_main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert report_main([str(tofu_runs), "--format", "pdf", "--out", str(out)]) == 2
    assert "msa-bench report: error:" in capsys.readouterr().err


def test_the_same_configuration_and_seed_in_two_sweeps_counts_once(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "methods", "0", msa(1.0), {"forget_quality": 0.5, "model_utility": 0.4}, seed=0)
    write_run(root / "checkpoints", "0", msa(1.0), {"forget_quality": 0.5, "model_utility": 0.4}, seed=0)
    write_run(root / "methods", "1", msa(1.0), {"forget_quality": 0.7, "model_utility": 0.2}, seed=1)
    table = next(t for t in T.build_tables(load_runs([root])) if not t.id.endswith("_checkpoints"))
    row = next(r for r in table.rows if r.kind == "method")
    assert row.n == 2
    assert row.cells["forget_quality"].mean == pytest.approx(0.6)


def test_pretraining_steps_label_their_rows(tmp_path):
    root = tmp_path / "runs"
    for step in (10, 20):
        write_run(root, f"s{step}", msa(1.0), {"forget_quality": 0.1}, checkpoint="pretrain_step", step=step)
    write_run(root, "base", msa(1.0), {"forget_quality": 0.2}, checkpoint="base")
    table = next(t for t in T.build_tables(load_runs([root])) if not t.id.endswith("_checkpoints"))
    labels = [r.label for r in table.rows if r.kind == "method"]
    assert "msa [checkpoint=pretrain_step checkpoint.step=10]" in labels
    assert "msa [checkpoint=base]" in labels
