"""The reproduction script's sweeps compose into valid configs for every benchmark, before anyone spends hours on
them (a bad override would otherwise fail only when its sweep is reached)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from msa_bench.config.validate import validate_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_cpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


reproduce = load_script()


def job_variants(overrides: list[str]) -> list[list[str]]:
    """Each swept value once (the other swept keys at their first value): every method and every value composes."""
    swept = [(i, o.split("=", 1)) for i, o in enumerate(overrides) if "," in o]
    first = [o.split(",")[0] if "," in o else o for o in overrides]
    variants = [first]
    for index, (key, values) in swept:
        for value in values.split(",")[1:]:
            variant = list(first)
            variant[index] = f"{key}={value}"
            variants.append(variant)
    return variants


@pytest.mark.parametrize("benchmark", sorted(reproduce.BENCHMARKS))
def test_every_planned_job_composes_and_validates(benchmark, compose_cfg, tmp_path):
    groups = reproduce.sweeps(benchmark, seed=0, extra=[])
    assert set(groups) == {"methods", "forget_only", "alpha_beta", "strength", "checkpoints"}
    methods_run, composed = set(), set()
    for commands in groups.values():
        for overrides in commands:
            for variant in job_variants(overrides):
                if tuple(variant) in composed:
                    continue
                composed.add(tuple(variant))
                cfg = compose_cfg(variant, tmp_path)
                validate_config(cfg)
                if commands is groups["methods"]:
                    methods_run.add(cfg.method.name)
    expected = set(f"{reproduce.ARITHMETIC_METHODS},{reproduce.BASELINES}".split(","))
    assert methods_run == expected


def test_baseline_overrides_reach_the_baselines_only():
    methods = reproduce.sweeps("muse_news", seed=1, extra=["num_threads=1"])["methods"]
    arithmetic, baselines = methods
    assert "method=msa,task_vector" in arithmetic and "method.recipe.epochs=1" not in arithmetic
    assert "method.recipe.epochs=1" in baselines and "num_threads=1" in baselines and "seed=1" in baselines
    # Without baseline overrides every method stays in one sweep, as in the committed reproductions.
    (single,) = reproduce.sweeps("synthetic_tofu", seed=0, extra=[])["methods"]
    assert any(o.startswith("method=msa,task_vector,grad_ascent") for o in single)
