"""Negative Preference Optimisation (Zhang et al. 2024), with θ_D as the frozen reference model.

Loss = forget_weight · (−2/β)·log σ(−β·(log π(y|x) − log π_ref(y|x))) on forget sequences
     + retain_weight · NLL on retain sequences (optional: retain_weight = 0 turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.gradient_unlearning import unlearn_with_loss
from msa_bench.methods.registry import MethodConfig, UnlearningMethod, register_method


@dataclass
class NPOConfig(MethodConfig):
    name: str = "npo"
    beta: float = 0.1
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    recipe: TrainRecipe = field(
        default_factory=lambda: TrainRecipe(epochs=10.0, learning_rate=2e-4, batch_size=16, warmup_ratio=0.0)
    )

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"method.beta={self.beta} must be > 0 (NPO's inverse temperature)")
        if self.retain_weight < 0 or self.forget_weight < 0:
            raise ValueError("method.forget_weight and method.retain_weight must be >= 0")


def npo_objective(trainer, model, inputs):
    import torch

    from msa_bench.training.losses import mean_token_nll, npo_loss, sequence_nll

    cfg: NPOConfig = trainer.method_config
    forget = inputs["forget"]
    trainer.count_tokens(forget)
    policy_nll, _ = sequence_nll(model, forget)
    with torch.no_grad():
        reference_nll, _ = sequence_nll(trainer.reference_model, forget)
    loss = cfg.forget_weight * npo_loss(policy_nll, reference_nll, cfg.beta)
    trainer.check_finite(loss, "forget (npo)")
    if cfg.retain_weight > 0 and "retain" in inputs:
        trainer.count_tokens(inputs["retain"])
        retain_loss = mean_token_nll(model, inputs["retain"])
        trainer.check_finite(retain_loss, "retain (nll)")
        loss = loss + cfg.retain_weight * retain_loss
    return loss


@register_method
class NPO(UnlearningMethod):
    name = "npo"
    config_class = NPOConfig

    def produce(self, pipeline):
        cfg: NPOConfig = self.config
        return unlearn_with_loss(
            pipeline, self.name, cfg, npo_objective, needs_reference=True, use_retain=cfg.retain_weight > 0
        )
