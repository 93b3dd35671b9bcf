"""Representation Misdirection for Unlearning (RMU; Li et al. 2024, WMDP), as open-unlearning re-implements it.

Let h(x_t) be the output, at token t, of the one module whose name matches `module_regex` (a decoder layer: the
residual stream after it), d its width, and u the control vector: uniform in [0, 1)^d, scaled to norm
`steering_coeff`, drawn once per run from the run's seed. Over the answer tokens (labels != -100) of each sequence:

  forget term = mean over forget sequences of  mean over answer tokens of  ‖h_θ(x_t) − u‖² / d
  retain term = the same on retain sequences with h_θD(x_t) (the frozen θ_D) in place of u  (retain_loss=embed_diff,
                open-unlearning's EMBED_DIFF), or the shared nll / kl retain terms
  loss        = forget_weight · forget term + retain_weight · retain term

Only parameters whose names match `trainable_params_regex` are trained; the others are frozen before the optimizer
is built. Both regexes are matched with re.fullmatch against names from named_modules() / named_parameters().
Parameters after the steered module (later layers, the final norm, lm_head) get no gradient from either term, so
with the default `.*` they stay unchanged as well.

Both terms are means over sequences (of means over their answer tokens), so equal-size micro-batches under gradient
accumulation give exactly the full batch's gradient.

Which tokens: the answer tokens, as open-unlearning does. WMDP steers every token of its forget corpus, but a QA
prompt ("Question: ... Answer:") shares its template and often its subject with retain questions, so steering it
would scramble the model on retained questions too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.gradient_unlearning import (
    LossBasedMethod,
    LossMethodConfig,
    default_recipe,
    unlearn_with_loss,
)
from msa_bench.methods.registry import register_method

RMU_RETAIN_LOSSES = ("embed_diff", "nll", "kl")
MAX_LISTED_NAMES = 40  # how many candidate module names an error message lists


@dataclass
class RMUConfig(LossMethodConfig):
    name: str = "rmu"
    module_regex: str = r"model\.layers\.1"  # the steered module (exactly one must match)
    trainable_params_regex: str = ".*"  # parameters trained; the rest are frozen
    steering_coeff: float = 2.0  # ‖u‖
    retain_weight: float = 1.0
    retain_loss: str = "embed_diff"  # embed_diff: MSE to θ_D's activations of the steered module; or nll / kl
    recipe: TrainRecipe = default_recipe(epochs=10.0, learning_rate=1e-4, batch_size=16, warmup_ratio=0.0)

    def __post_init__(self):
        if self.retain_loss not in RMU_RETAIN_LOSSES:
            raise ValueError(
                f"method.retain_loss={self.retain_loss!r} is not valid for rmu; use one of {RMU_RETAIN_LOSSES}"
            )
        # The shared checks know only the shared retain terms (nll, kl): run them with one of those in place.
        own_retain_loss, self.retain_loss = self.retain_loss, "nll"
        try:
            super().__post_init__()
        finally:
            self.retain_loss = own_retain_loss
        if not self.steering_coeff > 0:
            raise ValueError(
                f"method.steering_coeff={self.steering_coeff} must be > 0 (the control vector's norm)"
            )
        if self.precompute_reference:
            raise ValueError(
                "method.precompute_reference is not supported by rmu (it needs θ_D's activations)"
            )
        for key in ("module_regex", "trainable_params_regex"):
            try:
                re.compile(getattr(self, key))
            except re.error as error:
                raise ValueError(
                    f"method.{key}={getattr(self, key)!r} is not a valid regex: {error}"
                ) from error


def control_vector(hidden_size: int, steering_coeff: float, seed: int) -> torch.Tensor:
    """RMU's fixed random target u: uniform in [0, 1)^d (as WMDP and open-unlearning draw it), norm steering_coeff.

    A generator of its own keeps the draw independent of (and from disturbing) the global RNG state.
    """
    generator = torch.Generator().manual_seed(seed)
    direction = torch.rand(hidden_size, generator=generator)
    return direction / direction.norm() * steering_coeff


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED_NAMES])
    return shown if len(names) <= MAX_LISTED_NAMES else f"{shown}, ... ({len(names) - MAX_LISTED_NAMES} more)"


def find_module(model: torch.nn.Module, module_regex: str) -> torch.nn.Module:
    """The one submodule whose name fully matches `module_regex`; a clear error when none or several do."""
    names = [name for name, _ in model.named_modules() if name]
    matched = [name for name in names if re.fullmatch(module_regex, name)]
    if not matched:
        raise ValueError(
            f"method.module_regex={module_regex!r} matches no module (re.fullmatch); candidates: {_listed(names)}"
        )
    if len(matched) > 1:
        raise ValueError(
            f"method.module_regex={module_regex!r} matches {len(matched)} modules, exactly one is needed: "
            f"{_listed(matched)}"
        )
    return model.get_submodule(matched[0])


def freeze_all_but_matching(model: torch.nn.Module, trainable_params_regex: str) -> list[str]:
    """Set requires_grad to whether each parameter's name fully matches the regex; return the trainable names."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(re.fullmatch(trainable_params_regex, name) is not None)
        if param.requires_grad:
            trainable.append(name)
    if not trainable:
        names = [name for name, _ in model.named_parameters()]
        raise ValueError(
            f"method.trainable_params_regex={trainable_params_regex!r} matches no parameter (re.fullmatch); "
            f"parameters: {_listed(names)}"
        )
    return trainable


def freeze_untrained_parameters(model: torch.nn.Module, config: RMUConfig) -> None:
    """unlearn_with_loss's prepare_model hook: it runs before the optimizer is built, which then holds only the
    trained parameters."""
    freeze_all_but_matching(model, config.trainable_params_regex)


def captured_output(module: torch.nn.Module, forward: Callable[[], object]) -> torch.Tensor:
    """Run `forward()` and return the hidden states `module` output during it (via a forward hook)."""
    outputs: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        # Decoder layers return a tensor in transformers 5 and a tuple (hidden states first) in older versions.
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(hook)
    try:
        forward()
    finally:
        handle.remove()
    if len(outputs) != 1:
        raise RuntimeError(f"the steered module ran {len(outputs)} times in one forward pass; expected once")
    return outputs[0]


def steered_activations(trainer, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hidden states [B, T, D] of the policy's steered module on `batch`, with autograd."""
    from msa_bench.training.lora import base_of

    # Under peft=lora the policy is a peft wrapper; the regex names the base model's modules.
    module = find_module(base_of(trainer.accelerator.unwrap_model(model)), trainer.method_config.module_regex)
    activations = captured_output(
        module, lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    )
    # Under no_grad (evaluating the loss) nothing requires grad; otherwise this means nothing trained feeds it.
    if torch.is_grad_enabled() and not activations.requires_grad:
        raise ValueError(
            f"no trained parameter feeds method.module_regex={trainer.method_config.module_regex!r}; "
            f"method.trainable_params_regex={trainer.method_config.trainable_params_regex!r} must match a "
            "parameter at or before that module"
        )
    return activations


def reference_activations(trainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hidden states of the frozen θ_D's steered module on `batch`, without autograd."""
    module = find_module(trainer.reference_model, trainer.method_config.module_regex)
    return captured_output(module, lambda: trainer.reference_outputs(batch))


def rmu_objective(trainer, model, inputs):
    from msa_bench.training.losses import masked_activation_mse

    cfg: RMUConfig = trainer.method_config
    forget = inputs["forget"]
    trainer.count_tokens(forget)
    activations = steered_activations(trainer, model, forget)
    # Regenerated each step from the run's seed (cheap): the same u throughout the run, with no state to carry.
    target = control_vector(activations.shape[-1], cfg.steering_coeff, seed=trainer.args.seed)
    target = target.to(activations.device)
    loss = cfg.forget_weight * masked_activation_mse(activations, target, forget["labels"] != -100)
    trainer.check_finite(loss, "forget (rmu)")
    if cfg.retain_weight > 0 and "retain" in inputs:
        retain = inputs["retain"]
        if cfg.retain_loss == "embed_diff":
            trainer.count_tokens(retain)
            retained = steered_activations(trainer, model, retain)
            reference = reference_activations(trainer, retain).to(retained.device)
            retain_loss = masked_activation_mse(retained, reference, retain["labels"] != -100)
            trainer.check_finite(retain_loss, "retain (embed_diff)")
        else:
            retain_loss = trainer.retain_loss(model, retain)
        loss = loss + cfg.retain_weight * retain_loss
    return loss


@register_method
class RMU(LossBasedMethod):
    name = "rmu"
    config_class = RMUConfig

    def produce(self, pipeline):
        return unlearn_with_loss(
            pipeline,
            self.name,
            self.config,
            rmu_objective,
            needs_reference=self.config.retain_weight > 0 and self.config.retain_loss == "embed_diff",
            use_retain=True,
            prepare_model=freeze_untrained_parameters,
        )
