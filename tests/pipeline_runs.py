"""Running one msa-bench job in-process at smoke scale, for the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from msa_bench.runner import resolved_container, run
from msa_bench.validation import validate_config
from tests.conftest import compose_config


def run_job(cache_dir: Path, out_dir: Path, overrides: list[str]) -> dict:
    """`msa-bench experiment=smoke <overrides>` with logging off, one thread and the given cache."""
    cfg = compose_config(
        [
            "experiment=smoke",
            "logger=none",
            "progress=false",
            "num_threads=1",
            f"paths.cache_dir={cache_dir}",
            *overrides,
        ],
        output_dir=out_dir,
    )
    return run(validate_config(cfg), resolved_container(cfg), out_dir)
