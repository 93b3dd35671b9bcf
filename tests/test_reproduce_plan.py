"""The reproduction script's sweeps compose into valid configs for every benchmark, before anyone spends hours on
them (a bad override would otherwise fail only when its sweep is reached)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode

from msa_bench.validation import validate_config
from tests.conftest import CONFIG_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_cpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


reproduce = load_script()


def swept_values(override: str) -> tuple[str, list[str]] | None:
    """(key, values) of a sweep override (`k=a,b` or `k=choice(a,b)`); None for a plain one."""
    key, value = override.split("=", 1)
    if value.startswith("choice(") and value.endswith(")"):
        return key, value[len("choice(") : -1].split(",")
    return (key, value.split(",")) if "," in value else None


def job_variants(overrides: list[str]) -> list[list[str]]:
    """Each swept value once (the other swept keys at their first value): every method and every value composes."""
    swept = [(i, swept_values(o)) for i, o in enumerate(overrides) if swept_values(o)]
    first = list(overrides)
    for index, (key, values) in swept:
        first[index] = f"{key}={values[0]}"
    variants = [first]
    for index, (key, values) in swept:
        for value in values[1:]:
            variant = list(first)
            variant[index] = f"{key}={value}"
            variants.append(variant)
    return variants


def load_multirun_config(overrides: list[str]):
    """What `msa-bench -m` composes before sweeping: the default config with the non-swept overrides applied."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN)


@pytest.mark.parametrize("benchmark", sorted(reproduce.BENCHMARKS))
def test_every_planned_sweep_starts(benchmark):
    for commands in reproduce.sweeps(benchmark, seed=0, extra=[]).values():
        for overrides in commands:
            load_multirun_config(overrides)


def test_a_plain_override_of_a_baseline_only_key_would_stop_the_sweep():
    """Why the muse_news plan writes choice(1): the check above catches the plain form."""
    with pytest.raises(ConfigCompositionException, match="method.recipe"):
        load_multirun_config(["method=grad_ascent,npo", "method.recipe.epochs=1"])


@pytest.mark.parametrize("benchmark", sorted(reproduce.BENCHMARKS))
def test_every_planned_job_composes_and_validates(benchmark, compose_cfg, tmp_path):
    groups = reproduce.sweeps(benchmark, seed=0, extra=[])
    assert set(groups) == {
        "methods",
        "forget_only",
        "alpha_beta",
        "strength",
        "checkpoints",
        "checkpoint_alpha",
    }
    # The checkpoint ablation along α: each checkpoint sweep of the ablation, with α swept after method=msa
    for ablation, along_alpha in zip(groups["checkpoints"], groups["checkpoint_alpha"], strict=True):
        at = ablation.index("method=msa") + 1
        assert along_alpha == [*ablation[:at], "method.alpha=0.5,1,2,3", *ablation[at:]]
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
    assert "method=msa,task_vector" in arithmetic and not any("recipe" in o for o in arithmetic)
    assert reproduce.sweeps("muse_news", seed=1, extra=[])["strength"] == []  # hours per seed: not planned
    assert (
        "method.recipe.epochs=choice(1)" in baselines
        and "num_threads=1" in baselines
        and "seed=1" in baselines
    )
    # Without baseline overrides every method stays in one sweep, as in the committed reproductions.
    (single,) = reproduce.sweeps("synthetic_tofu", seed=0, extra=[])["methods"]
    assert any(o.startswith("method=msa,task_vector,grad_ascent") for o in single)


def test_runs_record_keeps_earlier_sweeps_and_replaces_rerun_ones(tmp_path):
    path = tmp_path / "runs.json"
    earlier = [  # written before records carried an index: a group's sweeps in order
        {"group": "alpha_beta", "seed": 0, "command": "msa", "returncode": 0},
        {"group": "alpha_beta", "seed": 0, "command": "task_vector", "returncode": 0},
        {"group": "methods", "seed": 0, "command": "baselines", "returncode": 1},
    ]
    path.write_text(json.dumps({"total_wall_seconds": 100.0, "sweeps": earlier}))
    again = {"group": "methods", "seed": 0, "index": 0, "command": "again", "returncode": 0, "jobs": []}
    skipped = {"group": "alpha_beta", "seed": 0, "index": 0, "command": "x", "jobs": [{"state": "skipped"}]}
    # alpha_beta: every job skipped, so the earlier record, which measured the work, stays
    rerun = {("methods", 0, 0): again, ("alpha_beta", 0, 0): skipped}

    total, log = reproduce.record_sweeps(path, rerun, wall=20.0, machine={"cpus": 2})

    assert total == 120.0
    assert [(r["group"], r["index"], r["command"]) for r in log] == [
        ("alpha_beta", 0, "msa"),
        ("alpha_beta", 1, "task_vector"),
        ("methods", 0, "again"),
    ]
    assert json.loads(path.read_text())["sweeps"] == log
    assert list(tmp_path.iterdir()) == [path]


def _load_sibling_script(name: str):
    path = SCRIPT.with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_attacks_script():
    return _load_sibling_script("reproduce_attacks")


@pytest.mark.parametrize("benchmark", ["synthetic_tofu", "tofu", "muse_news"])
def test_every_planned_attack_job_composes_and_validates(benchmark, compose_cfg, tmp_path):
    attacks = _load_attacks_script()
    groups = attacks.sweeps(benchmark, seed=0, extra=[])
    assert set(groups) == {"defaults", "matched"}
    methods_run = set()
    for commands in groups.values():
        for overrides in commands:
            load_multirun_config(overrides)
            assert "attacks=standard" in overrides
            for variant in job_variants(overrides):
                cfg = validate_config(compose_cfg(variant, tmp_path))
                assert cfg.attacks.names()  # every job is attacked
                if commands is groups["defaults"]:
                    methods_run.add(cfg.method.name)
    assert methods_run == set(f"{reproduce.ARITHMETIC_METHODS},{reproduce.BASELINES}".split(","))


@pytest.mark.parametrize("benchmark", ["synthetic_tofu", "tofu", "muse_news"])
def test_every_planned_arithmetic_job_composes_and_validates(benchmark, compose_cfg, tmp_path):
    arithmetic = _load_sibling_script("reproduce_arithmetic")
    groups = arithmetic.sweeps(benchmark, seed=0, extra=[])
    # MUSE-News has no sequential protocol here (scripts/reproduce_arithmetic.py says why).
    assert set(groups) == ({"family"} if benchmark == "muse_news" else {"family", "sequential"})
    family, sequential = set(), set()
    for group, commands in groups.items():
        for overrides in commands:
            load_multirun_config(overrides)
            for variant in job_variants(overrides):
                cfg = validate_config(compose_cfg(variant, tmp_path))
                (family if group == "family" else sequential).add(cfg.method.name)
                if group == "sequential":
                    assert cfg.benchmark.requests == 3
    assert {"msa", "task_vector", "msa_ties", "msa_projected", "msa_fisher"} <= family
    if sequential:
        assert sequential == set(f"{arithmetic.SEQUENTIAL_ARITHMETIC},{reproduce.BASELINES}".split(","))


@pytest.mark.parametrize("benchmark", ["synthetic_tofu", "tofu", "muse_news"])
def test_every_planned_validation_job_composes_and_validates(benchmark, compose_cfg, tmp_path):
    validation = _load_sibling_script("reproduce_validation")
    groups = validation.sweeps(benchmark, seed=0, extra=[])
    assert set(groups) == {"arithmetic", "baselines"}
    seen: dict[str, set] = {}
    lengths = set()
    for commands in groups.values():
        for overrides in commands:
            load_multirun_config(overrides)
            for variant in job_variants(overrides):
                cfg = validate_config(compose_cfg(variant, tmp_path))
                seen.setdefault(cfg.method.name, set()).add(cfg.benchmark.forget_set)
                if cfg.method.name not in ("msa", "task_vector"):
                    assert cfg.method.recipe.learning_rate in (1e-4, 3e-4, 1e-3)
                    # MUSE's grid counts steps: its validation set is a twelfth of the forget corpus
                    lengths.add(
                        cfg.method.recipe.max_steps if benchmark == "muse_news" else cfg.method.recipe.epochs
                    )
    assert lengths == ({100, 300} if benchmark == "muse_news" else {2, 5, 10})
    # every method on both forget sets, so each validation choice has its test runs
    assert seen == {
        m: {"validation", "test"} for m in ["msa", "task_vector", *reproduce.BASELINES.split(",")]
    }
