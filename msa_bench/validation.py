"""Checks on the composed config that Hydra's type system cannot express, run before any model is loaded.

It sits above msa_bench/config (the schemas, which import nothing else from msa_bench) because it asks the plug-in
registries: the method, metric and benchmark names a config may use are theirs to say."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from msa_bench.benchmarks.base import benchmark_class, discover_benchmarks, forget_split_error
from msa_bench.benchmarks.tofu_validation import FORGET_SETS
from msa_bench.config.attacks import attack_problems
from msa_bench.config.checkpoint_rules import checkpoint_problem
from msa_bench.config.recipes import iter_recipes
from msa_bench.config.required_values import unfilled_required_values
from msa_bench.config.schema import (
    CHOICES,
    MODEL_SCHEMAS,
    RECIPE_CHOICES,
    SEED_RANGE,
    MSABenchConfig,
    PeftConfig,
    PretrainedModelConfig,
)
from msa_bench.config.strict_keys import unknown_key_problems
from msa_bench.errors import ConfigError
from msa_bench.methods.registry import discover_methods, get_method
from msa_bench.metrics.fluency import sampling_refusal as fluency_sampling_refusal
from msa_bench.metrics.judged import sampling_refusal
from msa_bench.metrics.registry import validate_metric_names
from msa_bench.metrics.restor import RESTOR_ACCURACY
from msa_bench.pipeline.dynamics import dynamics_problems
from msa_bench.pipeline.noise_floor import noise_floor_problems

log = logging.getLogger("msa_bench")


def _dotted(config, dotted_key: str):
    value = config
    for part in dotted_key.split("."):
        value = getattr(value, part)
    return value


def _conversion_problem(error: Exception) -> str:
    """One line naming the key: OmegaConf's messages span several lines (full_key, object_type, ...)."""
    if not isinstance(error, OmegaConfBaseException):
        return str(error)  # a dataclass's __post_init__ check, which names its key itself
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = getattr(error, "full_key", None)
    if isinstance(error, MissingMandatoryValue) and key:
        return f"{key} is required (MISSING) and has no value; set it, e.g. {key}=<value>"
    return f"{key}: {first_line}" if key else first_line


def _hydra_runtime(hydra_cfg: DictConfig | None) -> DictConfig | None:
    if hydra_cfg is not None:
        return hydra_cfg
    return HydraConfig.get() if HydraConfig.initialized() else None


def _structure_problems(cfg: DictConfig, hydra_cfg: DictConfig | None) -> list[str]:
    """What is wrong with the composed config before it is converted: unknown keys, unfilled `???`, the method."""
    problems = unknown_key_problems(cfg)
    if hydra_cfg is not None:
        problems += unfilled_required_values(cfg, hydra_cfg, str(hydra_cfg.job.config_name or "config"))
    methods = discover_methods()
    method_name = OmegaConf.select(cfg, "method.name", default=None)
    if method_name not in methods:
        problems.append(
            f"method.name={method_name!r} is not a registered method; valid methods: {', '.join(sorted(methods))}"
        )
    return problems


def validate_config(cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> MSABenchConfig:
    """Resolve the whole config, convert it to typed objects and check every rule; report all problems at once.

    `hydra_cfg` (default: the running job's HydraConfig, when there is one) tells which config files were composed,
    for the check of `???` values nothing filled in.

    Raises:
        ConfigError: one message per problem, each naming its key. A config that cannot be converted (a MISSING
            value, an unresolvable interpolation, a dataclass's own check) reports that first, with the problems
            found before conversion; the rules that need typed values are then not checked.
    """
    problems = _structure_problems(cfg, _hydra_runtime(hydra_cfg))
    try:
        # to_object resolves every interpolation, fails on MISSING values (naming the key) and runs each
        # dataclass's __post_init__ checks.
        config: MSABenchConfig = OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, ValueError, TypeError) as error:
        raise ConfigError(_conversion_problem(error), *problems) from error
    problems += _rule_problems(config)
    if problems:
        raise ConfigError(*dict.fromkeys(problems))  # two rules may word one problem alike: say it once
    if isinstance(config.model, PretrainedModelConfig) and config.model.trust_remote_code:
        log.warning(
            "model.trust_remote_code=true: Python code shipped with %s (and with the models made from it) runs on "
            "this machine when a model folder names it in auto_map; keep it false unless you have read that code",
            config.model.hub_id,
        )
    return config


def _rule_problems(config: MSABenchConfig) -> list[str]:
    """Every cross-field rule the typed config breaks, one message each."""
    problems: list[str] = []

    def require(condition: bool, message: str | None) -> None:
        if not condition:
            problems.append(message)

    try:
        validate_metric_names(list(config.metrics.names))
    except ValueError as error:
        problems.append(f"metrics.names: {error}")
    for dotted_key, choices in CHOICES.items():
        value = _dotted(config, dotted_key)
        require(value in choices, f"{dotted_key}={value!r} is not valid; choose one of {list(choices)}")
    low, high = SEED_RANGE
    require(
        isinstance(config.seed, int) and low <= config.seed <= high,
        f"seed={config.seed} is out of range: numpy and torch take seeds from {low} to {high} (2**32 - 1); "
        "choose one in that range",
    )
    try:
        benchmark = benchmark_class(config.benchmark.kind)
    except ConfigError as error:
        problems.append(str(error))
    else:
        require(
            type(config.benchmark) is benchmark.config_class,
            f"benchmark {config.benchmark.name!r} (kind {config.benchmark.kind}) must extend its kind's schema: "
            f"start its YAML with `defaults: [/schema/benchmark/{config.benchmark.kind}@_here_, _self_]`",
        )
        require(
            benchmark.forget_splits.accepts(config.benchmark.forget_split),
            forget_split_error(benchmark, config.benchmark.forget_split),
        )
        problems += _forget_set_problems(config, benchmark)
    require(
        config.benchmark.max_documents is None or config.benchmark.max_documents >= 1,
        f"benchmark.max_documents={config.benchmark.max_documents} must be >= 1 (or null for all documents)",
    )
    require(
        config.benchmark.block_size >= 2, f"benchmark.block_size={config.benchmark.block_size} must be >= 2"
    )
    problems += _request_problems(config)
    model = config.model
    schema = MODEL_SCHEMAS.get(model.source)
    require(
        schema is None or type(model) is schema,
        f"model.source={model.source} needs a model YAML that extends /schema/model/{model.source} (model "
        f"{model.name!r} extends {type(model).__name__}); choose a model of that source instead",
    )
    require(
        model.source != "pretrained" or bool(getattr(model, "hub_id", None)),
        "model.hub_id is required when model.source=pretrained (e.g. meta-llama/Llama-3.2-1B-Instruct)",
    )
    problem = checkpoint_problem(config.checkpoint)
    require(problem is None, problem)
    require(config.num_threads >= 1, f"num_threads={config.num_threads} must be >= 1")
    problems += _recipe_problems(config)
    require(
        0 <= config.benchmark.replay_fraction <= 10,
        f"benchmark.replay_fraction={config.benchmark.replay_fraction} must be between 0 and 10",
    )
    problems += _peft_problems(config)
    problems += dynamics_problems(config)
    problems += noise_floor_problems(config)
    problems += attack_problems(config.attacks, lambda: _cuda_available(config.device))
    problems += _sampling_problems(config)
    return problems


def _forget_set_problems(config: MSABenchConfig, benchmark) -> list[str]:
    """benchmark.forget_set: test or validation, and validation only where the benchmark offers it
    (docs/validation_protocol.md)."""
    forget_set = config.benchmark.forget_set
    if forget_set not in FORGET_SETS:
        return [f"benchmark.forget_set={forget_set!r} must be one of {', '.join(FORGET_SETS)}"]
    if forget_set == "test":
        return []
    problems = []
    if not benchmark.supports_validation:
        offering = sorted(kind for kind, cls in discover_benchmarks().items() if cls.supports_validation)
        problems.append(
            f"benchmark.forget_set=validation: benchmark.kind={config.benchmark.kind} has no validation forget set "
            f"yet (these kinds do: {', '.join(offering)}); run benchmark.forget_set=test"
        )
    if (config.benchmark.requests or 1) > 1:
        problems.append(
            f"benchmark.forget_set=validation with benchmark.requests={config.benchmark.requests}: the validation "
            "protocol chooses one unlearning run's hyperparameters; run benchmark.requests=null"
        )
    return problems


def _request_problems(config: MSABenchConfig) -> list[str]:
    """benchmark.requests out of range, or set on a method that cannot unlearn requests one after another. Its upper
    bound (the number of authors or documents) needs the data: the benchmark checks it (Benchmark.deletion_requests)."""
    requests = config.benchmark.requests
    if requests is None:
        return []
    if isinstance(requests, bool) or not (isinstance(requests, int) and requests >= 1):
        return [f"benchmark.requests={requests!r} must be an integer >= 1 (or null for one request)"]
    if requests == 1:
        return []
    try:
        method = get_method(config.method.name)
    except ValueError:
        return []  # the unknown method is reported on its own
    if method.sequential is None:
        return [
            f"method={config.method.name} cannot unlearn sequential deletion requests (benchmark.requests="
            f"{requests}): {method.sequential_refusal}; run it with benchmark.requests=null"
        ]
    return []


def _sampling_problems(config: MSABenchConfig) -> list[str]:
    """metrics.sampling out of range, sampling that would decode one greedy answer k times, and metrics that cannot
    be computed on sampled answers."""
    sampling = config.metrics.sampling
    problems = []
    if not (isinstance(sampling.num_samples, int) and sampling.num_samples >= 1):
        problems.append(f"metrics.sampling.num_samples={sampling.num_samples!r} must be an integer >= 1")
    if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
        problems.append(
            f"metrics.sampling.temperature={sampling.temperature} must be >= 0 (0 decodes greedily) and finite"
        )
    elif sampling.temperature == 0 and sampling.num_samples > 1:
        problems.append(
            f"metrics.sampling.num_samples={sampling.num_samples} with metrics.sampling.temperature=0 decodes the "
            f"same greedy answer {sampling.num_samples} times; set metrics.sampling.temperature > 0 (e.g. 1.0), "
            "or num_samples=1"
        )
    if not 0 < sampling.top_p <= 1:
        problems.append(f"metrics.sampling.top_p={sampling.top_p} must be in (0, 1] (1 keeps every token)")
    low, high = SEED_RANGE
    if not low <= sampling.seed <= high:
        problems.append(
            f"metrics.sampling.seed={sampling.seed} is out of range: choose one from {low} to {high}"
        )
    if sampling.temperature > 0:
        for refusal in (
            sampling_refusal(list(config.metrics.names), sampling),
            fluency_sampling_refusal(list(config.metrics.names), sampling),
        ):
            if refusal is not None:
                problems.append(refusal)
        # RESTOR's accuracy is asked once, greedily: it does not read metrics.sampling.
        if RESTOR_ACCURACY in config.metrics.names:
            problems.append(
                f"metrics.names has {RESTOR_ACCURACY} with metrics.sampling.temperature={sampling.temperature}: "
                "it decodes greedily and does not read metrics.sampling; drop it from metrics.names, or set "
                "metrics.sampling.temperature=0 and num_samples=1"
            )
    return problems


def _peft_problems(config: MSABenchConfig) -> list[str]:
    """LoRA settings that are out of range, or that would change nothing (msa_bench/training/lora.py)."""
    peft = config.peft
    problems = []
    if peft.name == "none":
        changed = [
            f"peft.{f.name}={getattr(peft, f.name)!r}"
            for f in dataclasses.fields(PeftConfig)
            if f.name != "name" and getattr(peft, f.name) != getattr(PeftConfig(), f.name)
        ]
        if changed:
            problems.append(
                f"{', '.join(changed)} set with peft=none, where no fine-tune uses LoRA; add peft=lora, or drop "
                "the setting"
            )
        return problems
    if not (isinstance(peft.r, int) and peft.r >= 1):
        problems.append(f"peft.r={peft.r!r} must be an integer >= 1 (the adapters' rank)")
    if not peft.alpha > 0:
        problems.append(f"peft.alpha={peft.alpha} must be > 0 (the adapters' scale is alpha / r)")
    if not 0 <= peft.dropout < 1:
        problems.append(f"peft.dropout={peft.dropout} must be in [0, 1)")
    if not peft.target_modules or not all(isinstance(m, str) and m for m in peft.target_modules):
        problems.append(
            f"peft.target_modules={list(peft.target_modules)} must name at least one module suffix, "
            "e.g. [q_proj,v_proj]"
        )
    method = discover_methods().get(config.method.name)
    if method is not None and not method.fine_tunes and not peft.apply_to_target_oracle:
        problems.append(
            f"peft={peft.name} with method={config.method.name}: that method fine-tunes nothing (it evaluates the "
            f"{config.method.name} model the benchmark defines), so LoRA would change nothing; use peft=none, or "
            "peft.apply_to_target_oracle=true to train the target and oracle with LoRA"
        )
    return problems


def _cuda_available(device: str) -> bool:
    if device == "cpu":
        return False
    import torch  # only reached when a recipe asks for a CUDA-only option

    return torch.cuda.is_available()


def _recipe_problems(config: MSABenchConfig) -> list[str]:
    """The recipes' closed value sets, and the options that need CUDA or bitsandbytes, each naming its dotted key."""
    problems: list[str] = []
    for key, recipe in iter_recipes(config):
        for name, choices in RECIPE_CHOICES.items():
            value = getattr(recipe, name)
            if value not in choices:
                problems.append(f"{key}.{name}={value!r} is not valid; choose one of {list(choices)}")
        if recipe.mixed_precision == "fp16":
            if config.model.dtype == "float16":
                problems.append(
                    f"{key}.mixed_precision=fp16 with model.dtype=float16 cannot train (the gradient scaler needs "
                    "float32 or bfloat16 weights); set model.dtype=float32 or use mixed_precision=bf16"
                )
            elif not _cuda_available(config.device):
                problems.append(
                    f"{key}.mixed_precision=fp16 needs a CUDA GPU (device={config.device} has none here); use "
                    "mixed_precision=bf16 or no"
                )
        if recipe.optimizer == "adamw_8bit":
            if importlib.util.find_spec("bitsandbytes") is None:
                problems.append(
                    f"{key}.optimizer=adamw_8bit needs bitsandbytes, which is not installed: `pip install "
                    "bitsandbytes`, or use optimizer=adamw_torch"
                )
            elif not _cuda_available(config.device):
                problems.append(
                    f"{key}.optimizer=adamw_8bit runs only on a CUDA GPU (device={config.device} has none here); "
                    "use optimizer=adamw_torch"
                )
    return problems
