"""The console display: `progress=` values, stage lines, and library output sent to the run's log file."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from msa_bench.config.schema import ProgressMode
from msa_bench.errors import ConfigError
from msa_bench.progress import RunProgress, current_progress, run_progress
from msa_bench.validation import validate_config
from tests.conftest import compose_config


@pytest.mark.parametrize(
    ("value", "mode"),
    [("auto", ProgressMode.auto), ("verbose", ProgressMode.verbose), ("off", ProgressMode.off)]
    + [
        (True, ProgressMode.auto),
        ("True", ProgressMode.auto),
        (False, ProgressMode.off),
        ("false", ProgressMode.off),
    ],
)
def test_progress_values_and_the_former_true_false_switch(value, mode):
    assert ProgressMode.parse(value) is mode


def test_only_verbose_turns_library_progress_bars_on():
    assert [mode.library_bars for mode in ProgressMode] == [False, True, False]


def test_progress_is_checked_when_the_config_is_validated():
    assert validate_config(compose_config(["progress=false"])).progress is ProgressMode.off
    assert validate_config(compose_config([])).progress is ProgressMode.auto
    with pytest.raises(ConfigError, match="progress=loud must be one of auto, verbose, off"):
        validate_config(compose_config(["progress=loud"]))


def test_one_line_per_stage_with_its_outcome_when_not_a_terminal():
    console = io.StringIO()
    display = RunProgress(["target", "oracle", "evaluate"], console)
    with display.stage():
        with display.artifact("finetune", "a"):
            display.building("finetune")
            with display.artifact("history", "h"):
                display.building("history")
                display.training_step(1, 10)
                display.training_step(5, 10)
    with display.stage():
        with display.artifact("finetune", "b"):
            pass  # found in the cache
    with display.stage():
        pass
    lines = console.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("stage 1 of 3: target: done in ") and "(built finetune, history)" in lines[0]
    assert lines[1] == "stage 2 of 3: oracle: reused from the cache"
    assert lines[2].startswith("stage 3 of 3: evaluate: done in ")


def test_a_stage_that_fails_reads_failed_not_done():
    console = io.StringIO()
    display = RunProgress(["target", "θ1", "arithmetic", "evaluate"], console)
    with pytest.raises(RuntimeError), display.stage():
        with display.artifact("finetune", "a"):
            display.building("finetune")
            raise RuntimeError("diverged")
    with pytest.raises(RuntimeError), display.method_stages(["θ1", "arithmetic"]):
        with display.artifact("unlearned", "u"):
            display.building("unlearned")
            raise RuntimeError("non-finite")
    lines = console.getvalue().splitlines()
    assert len(lines) == 3  # the evaluation stage never started, so it is not shown
    assert lines[0].startswith("stage 1 of 4: target: failed after ")
    # The new top-level artifact closed θ1 and opened the arithmetic stage, which then failed.
    assert lines[1].startswith("stage 2 of 4: θ1: done in ")
    assert lines[2].startswith("stage 3 of 4: arithmetic: failed after ") and "built" not in lines[2]


def test_each_new_top_level_method_artifact_closes_a_method_stage():
    console = io.StringIO()
    display = RunProgress(["target", "θ1", "θ2", "arithmetic", "evaluate"], console, label="#2")
    with display.stage():
        with display.artifact("finetune", "target"):
            display.building("finetune")
    with display.method_stages(["θ1", "θ2", "arithmetic"]):
        with display.artifact("finetune", "target"):
            pass  # the target again: not a stage of the method
        with display.artifact("finetune", "theta1"):
            display.building("finetune")
        with display.artifact("finetune", "theta2"):
            pass
        with display.artifact("unlearned", "result"):
            display.building("unlearned")
    with display.stage():
        pass
    titles = [line.split(": ")[0:2] for line in console.getvalue().splitlines()]
    assert titles == [
        ["#2 stage 1 of 5", "target"],
        ["#2 stage 2 of 5", "θ1"],
        ["#2 stage 3 of 5", "θ2"],
        ["#2 stage 4 of 5", "arithmetic"],
        ["#2 stage 5 of 5", "evaluate"],
    ]
    assert "reused from the cache" in console.getvalue().splitlines()[2]


def test_stages_a_method_planned_but_did_not_need_are_still_counted():
    console = io.StringIO()
    display = RunProgress(["forget", "arithmetic"], console)
    with display.method_stages(["forget", "arithmetic"]):
        pass
    assert [line.split(": ")[1] for line in console.getvalue().splitlines()] == ["forget", "arithmetic"]


def test_library_output_goes_to_the_log_file_and_stage_lines_to_the_console(tmp_path, capfd):
    log_file = tmp_path / "msa_bench.log"
    with run_progress(ProgressMode.auto, ["train"], tmp_path) as display:
        assert current_progress() is display
        with display.stage():
            print("{'loss': 4.2}")
            print("a loading bar", file=sys.stderr)
            os.write(2, b"fatal: not a git repository\n")
            subprocess.run(["echo", "from a subprocess"], check=True)
            logging.getLogger("msa_bench.test").warning("a warning the person should see")
            logging.getLogger("lm-eval").warning("a library's warning")
    assert current_progress() is not display
    console = capfd.readouterr()
    logged = log_file.read_text()
    noises = (
        "{'loss': 4.2}",
        "a loading bar",
        "fatal: not a git repository",
        "from a subprocess",
    )
    for noise in noises:
        assert noise in logged and noise not in console.out + console.err
    assert "stage 1 of 1: train: done in" in console.out
    assert "warning: a warning the person should see" in console.out
    assert "library's warning" not in console.out  # Hydra's file handler writes it to the log in a real run
    print("after the run")  # the console is back
    assert "after the run" in capfd.readouterr().out


def test_off_shows_nothing_and_verbose_leaves_library_output_on_the_console(tmp_path, capfd):
    with run_progress(ProgressMode.off, ["train"], tmp_path) as display, display.stage():
        print("quiet noise")
    assert capfd.readouterr().out == ""
    assert "quiet noise" in (tmp_path / "msa_bench.log").read_text()
    with run_progress(ProgressMode.verbose, ["train"], tmp_path / "verbose") as display, display.stage():
        print("loud noise")
    out = capfd.readouterr().out
    assert "loud noise" in out and "stage 1 of 1: train: done in" in out
    assert not (tmp_path / "verbose" / "msa_bench.log").exists()
