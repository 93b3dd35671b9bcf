"""`msa-bench report` on runs with unlearning dynamics (results.json `dynamics`, docs/unlearning_dynamics.md): the
`<table>_dynamics.png` plot, `tables/<table>_dynamics.csv` and the Markdown summary, from hand-made results files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from matplotlib.container import ErrorbarContainer

from msa_bench.reporting import dynamics_plots
from msa_bench.reporting.report import ReportOptions, build_report, write_report
from tests.test_report import PNG_MAGIC, msa, write_run

# Forget quality rises and utility falls along each run; the last point is the run's own metrics.
CURVES = {
    ("npo", 0): [(1.0, 2, 0.01, 0.50), (2.0, 4, 0.10, 0.45), (3.0, 6, 0.30, 0.40)],
    ("npo", 1): [(1.0, 2, 0.03, 0.48), (2.0, 4, 0.20, 0.43), (3.0, 6, 0.50, 0.38)],
    ("grad_diff", 0): [(1.0, 2, 0.05, 0.40), (2.0, 4, 0.60, 0.30), (3.0, 6, 0.90, 0.20)],
}
SCHEDULES = {"npo": "linear", "grad_diff": "constant"}


def write_dynamics_run(root: Path, method: str, seed: int, **method_extra) -> None:
    points = CURVES[(method, seed)]
    final = {"forget_quality": points[-1][2], "model_utility": points[-1][3]}
    recipe = {"epochs": 3, "lr_scheduler": SCHEDULES[method], "warmup_ratio": 0.0}
    config = {"name": method, "recipe": recipe, **method_extra}
    folder = write_run(root, f"{method}-{seed}", config, final, seed=seed)
    path = folder / "results.json" if folder.is_dir() else folder
    results = json.loads(path.read_text())
    results["dynamics"] = [
        {
            "epoch": epoch,
            "step": step,
            "final": index == len(points) - 1,
            "metrics": {"forget_quality": quality, "model_utility": utility},
            **({} if index == len(points) - 1 else {"eval_wall_seconds": 1.5, "eval_flops": 1e9}),
        }
        for index, (epoch, step, quality, utility) in enumerate(points)
    ]
    path.write_text(json.dumps(results))


@pytest.fixture
def dynamics_runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    write_dynamics_run(root, "npo", 0, eval_every_epochs=1)
    write_dynamics_run(root, "npo", 1, eval_every_epochs=1)
    write_dynamics_run(root, "grad_diff", 0, eval_every_epochs=1)
    write_run(root, "msa", msa(1.0), {"forget_quality": 0.7, "model_utility": 0.5})  # no dynamics
    return root


@pytest.fixture
def saved(monkeypatch) -> list:
    figures = []
    real = dynamics_plots.save

    def catch(figure, path):
        figures.append(figure)
        return real(figure, path)

    monkeypatch.setattr(dynamics_plots, "save", catch)
    return figures


def report_of(root: Path, out: Path):
    report = build_report([root], ReportOptions(), plot_dir=out / "plots")
    return report, write_report(report, out, ("md", "csv"))


def test_the_report_draws_the_dynamics_plot_and_writes_its_csv(dynamics_runs, tmp_path, saved):
    out = tmp_path / "report"
    report, written = report_of(dynamics_runs, out)
    (table,) = [s.table for s in report.sections]
    plot = out / "plots" / f"{table.id}_dynamics.png"
    assert plot in report.plots and plot.read_bytes().startswith(PNG_MAGIC)
    csv_path = out / "tables" / f"{table.id}_dynamics.csv"
    assert csv_path in written
    lines = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(lines) == 9  # 3 runs × 3 points; the msa run has none
    assert {line["row"] for line in lines} == {"npo", "grad_diff"}
    last = next(
        line for line in lines if line["row"] == "npo" and line["seed"] == "1" and line["final"] == "True"
    )
    assert (float(last["epoch"]), int(last["step"]), float(last["forget_quality"])) == (3.0, 6, 0.5)
    shorter = {line["row"]: line["point_is_a_shorter_run"] for line in lines}
    assert shorter == {"npo": "False", "grad_diff": "True"}  # linear vs constant schedule
    markdown = (out / "report.md").read_text()
    assert "### Unlearning dynamics" in markdown and f"plots/{table.id}_dynamics.png" in markdown


def test_the_dynamics_plot_has_mean_and_sample_std_per_epoch_and_a_log_forget_axis(
    dynamics_runs, tmp_path, saved
):
    report_of(dynamics_runs, tmp_path / "report")
    (figure,) = saved
    forget_axes, utility_axes = figure.axes
    assert forget_axes.get_yscale() == "log" and utility_axes.get_yscale() == "linear"
    npo = next(
        c for c in forget_axes.containers if isinstance(c, ErrorbarContainer) and "npo" in c.get_label()
    )
    xs, ys = npo.lines[0].get_data()
    assert list(xs) == pytest.approx([1.0, 2.0, 3.0], abs=0.05)  # shifted a little beside grad_diff's
    assert list(ys) == pytest.approx([0.02, 0.15, 0.4])
    (bars,) = npo.lines[2]
    tops = [segment[1][1] for segment in bars.get_segments()]
    # the sample std of two seeds (0.01, 0.03) is 0.01·√2, drawn above the mean
    assert tops[0] == pytest.approx(0.02 + 0.01 * math.sqrt(2))
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "npo (LR linear)" in legend and "grad_diff (LR constant)" in legend and "oracle" in legend


def test_runs_with_and_without_dynamics_are_one_row(tmp_path):
    root = tmp_path / "runs"
    write_dynamics_run(root, "npo", 0, eval_every_epochs=1)
    recipe = {"epochs": 3, "lr_scheduler": "linear", "warmup_ratio": 0.0}
    off = {"name": "npo", "recipe": recipe, "eval_every_epochs": None}
    write_run(root, "npo-off", off, {"forget_quality": 0.3}, seed=1)
    report = build_report([root], ReportOptions(plots=False))
    (row,) = [r for r in report.sections[0].table.rows if r.kind == "method"]
    assert row.n == 2


def test_no_dynamics_no_plot_and_no_csv(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "npo", {"name": "npo"}, {"forget_quality": 0.3, "model_utility": 0.4})
    out = tmp_path / "report"
    report, written = report_of(root, out)
    assert not any(p.name.endswith("_dynamics.png") for p in report.plots)
    assert not any(p.name.endswith("_dynamics.csv") for p in written)
    assert "Unlearning dynamics" not in (out / "report.md").read_text()
