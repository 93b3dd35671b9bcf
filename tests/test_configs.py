"""Every shipped config composes and validates; bad input fails early with a message naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import open_dict

from msa_bench.methods.registry import discover_methods
from msa_bench.validation import ConfigError, validate_config
from tests.conftest import CONFIG_DIR, compose_config


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_config_composes_and_validates(method):
    config = validate_config(compose_config([f"method={method}"]))
    assert config.method.name == method
    assert type(config.method) is discover_methods()[method].config_class


@pytest.mark.parametrize("group", ["model", "checkpoint", "benchmark", "metrics", "logger"])
def test_every_option_of_every_group_validates(group):
    for option in group_options(group):
        validate_config(compose_config([f"{group}={option}"]))


def test_every_experiment_config_composes_and_validates(monkeypatch, tmp_path):
    # Every experiment, in subfolders too (cpu/*, paper/*), composed and fully resolved; all failures listed at once.
    monkeypatch.setenv("MSA_BENCH_DATA", str(tmp_path))
    root = CONFIG_DIR / "experiment"
    experiments = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    assert {"smoke", "cpu/tofu", "paper/tofu_llama32_1b"} <= set(experiments)
    failures = []
    for name in experiments:
        try:
            validate_config(compose_config([f"experiment={name}"], output_dir=tmp_path))
        except Exception as error:  # noqa: BLE001  (every failure is collected and listed)
            failures.append(f"experiment={name}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)


def target_problems(node, path: str = "") -> list[str]:
    """Every `_target_` under `node` that cannot be imported or does not accept its node's keys, by dotted key."""
    import inspect

    from hydra.utils import get_object
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing() or node._is_interpolation():
        return []
    problems = []
    if "_target_" in node:
        kwargs = {k: v for k, v in node.items() if not str(k).startswith("_")}
        try:
            inspect.signature(get_object(node._target_)).bind(**kwargs)
        except Exception as error:  # noqa: BLE001  (an import error or a TypeError from bind: both are the answer)
            problems.append(f"{path}._target_={node._target_}: {type(error).__name__}: {error}")
    for key in node.keys():
        problems += target_problems(node._get_node(key), f"{path}.{key}" if path else str(key))
    return problems


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_every_target_imports_and_accepts_its_arguments(launcher):
    # Only Hydra's own nodes use _target_ (the sweep callback, the launchers); msa_bench's groups use registries.
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True
        )
    assert target_problems(cfg) == []
    assert "_target_" in cfg.hydra.callbacks.sweep_status
    callback = cfg.hydra.callbacks.sweep_status
    callback._target_ = "msa_bench.sweeps.callbacks.SweepStatusCallbak"
    (problem,) = target_problems(cfg)
    assert problem.startswith(
        "hydra.callbacks.sweep_status._target_=msa_bench.sweeps.callbacks.SweepStatusCallbak"
    )
    callback._target_ = "msa_bench.sweeps.callbacks.SweepStatusCallback"
    with open_dict(callback):
        callback.print_sumary = True
    (problem,) = target_problems(cfg)
    assert "TypeError" in problem and "print_sumary" in problem


def test_every_yaml_method_is_registered_and_vice_versa():
    assert set(group_options("method")) == set(discover_methods())


def test_cache_dir_follows_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("MSA_BENCH_CACHE", str(tmp_path / "elsewhere"))
    assert validate_config(compose_config([])).paths.cache_dir == str(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.alpha=abc", "method.alpha"),
        ("method.alpah=1", "method.alpah"),
        ("model.hidden_size=1.5", "model.hidden_size"),
        ("benchmark.not_a_key=3", "benchmark.not_a_key"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config([override])
    text = str(error.value) + str(error.value.__cause__)
    assert expected in text


def test_unknown_method_lists_valid_names():
    with pytest.raises(MissingConfigException) as error:
        compose_config(["method=does_not_exist"])
    for name in ["msa", "npo", "task_vector"]:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["metrics.names=[forget_Q_A_Prob,not_a_metric]"], "not_a_metric"),
        (["method.alpha=-1"], "method.alpha"),
        (["method=npo", "method.beta=0"], "method.beta"),
        (["benchmark.forget_split=forget20"], "benchmark.forget_split"),
        (["checkpoint.stage=middle"], "checkpoint.stage"),
        (["logger.mode=sometimes"], "logger.mode"),
    ],
)
def test_semantic_errors_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        validate_config(compose_config(overrides))


def test_unknown_metric_error_lists_valid_metrics():
    with pytest.raises(ConfigError) as error:
        validate_config(compose_config(["metrics.names=[nope]"]))
    assert "model_utility" in str(error.value) and "forget_quality" in str(error.value)


def run_cli(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MSA_BENCH_CACHE": str(cache), "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "msa_bench.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["method.alpha=abc"], "method.alpha"),
        (["method.alpah=1"], "method.alpah"),
        (["method=nope"], "task_vector"),
        (["metrics.names=[nope]"], "model_utility"),
        (["method=npo", "method.beta=-1"], "method.beta"),
    ],
)
def test_cli_rejects_bad_input_quickly_and_writes_nothing(tmp_path, args, expected):
    started = time.perf_counter()
    result = run_cli(args, tmp_path, tmp_path / "cache")
    elapsed = time.perf_counter() - started
    assert result.returncode != 0
    assert expected in result.stderr
    assert elapsed < 30, f"took {elapsed:.1f}s to reject a bad override"
    leftovers = list(tmp_path.rglob("*"))
    assert leftovers == [], leftovers


def test_cli_reports_every_key_hydra_lets_through_at_once_and_writes_nothing(tmp_path):
    # `+key` adds a key even to a struct config; each of these used to run to the end and do nothing.
    args = [
        "+method.alhpa=1",
        "+unknown.key=1",
        "+benchmark.target_recipe.epoch=1",
        "+method.lora_r=8",
        "seed=-1",
    ]
    result = run_cli(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "msa-bench: 5 config errors:"
    named = sorted(line.split(" ")[2].split("=")[0] for line in lines[1:])
    assert named == ["benchmark.target_recipe.epoch", "method.alhpa", "method.lora_r", "seed", "unknown"]
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize("benchmark", group_options("benchmark"))
def test_every_benchmark_config_extends_its_kinds_schema(benchmark):
    from msa_bench.benchmarks.base import benchmark_class

    config = validate_config(compose_config([f"benchmark={benchmark}"]))
    cls = benchmark_class(config.benchmark.kind)
    assert type(config.benchmark) is cls.config_class
    assert cls.forget_splits.accepts(config.benchmark.forget_split)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (
            ["benchmark.mix_retain_into_target=false"],
            "benchmark.mix_retain_into_target",
        ),  # RESTOR's, not TOFU's
        (["benchmark=restor", "benchmark.forget_corpus=raw/x.json"], "benchmark.forget_corpus"),  # MUSE's
        (
            ["model.hub_id=meta-llama/Llama-3.2-1B"],
            "model.hub_id",
        ),  # a pretrained model's, not the embedded one's
        (["model=olmo2_7b", "model.hidden_size=64"], "model.hidden_size"),  # the embedded model's
    ],
)
def test_a_key_of_another_variant_fails_at_composition(overrides, key):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(overrides)
    assert key in str(error.value) + str(error.value.__cause__)


def test_the_keys_of_the_chosen_variant_compose():
    restor = validate_config(compose_config(["benchmark=restor", "benchmark.mix_retain_into_target=false"]))
    assert restor.benchmark.mix_retain_into_target is False
    muse = validate_config(
        compose_config(["benchmark=muse_news", "benchmark.retain_corpus=raw/retain2.json"])
    )
    assert muse.benchmark.retain_corpus == "raw/retain2.json"


def test_restor_accepts_any_mix_file_name_and_names_the_rule_otherwise():
    # One rule, RESTOR's own: any mix_a<k>; whether the file exists is checked against the data folder later.
    assert validate_config(compose_config(["benchmark=restor", "benchmark.forget_split=mix_a7"]))
    with pytest.raises(ConfigError, match=r"benchmark.forget_split='mix_b' is not valid .*mix_a0, mix_a1"):
        validate_config(compose_config(["benchmark=restor", "benchmark.forget_split=mix_b"]))


@pytest.mark.parametrize(
    "key", ["device", "logger.mode", "logger.backend", "model.source", "checkpoint.stage"]
)
def test_a_closed_set_names_the_key_and_its_values(key):
    from msa_bench.config.schema import CHOICES

    with pytest.raises(ConfigError) as error:
        validate_config(compose_config([f"{key}=not_a_choice"]))
    assert f"{key}='not_a_choice' is not valid" in str(error.value)
    assert str(list(CHOICES[key])) in str(error.value)


@pytest.mark.parametrize("key", ["model.prompt.format", "model.arithmetic_dtype"])
def test_model_closed_sets_name_the_key_and_its_values(key):
    from msa_bench.config.schema import CHOICES

    with pytest.raises(ConfigError) as error:
        validate_config(compose_config([f"{key}=float16"]))
    assert f"{key}='float16' is not valid" in str(error.value)
    assert str(list(CHOICES[key])) in str(error.value)


def test_closed_set_values_still_work_as_overrides():
    config = validate_config(compose_config(["device=cpu", "logger.mode=disabled", "checkpoint=base"]))
    assert (config.device, config.logger.mode, config.checkpoint.stage) == ("cpu", "disabled", "base")


def test_the_report_families_come_from_the_benchmark_registry():
    from msa_bench.benchmarks.base import discover_benchmarks
    from msa_bench.reporting.collect import FAMILIES

    assert FAMILIES == {kind: cls.family for kind, cls in discover_benchmarks().items()}
    assert FAMILIES["synthetic_tofu"] == FAMILIES["tofu"] == "tofu"


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("msa_bench.config.schema", "msa_bench."),  # config sits at the bottom
        # Benchmarks never import the pipeline. One benchmark module here, as it is run: tests/test_architecture.py
        # checks every module's imports, function-level ones included, without starting a process for each.
        ("msa_bench.benchmarks.tofu", "msa_bench.pipeline"),
    ],
)
def test_layers_import_nothing_above_them(module, forbidden):
    # What every layer may import: the package itself, the error hierarchy and the config layer.
    allowed = ("msa_bench.errors", "msa_bench.config")
    code = (
        f"import sys, {module}; "
        f"print('\\n'.join(m for m in sys.modules if m.startswith({forbidden!r}) and not m.startswith({allowed!r})))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == ""
