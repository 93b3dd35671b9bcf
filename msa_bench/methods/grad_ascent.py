"""Gradient ascent: maximise the NLL of the forget set, starting from θ_D."""

from __future__ import annotations

from dataclasses import dataclass, field

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.gradient_unlearning import unlearn_with_loss
from msa_bench.methods.registry import MethodConfig, UnlearningMethod, register_method


@dataclass
class GradAscentConfig(MethodConfig):
    name: str = "grad_ascent"
    recipe: TrainRecipe = field(
        default_factory=lambda: TrainRecipe(epochs=5.0, learning_rate=2e-4, batch_size=16, warmup_ratio=0.0)
    )


def grad_ascent_loss(trainer, model, inputs):
    from msa_bench.training.losses import mean_token_nll

    forget = inputs["forget"]
    trainer.count_tokens(forget)
    loss = -mean_token_nll(model, forget)
    trainer.check_finite(loss, "forget (negated nll)")
    return loss


@register_method
class GradAscent(UnlearningMethod):
    name = "grad_ascent"
    config_class = GradAscentConfig

    def produce(self, pipeline):
        return unlearn_with_loss(
            pipeline, self.name, self.config, grad_ascent_loss, needs_reference=False, use_retain=False
        )
