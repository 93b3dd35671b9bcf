"""Gradient ascent: maximise the NLL of the forget set, starting from θ_D (no retain term by default)."""

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
class GradAscentConfig(LossMethodConfig):
    name: str = "grad_ascent"
    recipe: TrainRecipe = default_recipe(epochs=5.0, learning_rate=2e-4, batch_size=16, warmup_ratio=0.0)


def grad_ascent_loss(trainer, model, inputs):
    from msa_bench.training.losses import mean_token_nll

    cfg: GradAscentConfig = trainer.method_config
    forget = inputs["forget"]
    trainer.count_tokens(forget)
    loss = -cfg.forget_weight * mean_token_nll(model, forget)
    trainer.check_finite(loss, "forget (negated nll)")
    if cfg.retain_weight > 0 and "retain" in inputs:
        loss = loss + cfg.retain_weight * trainer.retain_loss(model, inputs["retain"])
    return loss


@register_method
class GradAscent(LossBasedMethod):
    name = "grad_ascent"
    config_class = GradAscentConfig

    def produce(self, pipeline):
        return unlearn_with_loss(
            pipeline, self.name, self.config, grad_ascent_loss, needs_reference=False, use_retain=True
        )
