"""Running one msa-bench job in-process at smoke scale, for the end-to-end tests."""

from __future__ import annotations

import os
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


# What a `msa-bench` subprocess in a test runs with: offline as in CI, W&B off, its own cache.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
}


def cli_environment(cache: Path, **extra: str) -> dict:
    """The environment of a `msa-bench` subprocess using the cache `cache` (`extra` adds or replaces variables)."""
    return {**os.environ, **OFFLINE_ENVIRONMENT, "MSA_BENCH_CACHE": str(cache), **extra}
