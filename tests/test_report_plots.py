"""The report's plots as a reader needs them: file names that keep every distinguishing value, error bars over
seeds, labels that do not overlap, outlined histograms, and a checkpoint axis that says where θ0 sits. The figures
are caught as they are saved and their artists inspected; the results.json files are synthetic (no model is run)."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation

from msa_bench.reporting import checkpoint_plots, request_plots, tradeoff_plots, truth_ratio_plots
from msa_bench.reporting import tables as T
from msa_bench.reporting.collect import load_runs
from msa_bench.reporting.plot_layout import MAX_STEM, error_bar, plot_stem, unique_stems
from msa_bench.reporting.report import ReportOptions, build_report
from tests.test_report import PNG_MAGIC, msa, write_run

PER_ITEM = {
    "method": {"forget_truth_ratio": [0.2, 0.5, 1.0, 2.0]},
    "target": {"forget_truth_ratio": [0.1, 0.2, 0.3]},
    "oracle": {"forget_truth_ratio": [0.5, 1.0, 1.5]},
    "generations": {},
}


@pytest.fixture
def tofu_runs(tmp_path) -> Path:
    """An MSA α sweep (α = 1 over two seeds: forget quality 0.2 and 0.4) with per-item truth ratios, and NPO."""
    root = tmp_path / "runs"
    sweep = [
        ("a05", 0.5, 0, 0.01, 0.5),
        ("a1s0", 1.0, 0, 0.2, 0.4),
        ("a1s1", 1.0, 1, 0.4, 0.4),
        ("a2", 2.0, 0, 0.5, 0.2),
    ]
    for name, alpha, seed, quality, utility in sweep:
        metrics = {"forget_quality": quality, "model_utility": utility}
        write_run(root, name, msa(alpha), metrics, seed=seed, per_item=PER_ITEM)
    write_run(root, "npo", {"name": "npo"}, {"forget_quality": 0.02, "model_utility": 0.6})
    return root


@pytest.fixture
def saved(monkeypatch) -> list:
    """Every figure the plot modules save, in order (they are still written)."""
    figures = []
    for module in (tradeoff_plots, checkpoint_plots, truth_ratio_plots, request_plots):
        real = module.save

        def catch(figure, path, real=real):
            figures.append(figure)
            return real(figure, path)

        monkeypatch.setattr(module, "save", catch)
    return figures


def tofu_table(root: Path) -> T.Table:
    return next(t for t in T.build_tables(load_runs([root])) if not t.id.endswith("_checkpoints"))


def ablation_table(root: Path) -> T.Table:
    return next(t for t in T.build_tables(load_runs([root])) if t.id.endswith("_checkpoints"))


# --- file names ---------------------------------------------------------------------------------------------------


def test_a_plot_name_keeps_every_setting_in_full():
    settings = {"alpha": 3.0, "layer_scale": "linear_decreasing", "projection": "per_tensor"}
    stem = plot_stem("tofu_tofu_forget01_tiny_llama_truth_ratio", "msa_projected", settings)
    assert stem.endswith("msa_projected_alpha=3.0,layer_scale=linear_decreasing,projection=per_tensor")


def test_names_that_differ_only_at_the_end_stay_apart_under_the_length_cap():
    prefix = "tofu_synthetic_tofu_forget10_tiny_llama_truth_ratio"
    long = {f"setting_{i}": "a_rather_long_value" for i in range(12)}
    first = plot_stem(prefix, "msa", {**long, "layer_scale": "linear_decreasing"})
    second = plot_stem(prefix, "msa", {**long, "layer_scale": "linear_increasing"})
    assert first != second
    assert len(first) <= MAX_STEM and len(second) <= MAX_STEM
    assert "~" in first  # capped: a hash of the whole name stands for what was cut


def test_a_capped_name_drops_the_keys_before_any_value():
    settings = {f"a_long_setting_name_{i}": f"v{i}" for i in range(8)}
    stem = plot_stem("table", "msa", settings)
    assert len(stem) <= MAX_STEM
    assert all(f"v{i}" in stem for i in range(8)) and "a_long_setting_name" not in stem


def test_settings_that_sanitise_alike_get_distinct_names():
    stems = [plot_stem("t", "msa", {"model": "org/name"}), plot_stem("t", "msa", {"model": "org_name"})]
    assert stems[0] == stems[1]  # "/" is not allowed in a file name
    assert len(set(unique_stems(stems, ["org/name", "org_name"]))) == 2


def test_truth_ratio_files_name_the_pretraining_step(tmp_path):
    root = tmp_path / "runs"
    for step in (100, 200):
        metrics = {"forget_quality": 0.1, "model_utility": 0.4}
        write_run(
            root, f"s{step}", msa(1.0), metrics, checkpoint="pretrain_step", step=step, per_item=PER_ITEM
        )
    write_run(
        root,
        "base",
        msa(1.0),
        {"forget_quality": 0.1, "model_utility": 0.4},
        checkpoint="base",
        per_item=PER_ITEM,
    )
    table = tofu_table(root)
    names = sorted(p.name for p in truth_ratio_plots.plot_truth_ratios(table, tmp_path / "plots"))
    assert names == [
        f"{table.id}_truth_ratio_msa_checkpoint=base.png",
        f"{table.id}_truth_ratio_msa_checkpoint=pretrain_step,checkpoint.step=100.png",
        f"{table.id}_truth_ratio_msa_checkpoint=pretrain_step,checkpoint.step=200.png",
    ]


# --- error bars ---------------------------------------------------------------------------------------------------


def test_an_error_bar_is_one_sample_std_and_none_for_one_seed():
    assert error_bar(0.3, 0.1, [0.2, 0.4], log_axis=False) == pytest.approx((0.1, 0.1))
    assert error_bar(0.3, None, [0.3], log_axis=True) == (0.0, 0.0)


def test_on_a_log_axis_a_bar_below_zero_stops_at_the_lowest_seed():
    below, above = error_bar(0.3, 0.5, [0.01, 0.29, 0.6], log_axis=True)
    assert 0.3 - below == pytest.approx(0.01) and above == pytest.approx(0.5)


def _bar_lengths(container: ErrorbarContainer) -> list[float]:
    """The y extent of each vertical bar of an errorbar container (a point of one seed has a bar of length 0)."""
    lengths = []
    for collection in container.lines[2]:
        for segment in collection.get_segments():
            (x0, y0), (x1, y1) = segment
            if math.isclose(x0, x1) and not math.isclose(y0, y1):
                lengths.append(abs(y1 - y0))
    return lengths


def test_the_tradeoff_draws_bars_over_seeds_where_a_point_has_two(tofu_runs, tmp_path, saved):
    tradeoff_plots.plot_tradeoff(tofu_table(tofu_runs), tmp_path)
    (figure,) = saved
    axes = figure.axes[0]
    msa_curve = next(c for c in axes.containers if "msa" in str(c.get_label()))
    assert _bar_lengths(msa_curve) == pytest.approx([2 * math.sqrt(0.02)])  # ±1 sample std of {0.2, 0.4}
    x_data, y_data = msa_curve.lines[0].get_data()
    assert list(y_data) == pytest.approx([0.01, 0.3, 0.5])  # the seed means, along α


def test_a_method_without_a_sweep_is_one_point_not_a_line_through_its_seeds(tmp_path, saved):
    root = tmp_path / "runs"
    for seed, quality in enumerate((0.1, 0.3, 0.5)):
        write_run(
            root, f"npo{seed}", {"name": "npo"}, {"forget_quality": quality, "model_utility": 0.4}, seed=seed
        )
    tradeoff_plots.plot_tradeoff(tofu_table(root), tmp_path)
    npo = next(c for c in saved[0].axes[0].containers if c.get_label() == "npo")
    _, y_data = npo.lines[0].get_data()
    assert list(y_data) == pytest.approx([0.3]) and npo.lines[0].get_linestyle() == "None"


def test_the_checkpoint_plot_draws_bars_and_one_line_per_other_setting(tmp_path, saved):
    root = tmp_path / "runs"
    for beta in (0.0, 1.0):
        for seed, quality in enumerate((0.2, 0.4)):
            for checkpoint, step in (("pretrain_step", 10), ("instruct", None)):
                name = f"{checkpoint}{beta}{seed}"
                metrics = {"forget_quality": quality, "model_utility": 0.4}
                write_run(root, name, msa(1.0, beta), metrics, seed=seed, checkpoint=checkpoint, step=step)
    checkpoint_plots.plot_checkpoint_ablation(ablation_table(root), tmp_path)
    axes = saved[0].axes[0]  # forget quality
    lines = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    assert sorted(c.get_label() for c in lines) == ["msa beta=0.0", "msa beta=1.0"]
    assert all(_bar_lengths(c) for c in lines)
    ticks = [t.get_text() for t in saved[0].axes[-1].get_xticklabels()]
    assert ticks == ["pretraining step 10", "instruct"]


def test_the_checkpoint_axis_is_the_pretraining_step_when_every_theta0_has_one(tmp_path, saved):
    root = tmp_path / "runs"
    for step in (10, 20, 40):
        write_run(
            root,
            f"s{step}",
            msa(1.0),
            {"forget_quality": 0.1, "model_utility": 0.4},
            checkpoint="pretrain_step",
            step=step,
        )
    checkpoint_plots.plot_checkpoint_ablation(ablation_table(root), tmp_path)
    bottom = saved[0].axes[-1]
    assert bottom.get_xlabel() == "θ0's pretraining step"
    line = next(c for c in saved[0].axes[0].containers if isinstance(c, ErrorbarContainer))
    assert list(line.lines[0].get_data()[0]) == pytest.approx([10, 20, 40])


def test_the_requests_plot_draws_sample_std_bars_and_one_legend_below(tmp_path, saved):
    root = tmp_path / "runs"
    for seed, quality in enumerate((0.2, 0.4)):
        metrics = {"forget_quality": 0.3, "model_utility": 0.4}
        for k in (1, 2):
            metrics[f"request/{k}/forget/forget_quality"] = quality
            metrics[f"request/{k}/utility/model_utility"] = 0.4
        write_run(root, f"s{seed}", msa(1.0), metrics, seed=seed)
    request_plots.plot_requests(tofu_table(root), tmp_path)
    figure = saved[0]
    (line,) = [c for c in figure.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert _bar_lengths(line) == pytest.approx([2 * math.sqrt(0.02)] * 2)  # sample, not population, std
    assert figure.legends and not any(axes.get_legend() for axes in figure.axes)


# --- labels -------------------------------------------------------------------------------------------------------


def test_labels_of_curves_through_the_same_points_do_not_overlap(tmp_path, saved):
    root = tmp_path / "runs"
    # Two methods whose sweeps land on the same points: their swept values would be written on top of each other.
    for method in ("msa", "task_vector"):
        for alpha, quality in ((0.5, 0.01), (1.0, 0.1), (2.0, 0.5)):
            metrics = {"forget_quality": quality, "model_utility": 0.4 - 0.1 * alpha}
            write_run(root, f"{method}{alpha}", {"name": method, "alpha": alpha}, metrics)
    tradeoff_plots.plot_tradeoff(tofu_table(root), tmp_path)
    figure = saved[0]
    renderer = FigureCanvasAgg(figure).get_renderer()  # a closed figure keeps no canvas of its own
    labels = [a for a in figure.axes[0].get_children() if isinstance(a, Annotation)]
    assert len(labels) == 6
    boxes = [a.get_window_extent(renderer) for a in labels]
    assert not any(a.overlaps(b) for a, b in combinations(boxes, 2))
    legend = figure.axes[0].get_legend().get_window_extent(renderer)
    assert legend.x0 >= figure.axes[0].get_window_extent(renderer).x1  # beside the axes, over no point


def test_many_series_get_a_panel_each(tmp_path, saved):
    root = tmp_path / "runs"
    methods = ("msa", "task_vector", "npo", "grad_ascent", "rmu", "simnpo")
    for index, method in enumerate(methods):
        for alpha in (1.0, 2.0):
            metrics = {"forget_quality": 0.1 * alpha, "model_utility": 0.1 * index}
            write_run(root, f"{method}{alpha}", {"name": method, "alpha": alpha}, metrics)
    tradeoff_plots.plot_tradeoff(tofu_table(root), tmp_path)
    shown = [a for a in saved[0].axes if a.get_visible()]
    assert sorted(a.get_title() for a in shown) == sorted(f"{m} (along alpha)" for m in methods)


def _grid_runs(root: Path, method: str, learning_rates, epochs_list, utility: float = 0.3) -> None:
    """A learning rate × epochs grid of separate runs of one method (no swept key: two keys vary)."""
    for lr in learning_rates:
        for epochs in epochs_list:
            metrics = {"forget_quality": lr * epochs, "model_utility": utility - lr * epochs}
            recipe = {"learning_rate": lr, "epochs": epochs}
            write_run(root, f"{method}-{lr}-{epochs}", {"name": method, "recipe": recipe}, metrics)


def test_a_two_key_grid_is_drawn_as_a_line_per_value_of_one_key(tmp_path, saved):
    root = tmp_path / "runs"
    for index, method in enumerate(("npo", "grad_ascent", "rmu", "simnpo", "undial", "satimp")):
        _grid_runs(root, method, (1e-4, 1e-3), (2.0, 5.0, 10.0), utility=0.3 + 0.01 * index)
    tradeoff_plots.plot_tradeoff(tofu_table(root), tmp_path)
    axes = next(a for a in saved[0].axes if a.get_title().startswith("npo"))
    assert " ".join(axes.get_title().split()) == "npo: along epochs, a line per learning_rate"
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "learning_rate=0.0001",
        "learning_rate=0.001",
    ]
    lines = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    drawn = [c for c in lines if c.lines[0].get_linestyle() == "-"]
    assert len(drawn) == 2
    for line, lr in zip(drawn, (1e-4, 1e-3), strict=True):
        _, y_data = line.lines[0].get_data()
        assert list(y_data) == pytest.approx([lr * e for e in (2.0, 5.0, 10.0)])  # along epochs, in order
    texts = sorted(a.get_text() for a in axes.get_children() if isinstance(a, Annotation))
    assert texts == sorted(["2", "5", "10"] * 2)  # each point named by its epochs alone


def test_settings_that_are_not_a_two_key_numeric_grid_stay_one_point_each():
    def single(text: str) -> tradeoff_plots.TradeoffSeries:
        point = tradeoff_plots.TradeoffPoint(T.Cell.of([0.1]), T.Cell.of([0.2]), [0.1], [0.2], text)
        return tradeoff_plots.TradeoffSeries("npo", text, [point], joined=False)

    cases = {
        "one key": ["recipe.epochs=2", "recipe.epochs=5"],
        "three keys": ["a=1 b=1 c=1", "a=2 b=2 c=2"],
        "not numeric": ["checkpoint=base beta=1", "checkpoint=instruct beta=2"],
        "one value of a key": ["a=1 b=1", "a=2 b=1"],
    }
    for name, texts in cases.items():
        (panel,) = tradeoff_plots.panel_groups([single(t) for t in texts])
        assert not panel.legend and panel.title.startswith("npo: one point per setting"), name


# --- histograms ---------------------------------------------------------------------------------------------------


def test_truth_ratio_histograms_are_outlines_in_small_multiples(tofu_runs, tmp_path, saved):
    paths = truth_ratio_plots.plot_truth_ratios(tofu_table(tofu_runs), tmp_path)
    assert len(paths) == 3 and all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)
    figure = saved[0]
    assert len(figure.axes) == 3  # target, method, oracle: one panel each
    for axes in figure.axes:
        histogram = [p for p in axes.patches if p.get_visible()]
        assert len(histogram) == 1 and not histogram[0].get_fill()
        assert not any(isinstance(p, Rectangle) for p in axes.patches)  # no filled bars


def test_a_report_writes_the_new_plots(tofu_runs, tmp_path):
    report = build_report([tofu_runs], ReportOptions(), plot_dir=tmp_path / "plots")
    names = {p.name for p in report.plots}
    table_id = report.sections[0].table.id
    assert f"{table_id}_tradeoff.png" in names
    assert f"{table_id}_truth_ratio_msa_alpha=1.0.png" in names
