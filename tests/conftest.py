"""Test-wide settings: offline, W&B disabled, one torch thread per process, caches in temporary folders."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

import msa_bench.cli as cli  # noqa: E402  (registers the schemas and the msa_bench_root resolver)

CONFIG_DIR = cli.CONFIG_DIR


def compose_config(overrides: list[str], output_dir: Path | str = "/tmp/msa-bench-test-output"):
    """Compose the msa-bench config as the CLI would, with the run directory pinned (no HydraConfig in tests)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="config", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def smoke_config_problems(overrides: list[str]) -> tuple[str, ...]:
    """The problems validate_config reports for `experiment=smoke <overrides>` (which must have some)."""
    from msa_bench.errors import ConfigError
    from msa_bench.validation import validate_config

    with pytest.raises(ConfigError) as raised:
        validate_config(compose_config(["experiment=smoke", *overrides]))
    return raised.value.problems


@pytest.fixture
def compose_cfg():
    return compose_config
