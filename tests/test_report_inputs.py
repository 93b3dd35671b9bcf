"""An honest `msa-bench report` (issue 12, item 10): NaN shown apart from missing and undefined, every unreadable input
listed with its path and reason, --strict failing on them, and the right message when nothing can be read."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from msa_bench.errors import ReportError
from msa_bench.reporting import tables as T
from msa_bench.reporting.command import main as report_main
from msa_bench.reporting.report import ReportOptions, build_report, to_markdown
from tests.test_report import msa, write_run

GOOD = {"forget_quality": 0.2, "model_utility": 0.4}


def test_cells_tell_nan_undefined_and_missing_apart() -> None:
    assert T.format_cell(T.Cell.of([math.nan, 1.0]), 2) == "NaN"  # never averaged away
    assert T.format_cell(T.Cell.of([], undefined=2), 2) == "n/a"
    assert T.format_cell(T.Cell.of([]), 2) == "—"
    assert T.format_cell(T.Cell.of([0.5, 0.7]), 2) == "0.6000 ± 0.1414"


def test_an_undefined_metric_shows_as_n_a_and_the_legend_says_so(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "a", msa(1.0), {**GOOD, "privleak": None})
    write_run(root, "b", msa(2.0), {"forget_quality": 0.3})  # no model_utility, no privleak
    report = build_report([root], ReportOptions(plots=False, metrics=["model_utility", "privleak"]))
    markdown = to_markdown(report)
    rows = {line.split(" | ")[0]: line for line in markdown.splitlines() if line.startswith("| msa")}
    assert rows["| msa [alpha=1.0]"].split(" | ")[1:3] == ["0.4000", "n/a"]
    assert rows["| msa [alpha=2.0]"].split(" | ")[1:3] == ["—", "—"]
    assert "`—`: no run has the metric" in markdown and "`n/a`: the metric is undefined" in markdown
    assert "`NaN`" in markdown


@pytest.fixture
def mixed_runs(tmp_path: Path) -> Path:
    """One good run, a results.json with a NaN literal, a truncated one, and a good run whose per_item.json is bad."""
    root = tmp_path / "runs"
    write_run(root, "good", msa(1.0), GOOD)
    nan_run = write_run(root, "nan", msa(2.0), GOOD)
    (nan_run / "results.json").write_text((nan_run / "results.json").read_text().replace("0.2", "NaN", 1))
    truncated = write_run(root, "truncated", msa(3.0), GOOD)
    (truncated / "results.json").write_text((truncated / "results.json").read_text()[:40])
    write_run(root, "bad_items", msa(0.5), GOOD, per_item={"method": {"forget_truth_ratio": [0.5]}})
    (root / "bad_items" / "per_item.json").write_text('{"method": {"forget_truth_ratio": [Infinity]}}')
    return root


def test_unreadable_inputs_are_listed_with_path_and_reason(mixed_runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert report_main([str(mixed_runs), "--out", str(out), "--no-plots", "--format", "md"]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Unreadable inputs (2, left out of every table)" in markdown
    assert (
        f"- `{mixed_runs / 'nan' / 'results.json'}`: this results file holds NaN at metrics.forget_quality"
        in markdown
    )
    assert f"- `{mixed_runs / 'truncated' / 'results.json'}`: this results file is not valid JSON" in markdown
    stderr = capsys.readouterr().err
    assert "2 input(s) cannot be read and are left out" in stderr and "--strict makes this an error" in stderr


def test_a_per_item_file_a_plot_could_not_read_is_listed(mixed_runs: Path, tmp_path: Path) -> None:
    report = build_report([mixed_runs], ReportOptions(), plot_dir=tmp_path / "plots")
    listed = {entry.path.relative_to(mixed_runs).as_posix(): entry.reason for entry in report.unreadable}
    assert "holds Infinity at method.forget_truth_ratio[0]" in listed["bad_items/per_item.json"]
    assert set(listed) == {"nan/results.json", "truncated/results.json", "bad_items/per_item.json"}


def test_strict_makes_any_unreadable_input_an_error_and_writes_nothing(
    mixed_runs: Path, tmp_path, capsys
) -> None:
    out = tmp_path / "report"
    assert report_main([str(mixed_runs), "--out", str(out), "--no-plots", "--strict"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("msa-bench report: error: --strict: 2 input(s) cannot be read: ")
    assert str(mixed_runs / "nan" / "results.json") in error and not out.exists()


def test_only_corrupt_results_is_not_called_no_results(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    (root / "one").mkdir(parents=True)
    (root / "one" / "results.json").write_text('{"method": "msa", "benchmark": "x", "metrics": {"fq": NaN}}')
    with pytest.raises(
        ReportError, match=r"1 results\.json under .*, none readable: .*holds NaN at metrics\.fq"
    ):
        build_report([root], ReportOptions(plots=False))
    assert report_main([str(root), "--out", str(tmp_path / "report")]) == 2
    assert "no results.json" not in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"no results.json under {empty}"):
        build_report([empty], ReportOptions(plots=False))
