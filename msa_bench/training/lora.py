"""LoRA fine-tuning through peft: which stages use it, wrapping a loaded model, and saving what it trained.

With `peft=lora`, a stage that fine-tunes loads its model as usual, wraps it with peft's `get_peft_model` (rank-r
adapters A, B on the linear modules named by `peft.target_modules`; B starts at zero, so the wrapped model starts
equal to the loaded one), trains through the same Trainer, and then either

- merges the adapters (`merge_and_unload`) and saves an ordinary model, θ1 = θ0 + (alpha/r)·B·A: what the
  arithmetic, the evaluation and any later stage read; or
- for MSA's and task arithmetic's vectors with `peft.vector_storage=factors`, saves only the adapter
  (adapter_model.safetensors + adapter_config.json), which msa_bench/arithmetic/low_rank.py reads as scale·B@A.

Which stages: the vectors (θ1, θ2, task arithmetic's fine-tune) and every loss-based unlearning method; the
benchmark's own models (clean, target, oracle) only with `peft.apply_to_target_oracle=true`. A stage without LoRA
keeps its cache key byte for byte; a stage with LoRA adds `peft` (`LoraPlan.key`) to its key.

peft is imported inside the functions, so composing and validating a config stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from msa_bench.config.schema import PeftConfig
from msa_bench.errors import ConfigError
from msa_bench.models.build import check_finite_weights, save_model

# Which kind of stage asks for a plan (see lora_plan).
ROLES = ("vector", "unlearning", "benchmark_model")
MAX_LISTED_SUFFIXES = 40


@dataclass(frozen=True)
class LoraPlan:
    """How one stage uses LoRA: the settings and how its result is stored (merged | factors)."""

    settings: PeftConfig
    storage: str

    def key(self) -> dict:
        """The part of the stage's cache key LoRA adds: what changes the trained weights, and the storage.
        `apply_to_target_oracle` only says which stages get a plan, so it is left out."""
        return {
            "name": self.settings.name,
            "r": self.settings.r,
            "alpha": float(self.settings.alpha),
            "dropout": float(self.settings.dropout),
            "target_modules": list(self.settings.target_modules),
            "storage": self.storage,
        }


def lora_plan(settings: PeftConfig, role: str) -> LoraPlan | None:
    """The plan of a stage of kind `role`, or None when the stage trains all weights.

    vector: MSA's θ1/θ2 and task arithmetic's fine-tune, stored as `peft.vector_storage`; unlearning: a loss-based
    method's output (evaluated, so always merged); benchmark_model: clean, target, oracle (only with
    `peft.apply_to_target_oracle`, merged: they are evaluated and fine-tuned further)."""
    if role not in ROLES:
        raise ValueError(f"lora_plan: role {role!r} is not one of {ROLES}")
    if settings.name != "lora":
        return None
    if role == "benchmark_model" and not settings.apply_to_target_oracle:
        return None
    return LoraPlan(settings, settings.vector_storage if role == "vector" else "merged")


def _matches(name: str, suffix: str) -> bool:
    """peft's rule for a target module given as a string in a list: the name equals it or ends with "." + it."""
    return name == suffix or name.endswith(f".{suffix}")


def linear_modules(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def target_module_names(model: torch.nn.Module, settings: PeftConfig) -> list[str]:
    """The linear modules LoRA adapts: those matching a suffix of `peft.target_modules` whose weight is trainable.

    A method may freeze weights before this (RMU's method.trainable_params_regex); LoRA then adapts only modules
    the method would train.

    Raises:
        ConfigError: a suffix matches no linear module (the message lists the suffixes the model has), or every
            matching module is frozen.
    """
    linear = linear_modules(model)
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in linear})
    missing = [suffix for suffix in settings.target_modules if not any(_matches(n, suffix) for n in linear)]
    if missing:
        shown = ", ".join(suffixes[:MAX_LISTED_SUFFIXES])
        raise ConfigError(
            f"peft.target_modules: {', '.join(missing)} match(es) no linear module of {type(model).__name__}; "
            f"its linear modules end with: {shown}; set peft.target_modules to some of those "
            f"(e.g. peft.target_modules=[{','.join(suffixes[:2])}])"
        )
    matched = [n for n in linear if any(_matches(n, suffix) for suffix in settings.target_modules)]
    trainable = [n for n in matched if linear[n].weight.requires_grad]
    if not trainable:
        raise ConfigError(
            f"peft.target_modules={list(settings.target_modules)} match only frozen modules (the method froze "
            "them, e.g. rmu's method.trainable_params_regex); choose target modules the method trains"
        )
    return trainable


def with_lora(model: torch.nn.Module, settings: PeftConfig, seed: int):
    """`model` wrapped with fresh LoRA adapters (peft's PeftModel); only the adapters are trainable.

    lora_A is drawn at random (B is zero) from a generator seeded with `seed`: the global RNG at this point depends
    on what ran earlier in the process (stages built or reused), and a cached stage must not."""
    from peft import LoraConfig, get_peft_model

    names = target_module_names(model, settings)
    everything = [n for n in linear_modules(model) if any(_matches(n, s) for s in settings.target_modules)]
    lora_config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        # The suffixes when every matching module is adapted (a short adapter_config.json); else the exact names.
        target_modules=list(settings.target_modules) if names == everything else names,
        bias="none",
        task_type="CAUSAL_LM",
    )
    device = next(model.parameters()).device
    cuda_devices = [device.index or 0] if device.type == "cuda" else []  # the CPU generator is always forked
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, lora_config)
    # Reentrant gradient checkpointing passes gradients only to checkpointed blocks whose inputs require grad. With
    # every base weight frozen, the embeddings' output does not, and the adapters inside the checkpointed layers
    # silently get no gradient: lora_B stays 0 (open-unlearning #178). Making that output require grad costs one
    # [batch, tokens, hidden] gradient and makes LoRA train under any checkpointing set now or later by the Trainer.
    wrapped.enable_input_require_grads()
    return wrapped


def base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a peft wrapper (with the adapters in place), whose module names are the base model's
    (`model.layers.1`, not `base_model.model.model.layers.1`); any other model unchanged."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def adapter_statistics(model: torch.nn.Module) -> dict:
    """What the adapters learnt, cheaply: the L2 norm over every lora_B (exactly 0 before training, so a positive
    value means the adapters changed) and over every lora_A, with the module and parameter counts."""
    b_squares, a_squares, modules, parameters = 0.0, 0.0, 0, 0
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            b_squares += float(torch.linalg.vector_norm(parameter.detach(), dtype=torch.float64) ** 2)
            modules += 1
        elif "lora_A" in name:
            a_squares += float(torch.linalg.vector_norm(parameter.detach(), dtype=torch.float64) ** 2)
        if parameter.requires_grad:
            parameters += parameter.numel()
    return {
        "adapted_modules": modules,
        "trainable_parameters": parameters,
        "lora_B_norm": math.sqrt(b_squares),
        "lora_A_norm": math.sqrt(a_squares),
    }


def save_trained(model, tokenizer, out_dir: Path, plan: LoraPlan) -> dict:
    """Save a trained LoRA model as the plan says and return its adapter statistics (with `storage`).

    merged: the adapters are folded into the weights and an ordinary model folder is written. factors: only the
    adapter (adapter_model.safetensors, adapter_config.json) and the tokenizer, for the low-rank arithmetic.
    """
    statistics = adapter_statistics(model) | {"storage": plan.storage}
    if plan.storage == "factors":
        check_finite_weights(model, out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    else:
        save_model(model.merge_and_unload(), tokenizer, out_dir)
    return statistics
