"""Gradient difference: gradient ascent on the forget set plus a retain term, from θ_D (open-unlearning's GradDiff).

Loss = forget_weight · (−NLL(forget)) + retain_weight · retain term, each NLL averaged over the labelled tokens of
the batch; the retain term is NLL on the retain set, or KL(θ_D ‖ model) on it with `retain_loss: kl`.
"""

from __future__ import annotations

from dataclasses import dataclass

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.grad_ascent import grad_ascent_loss
from msa_bench.methods.gradient_unlearning import (
    LossBasedMethod,
    LossMethodConfig,
    default_recipe,
    unlearn_with_loss,
)
from msa_bench.methods.registry import register_method


@dataclass
class GradDiffConfig(LossMethodConfig):
    name: str = "grad_diff"
    retain_weight: float = 1.0
    recipe: TrainRecipe = default_recipe(epochs=5.0, learning_rate=2e-4, batch_size=16, warmup_ratio=0.0)


# GradDiff is gradient ascent with its retain term switched on: one definition of the objective serves both.
grad_diff_loss = grad_ascent_loss


@register_method
class GradDiff(LossBasedMethod):
    name = "grad_diff"
    config_class = GradDiffConfig

    def produce(self, pipeline):
        return unlearn_with_loss(
            pipeline, self.name, self.config, grad_diff_loss, needs_reference=False, use_retain=True
        )
