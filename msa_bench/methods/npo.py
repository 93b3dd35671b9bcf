"""Negative Preference Optimisation (Zhang et al. 2024), with θ_D as the frozen reference model.

Loss = forget_weight · (−2/β)·log σ(−β·(log π(y|x) − log π_ref(y|x))) on forget sequences
     + retain_weight · retain term (NLL, or KL to θ_D; retain_weight = 0 turns it off).
`precompute_reference: true` computes log π_ref once per forget example and frees the reference model.
"""

from __future__ import annotations

from dataclasses import dataclass

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.gradient_unlearning import (
    LossBasedMethod,
    LossMethodConfig,
    default_recipe,
    unlearn_with_loss,
)
from msa_bench.methods.registry import register_method


@dataclass
class NPOConfig(LossMethodConfig):
    name: str = "npo"
    beta: float = 0.1
    retain_weight: float = 1.0
    recipe: TrainRecipe = default_recipe(epochs=10.0, learning_rate=2e-4, batch_size=16, warmup_ratio=0.0)

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"method.beta={self.beta} must be > 0 (NPO's inverse temperature)")


def npo_objective(trainer, model, inputs):
    from msa_bench.training.losses import npo_loss, sequence_nll

    cfg: NPOConfig = trainer.method_config
    forget = inputs["forget"]
    trainer.count_tokens(forget)
    policy_nll, _ = sequence_nll(model, forget)
    reference_nll = trainer.reference_sequence_nll(forget)
    loss = cfg.forget_weight * npo_loss(policy_nll, reference_nll, cfg.beta)
    trainer.check_finite(loss, "forget (npo)")
    if cfg.retain_weight > 0 and "retain" in inputs:
        loss = loss + cfg.retain_weight * trainer.retain_loss(model, inputs["retain"])
    return loss


@register_method
class NPO(LossBasedMethod):
    name = "npo"
    config_class = NPOConfig

    def produce(self, pipeline):
        return unlearn_with_loss(
            pipeline, self.name, self.config, npo_objective, needs_reference=True, use_retain=True
        )
