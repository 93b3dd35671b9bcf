"""Checks on the composed config that Hydra's type system cannot express, run before any model is loaded.

It sits above msa_bench/config (the schemas, which import nothing else from msa_bench) because it asks the plug-in
registries: the method, metric and benchmark names a config may use are theirs to say."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from msa_bench.benchmarks.base import benchmark_class, forget_split_error
from msa_bench.config.checkpoint_rules import checkpoint_problem
from msa_bench.config.schema import CHOICES, MODEL_SCHEMAS, MSABenchConfig
from msa_bench.errors import ConfigError  # noqa: F401  (re-exported)
from msa_bench.methods.registry import discover_methods
from msa_bench.metrics.registry import validate_metric_names


def _dotted(config, dotted_key: str):
    value = config
    for part in dotted_key.split("."):
        value = getattr(value, part)
    return value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(cfg: DictConfig) -> MSABenchConfig:
    """Resolve the whole config, convert it to typed objects and check cross-field rules."""
    methods = discover_methods()
    method_name = OmegaConf.select(cfg, "method.name", default=None)
    _require(
        method_name in methods,
        f"method.name={method_name!r} is not a registered method; valid methods: {', '.join(sorted(methods))}",
    )
    try:
        # to_object resolves every interpolation, fails on MISSING values (naming the key) and runs each
        # dataclass's __post_init__ checks.
        config: MSABenchConfig = OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, ValueError, TypeError) as error:
        raise ConfigError(str(error)) from error

    try:
        validate_metric_names(list(config.metrics.names))
    except ValueError as error:
        raise ConfigError(f"metrics.names: {error}") from error
    for dotted_key, choices in CHOICES.items():
        value = _dotted(config, dotted_key)
        _require(value in choices, f"{dotted_key}={value!r} is not valid; choose one of {list(choices)}")
    benchmark = benchmark_class(config.benchmark.kind)
    _require(
        type(config.benchmark) is benchmark.config_class,
        f"benchmark {config.benchmark.name!r} (kind {config.benchmark.kind}) must extend its kind's schema: start "
        f"its YAML with `defaults: [/schema/benchmark/{config.benchmark.kind}@_here_, _self_]`",
    )
    _require(
        benchmark.forget_splits.accepts(config.benchmark.forget_split),
        forget_split_error(benchmark, config.benchmark.forget_split),
    )
    _require(
        config.benchmark.max_documents is None or config.benchmark.max_documents >= 1,
        f"benchmark.max_documents={config.benchmark.max_documents} must be >= 1 (or null for all documents)",
    )
    _require(
        config.benchmark.block_size >= 2, f"benchmark.block_size={config.benchmark.block_size} must be >= 2"
    )
    model = config.model
    _require(
        type(model) is MODEL_SCHEMAS[model.source],
        f"model.source={model.source} needs a model YAML that extends /schema/model/{model.source} (model "
        f"{model.name!r} extends {type(model).__name__}); choose a model of that source instead",
    )
    _require(
        model.source != "pretrained" or bool(model.hub_id),
        "model.hub_id is required when model.source=pretrained (e.g. meta-llama/Llama-3.2-1B-Instruct)",
    )
    problem = checkpoint_problem(config.checkpoint)
    _require(problem is None, problem)
    _require(config.num_threads >= 1, f"num_threads={config.num_threads} must be >= 1")
    _require(
        0 <= config.benchmark.replay_fraction <= 10,
        f"benchmark.replay_fraction={config.benchmark.replay_fraction} must be between 0 and 10",
    )
    return config
