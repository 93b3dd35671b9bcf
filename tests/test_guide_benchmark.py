"""docs/adding_a_benchmark.md: its worked example (a module, a YAML and a test) runs in a copy of the repository."""

from __future__ import annotations

import pytest

from tests.guides import run_guide_example


@pytest.mark.slow
def test_benchmark_guide(tmp_path):
    run_guide_example("docs/adding_a_benchmark.md", tmp_path)
