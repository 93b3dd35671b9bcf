"""docs/adding_a_metric.md's worked example (a suite module, its YAML and its test) runs in a copy of the repository."""

from __future__ import annotations

from tests.guides import run_guide_example


def test_metric_guide(tmp_path):
    run_guide_example("docs/adding_a_metric.md", tmp_path)
