"""SimNPO (Fan et al. 2024): reference-free NPO on the length-normalised likelihood of each forget sequence.

With avgNLL = −(1/|y|)·log π(y|x) (the mean NLL of a sequence's labelled tokens), the paper's forget loss
−(2/β)·log σ(−(β/|y|)·log π(y|x) − γ_margin) is −(2/β)·log σ(β·(avgNLL − δ)) with δ = γ_margin/β, averaged over the
sequences of the batch. Minimising it raises avgNLL, i.e. lowers the forget likelihood; the loss decays to 0 as
avgNLL grows, so, unlike gradient ascent, it stops pushing sequences that are already forgotten.

Loss = forget_weight · that + retain_weight · retain term (NLL, or KL to θ_D). δ is a margin in NLL units, as in
open-unlearning (`delta`); forget_weight is open-unlearning's `gamma`, not the paper's margin γ.
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
class SimNPOConfig(LossMethodConfig):
    name: str = "simnpo"
    beta: float = 4.5
    delta: float = 0.0
    forget_weight: float = 0.125
    retain_weight: float = 1.0
    recipe: TrainRecipe = default_recipe(epochs=10.0, learning_rate=2e-4, batch_size=16, warmup_ratio=0.0)

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"method.beta={self.beta} must be > 0 (SimNPO's inverse temperature)")


def simnpo_loss(
    sequence_nll: torch.Tensor, n_tokens: torch.Tensor, beta: float, delta: float
) -> torch.Tensor:
    """−(2/β)·log σ(β·(avgNLL − δ)) per sequence, averaged over sequences; avgNLL = summed NLL / its token count."""
    import torch.nn.functional as F

    mean_nll = sequence_nll / n_tokens.clamp(min=1)
    return (-2.0 / beta * F.logsigmoid(beta * (mean_nll - delta))).mean()


def simnpo_objective(trainer, model, inputs):
    from msa_bench.training.losses import sequence_nll

    cfg: SimNPOConfig = trainer.method_config
    forget = inputs["forget"]
    trainer.count_tokens(forget)
    policy_nll, n_tokens = sequence_nll(model, forget)
    loss = cfg.forget_weight * simnpo_loss(policy_nll, n_tokens, cfg.beta, cfg.delta)
    trainer.check_finite(loss, "forget (simnpo)")
    if cfg.retain_weight > 0 and "retain" in inputs:
        loss = loss + cfg.retain_weight * trainer.retain_loss(model, inputs["retain"])
    return loss


@register_method
class SimNPO(LossBasedMethod):
    name = "simnpo"
    config_class = SimNPOConfig

    def produce(self, pipeline):
        return unlearn_with_loss(
            pipeline, self.name, self.config, simnpo_objective, needs_reference=False, use_retain=True
        )
