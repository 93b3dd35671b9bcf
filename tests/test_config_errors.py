"""validate_config refuses what Hydra lets through and reports every problem at once, each naming its key
(issue 12 "strict overrides"; style.md Part B items 2-4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict, read_write

from msa_bench.cli import config_error_text
from msa_bench.config.schema import SEED_RANGE
from msa_bench.errors import ConfigError
from msa_bench.validation import validate_config
from tests.conftest import CONFIG_DIR, compose_config


def problems_of(overrides: list[str]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as raised:
        validate_config(compose_config(overrides))
    return raised.value.problems


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "+method.alhpa=1",
            "method.alhpa is not a field of method 'msa' (MSAConfig); did you mean method.alpha?",
        ),
        (
            "+benchmark.target_recipe.epoch=1",
            "benchmark.target_recipe.epoch is not a field of benchmark.target_recipe (TrainRecipe); "
            "did you mean benchmark.target_recipe.epochs?",
        ),
        (
            "+method.lora_r=8",
            "method.lora_r is not a field of method 'msa' (MSAConfig); its fields are alpha, beta,",
        ),
        ("+unknown.key=1", "unknown is not a field of the top-level config (MSABenchConfig); its fields are"),
        ("+model.pretrain.recipe.lr=3", "model.pretrain.recipe.lr is not a field of model.pretrain.recipe"),
        (
            "+metrics.judge.kindd=rouge",
            "metrics.judge.kindd is not a field of metrics.judge (JudgeConfig); did you mean metrics.judge.kind?",
        ),
        (
            "+logger.tag=x",
            "logger.tag is not a field of logger 'wandb' (LoggerConfig); did you mean logger.tags?",
        ),
    ],
)
def test_an_added_key_that_no_schema_declares_is_refused(override, expected):
    (problem,) = problems_of([override])
    assert problem.startswith(expected), problem


def test_an_added_key_of_another_method_is_refused_with_that_methods_fields():
    (problem,) = problems_of(["method=npo", "+method.recipe.epoch=2"])
    assert problem.startswith("method.recipe.epoch is not a field of method.recipe (TrainRecipe)")


def test_free_form_values_keep_any_key_their_owner_accepts():
    # method.forget_recipe is typed Any: a mapping there is checked by MSA's own rule, not as a schema node.
    config = validate_config(compose_config(["method.forget_recipe={epochs:5,learning_rate:1e-4}"]))
    assert config.method.forget_recipe.epochs == 5
    with pytest.raises(ConfigError, match=r"method.forget_recipe has unknown field\(s\) \['epoch'\]"):
        validate_config(compose_config(["method.forget_recipe={epoch:5}"]))


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_outside_what_numpy_and_torch_accept_is_refused(seed):
    (problem,) = problems_of([f"seed={seed}"])
    assert problem.startswith(f"seed={seed} is out of range") and "4294967295" in problem


def test_the_seed_range_ends_are_accepted():
    for seed in SEED_RANGE:
        assert validate_config(compose_config([f"seed={seed}"])).seed == seed


def test_every_problem_is_reported_at_once_each_naming_its_key():
    problems = problems_of(
        ["+method.alhpa=1", "seed=-1", "num_threads=0", "logger.mode=sometimes", "benchmark.block_size=1"]
    )
    keys = ["method.alhpa", "logger.mode", "seed", "benchmark.block_size", "num_threads"]
    assert len(problems) == len(keys)
    for key in keys:
        assert sum(problem.startswith(key) for problem in problems) == 1, (key, problems)


def test_a_conversion_error_comes_first_with_the_problems_found_before_it():
    problems = problems_of(["checkpoint.stage=???", "+method.alhpa=1", "+unknown.key=1"])
    assert problems[0] == (
        "checkpoint.stage is required (MISSING) and has no value; set it, e.g. checkpoint.stage=<value>"
    )
    assert [p.split(" ")[0] for p in problems[1:]] == ["unknown", "method.alhpa"]


def test_a_missing_required_field_is_reported_naming_the_key():
    (problem,) = problems_of(["checkpoint.name=???"])
    assert problem.startswith("checkpoint.name is required (MISSING)")


def test_an_unresolvable_interpolation_fails_at_startup():
    # Interpolations are lazy in OmegaConf; validate_config resolves the whole config before anything runs.
    (problem,) = problems_of(["paths.cache_dir=${paths.nope}"])
    assert problem == "paths.cache_dir: Interpolation key 'paths.nope' not found"
    (problem,) = problems_of(["benchmark.data_dir=${paths.nope}/tofu"])
    assert problem.startswith("benchmark.data_dir: Interpolation key 'paths.nope' not found")


def compose_with_hydra(overrides: list[str], search_path: Path):
    """The config and its hydra node, as a run sees them (the hydra node says which files were composed)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            config_name="config",
            overrides=[
                f"hydra.searchpath=[file://{search_path}]",
                *overrides,
                "paths.output_dir=/tmp/msa-bench-test",
            ],
            return_hydra_config=True,
        )
    hydra_cfg = cfg.hydra
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg, hydra_cfg


def test_a_yaml_required_value_over_a_schema_default_is_caught(tmp_path):
    # OmegaConf's merge keeps the schema default under a YAML `???`: the value nobody chose would be used silently.
    (tmp_path / "experiment").mkdir()
    experiment = tmp_path / "experiment" / "needs_alpha.yaml"
    experiment.write_text("# @package _global_\nmethod:\n  alpha: ???\n")
    cfg, hydra_cfg = compose_with_hydra(["experiment=needs_alpha"], tmp_path)
    assert cfg.method.alpha == 1.0  # the gotcha itself
    with pytest.raises(ConfigError) as raised:
        validate_config(cfg, hydra_cfg)
    (problem,) = raised.value.problems
    assert problem.startswith(f"method.alpha is required by {experiment} (`???`) but nothing sets it")
    assert "method.alpha=<value>" in problem

    cfg, hydra_cfg = compose_with_hydra(["experiment=needs_alpha", "method.alpha=2"], tmp_path)
    assert validate_config(cfg, hydra_cfg).method.alpha == 2.0


def test_the_shipped_configs_have_no_unfilled_required_values(tmp_path):
    cfg, hydra_cfg = compose_with_hydra(["experiment=smoke"], tmp_path)
    assert validate_config(cfg, hydra_cfg).method.name == "msa"


def test_the_cli_prints_one_problem_on_one_line_and_several_under_a_count():
    assert (
        config_error_text(ConfigError("seed=-1 is out of range"))
        == "msa-bench: config error: seed=-1 is out of range"
    )
    text = config_error_text(ConfigError("a is wrong", "b is wrong", "c is wrong"))
    assert text.splitlines() == [
        "msa-bench: 3 config errors:",
        "  a is wrong",
        "  b is wrong",
        "  c is wrong",
    ]
