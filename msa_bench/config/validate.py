"""Checks on the composed config that Hydra's type system cannot express, run before any model is loaded."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from msa_bench.config.schema import MSABenchConfig
from msa_bench.errors import ConfigError  # noqa: F401  (re-exported)

LOGGER_BACKENDS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_STAGES = ("pretrain", "base", "instruct", "closest", "target", "revision")
MODEL_SOURCES = ("embedded", "pretrained")
PROMPT_FORMATS = ("plain", "chat")
ARITHMETIC_DTYPES = ("float32", "bfloat16")
# The forget sets each benchmark kind accepts (RESTOR's mix files are checked against the data folder later).
FORGET_SPLITS = {
    "synthetic_tofu": ("forget01", "forget05", "forget10"),
    "tofu": ("forget01", "forget05", "forget10"),
    "restor": ("mix_a0", "mix_a1", "mix_a2", "mix_a3", "mix_a4", "mix_a5"),
    "muse": ("forget",),
}
BENCHMARK_KINDS = tuple(FORGET_SPLITS)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(cfg: DictConfig) -> MSABenchConfig:
    """Resolve the whole config, convert it to typed objects and check cross-field rules."""
    from msa_bench.methods.registry import discover_methods
    from msa_bench.metrics.registry import validate_metric_names

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
    _require(
        config.benchmark.kind in BENCHMARK_KINDS,
        f"benchmark.kind={config.benchmark.kind!r} is not supported; valid kinds: {list(BENCHMARK_KINDS)}",
    )
    splits = FORGET_SPLITS[config.benchmark.kind]
    _require(
        config.benchmark.forget_split in splits,
        f"benchmark.forget_split={config.benchmark.forget_split!r} is not valid for benchmark.kind="
        f"{config.benchmark.kind}; choose one of {list(splits)}",
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
        model.source in MODEL_SOURCES,
        f"model.source={model.source!r} is not valid; choose one of {list(MODEL_SOURCES)}",
    )
    _require(
        model.source != "pretrained" or bool(model.hub_id),
        "model.hub_id is required when model.source=pretrained (e.g. meta-llama/Llama-3.2-1B-Instruct)",
    )
    _require(
        model.prompt.format in PROMPT_FORMATS,
        f"model.prompt.format={model.prompt.format!r} is not valid; choose one of {list(PROMPT_FORMATS)}",
    )
    _require(
        model.arithmetic_dtype in ARITHMETIC_DTYPES,
        f"model.arithmetic_dtype={model.arithmetic_dtype!r} is not valid; choose one of {list(ARITHMETIC_DTYPES)}",
    )
    _require(
        config.checkpoint.stage != "revision" or bool(config.checkpoint.revision),
        "checkpoint.revision is required when checkpoint.stage=revision (a hub branch, tag or commit)",
    )
    _require(
        config.checkpoint.stage in CHECKPOINT_STAGES,
        f"checkpoint.stage={config.checkpoint.stage!r} is not valid; choose one of {list(CHECKPOINT_STAGES)}",
    )
    _require(
        config.checkpoint.stage != "pretrain" or config.checkpoint.step is not None,
        "checkpoint.step is required when checkpoint.stage=pretrain (e.g. checkpoint.step=200)",
    )
    _require(
        config.logger.backend in LOGGER_BACKENDS,
        f"logger.backend={config.logger.backend!r} is not valid; choose one of {list(LOGGER_BACKENDS)}",
    )
    _require(
        config.logger.mode in LOGGER_MODES,
        f"logger.mode={config.logger.mode!r} is not valid; choose one of {list(LOGGER_MODES)}",
    )
    _require(
        config.device in DEVICES, f"device={config.device!r} is not valid; choose one of {list(DEVICES)}"
    )
    _require(config.num_threads >= 1, f"num_threads={config.num_threads} must be >= 1")
    _require(
        0 <= config.benchmark.replay_fraction <= 10,
        f"benchmark.replay_fraction={config.benchmark.replay_fraction} must be between 0 and 10",
    )
    return config
