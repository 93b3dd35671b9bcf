"""`msa-bench --help`: the project's page (config groups from conf/, keys, subcommands); Hydra's stays reachable."""

from __future__ import annotations

import subprocess
import sys

import pytest

import msa_bench.cli as cli
from msa_bench.cli_help import config_group_options


@pytest.fixture
def help_page(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["msa-bench", "--help"])
    cli.main()
    return capsys.readouterr().out


def test_help_lists_every_user_facing_group_and_option_from_conf(help_page):
    groups = config_group_options(cli.CONFIG_DIR)
    assert {"model", "checkpoint", "benchmark", "method", "metrics", "logger", "experiment"} <= set(groups)
    assert "experiment/smoke" not in groups and "smoke" in groups["experiment"]
    assert "cpu/tofu" in groups["experiment"]  # nested experiment folders appear as folder/name
    for group, options in groups.items():
        assert f"  {group}:" in help_page
        for option in options:
            assert option in help_page
    assert "msa*" in help_page and "tiny_llama*" in help_page  # defaults from conf/config.yaml are marked


def test_help_leaves_out_internal_groups_and_names_the_subcommands(help_page):
    assert "schema" not in help_page
    assert "job_logging" not in help_page and "hydra/help" not in help_page
    assert "msa-bench report" in help_page and "msa-bench parity" in help_page
    for key in ("seed=", "device=", "num_threads=", "progress="):
        assert key in help_page
    assert "--hydra-help" in help_page


def test_hydra_help_is_still_hydras_page():
    completed = subprocess.run(
        [sys.executable, "-m", "msa_bench.cli", "--hydra-help"], capture_output=True, text=True, check=True
    )
    assert "Hydra (" in completed.stdout and "--multirun" in completed.stdout
