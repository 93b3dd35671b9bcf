"""UNDIAL (Dong et al. 2024): unlearning by self-distillation with adjusted logits, the frozen θ_D as the teacher.

At every answer position t of a forget sequence (a position whose next token y_t is labelled), the target is the
teacher's next-token distribution with the true token's logit lowered by β:

  q_t = softmax(z_θD(x_<t) − β · onehot(y_t))
  forget term = mean over answer positions of  −Σ_v q_t(v) · log p_θ(v | x_<t)   (cross-entropy; gradient of KL(q_t ‖ p_θ))
  loss = forget_weight · forget term + retain_weight · retain term (NLL, or KL to θ_D; 0 by default, as in the paper)

Unlike gradient ascent's, the loss is bounded below (by the target's entropy): the target is a fixed distribution.
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
class UNDIALConfig(LossMethodConfig):
    name: str = "undial"
    beta: float = 10.0  # how far the true token's logit is lowered in the teacher's distribution
    recipe: TrainRecipe = default_recipe(epochs=10.0, learning_rate=1e-4, batch_size=16, warmup_ratio=0.0)

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(
                f"method.beta={self.beta} must be > 0 (β = 0 makes the target the teacher itself)"
            )
        if self.precompute_reference:
            raise ValueError(
                "method.precompute_reference is not supported by undial (it needs the teacher's logits at every "
                "answer position, not one value per sequence)"
            )


def undial_objective(trainer, model, inputs):
    from msa_bench.training.losses import undial_loss

    cfg: UNDIALConfig = trainer.method_config
    forget = inputs["forget"]
    trainer.count_tokens(forget)
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    teacher_logits = trainer.reference_outputs(forget).logits.to(logits.device)
    loss = cfg.forget_weight * undial_loss(logits, teacher_logits, forget["labels"], cfg.beta)
    trainer.check_finite(loss, "forget (undial)")
    if cfg.retain_weight > 0 and "retain" in inputs:
        loss = loss + cfg.retain_weight * trainer.retain_loss(model, inputs["retain"])
    return loss


@register_method
class UNDIAL(LossBasedMethod):
    name = "undial"
    config_class = UNDIALConfig

    def produce(self, pipeline):
        return unlearn_with_loss(
            pipeline, self.name, self.config, undial_objective, needs_reference=True, use_retain=True
        )
