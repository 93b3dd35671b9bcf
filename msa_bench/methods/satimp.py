"""SatImp (Yang et al. 2025, as in open-unlearning): token-weighted gradient ascent on the forget set.

Each labelled forget token t has NLL ℓ_t = −log p_t, p_t the model's probability of the label token, and a weight
w_t = p_t^β1 · (1 − p_t)^β2 computed from detached p_t (a weight, not a path for gradients). The forget loss is
−mean_t(w_t · ℓ_t) over the labelled tokens of the batch: minimising it raises the NLL of weighted tokens, i.e.
lowers the forget likelihood. p^β1 takes the weight off tokens already forgotten (p → 0), which keeps the ascent
from running away as plain gradient ascent does; (1 − p)^β2 takes it off tokens the model is certain of (p → 1).

Loss = forget_weight · that + retain_weight · retain term (NLL, or KL to θ_D).
"""

from __future__ import annotations

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


@dataclass
class SatImpConfig(LossMethodConfig):
    name: str = "satimp"
    beta1: float = 5.0
    beta2: float = 1.0
    forget_weight: float = 0.1
    retain_weight: float = 1.0
    recipe: TrainRecipe = default_recipe(epochs=5.0, learning_rate=2e-4, batch_size=16, warmup_ratio=0.0)

    def __post_init__(self):
        super().__post_init__()
        if self.beta1 < 0 or self.beta2 < 0:
            raise ValueError(f"method.beta1={self.beta1} and method.beta2={self.beta2} must be >= 0")


def satimp_forget_loss(
    logits: torch.Tensor, labels: torch.Tensor, beta1: float, beta2: float
) -> torch.Tensor:
    """−mean over labelled tokens of p^β1·(1−p)^β2·(−log p), with the weights detached."""
    from msa_bench.training.losses import token_nll_from_logits

    token_nll, mask = token_nll_from_logits(logits, labels)
    # Rounding can put −log p a hair below 0; p > 1 would make (1 − p)^β2 NaN for a fractional β2.
    probability = torch.exp(-token_nll.detach()).clamp(max=1.0)
    weights = probability.pow(beta1) * (1.0 - probability).pow(beta2)
    return -(weights * token_nll)[mask].sum() / mask.sum().clamp(min=1)


def satimp_objective(trainer, model, inputs):
    cfg: SatImpConfig = trainer.method_config
    forget = inputs["forget"]
    trainer.count_tokens(forget)
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    loss = cfg.forget_weight * satimp_forget_loss(logits, forget["labels"], cfg.beta1, cfg.beta2)
    trainer.check_finite(loss, "forget (satimp)")
    if cfg.retain_weight > 0 and "retain" in inputs:
        loss = loss + cfg.retain_weight * trainer.retain_loss(model, inputs["retain"])
    return loss


@register_method
class SatImp(LossBasedMethod):
    name = "satimp"
    config_class = SatImpConfig

    def produce(self, pipeline):
        return unlearn_with_loss(
            pipeline, self.name, self.config, satimp_objective, needs_reference=False, use_retain=True
        )
