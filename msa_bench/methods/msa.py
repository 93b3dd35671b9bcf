"""Model State Arithmetic (Rezaei, Saberi et al., arXiv 2506.20941).

θ0 is a model state saved before the forget set was seen (`checkpoint=`). Fine-tune θ0 on the forget set to get θ1
and on a small retain set to get θ2; the unlearned model is θ_D − α(θ1 − θ0) + β(θ2 − θ0). With β = 0 the method is
forget-only and θ2 is never trained; with θ0 = θ_D (`checkpoint=target`) it is task arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.arithmetic_output import combine_into_artifact
from msa_bench.methods.registry import MethodConfig, UnlearningMethod, register_method

# The vectors' default recipe is the one that made the target (conf/benchmark), as in the paper's code, which uses
# one fine-tuning recipe for θ1, θ2 and θ_D.
VECTOR_RECIPE = dict(epochs=10.0, learning_rate=1e-3, batch_size=16)


def check_coefficient(key: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}={value} must be a finite number >= 0 (the formula already carries the sign)")


@dataclass
class MSAConfig(MethodConfig):
    name: str = "msa"
    alpha: float = 1.0
    beta: float = 1.0
    forget_recipe: TrainRecipe = field(default_factory=lambda: TrainRecipe(**VECTOR_RECIPE))
    retain_recipe: TrainRecipe = field(default_factory=lambda: TrainRecipe(**VECTOR_RECIPE))
    # None: a random retain subset the size of the forget set, as in the paper.
    retain_size: int | None = None
    retain_seed: int = 0

    def __post_init__(self):
        check_coefficient("method.alpha", self.alpha)
        check_coefficient("method.beta", self.beta)


@register_method
class ModelStateArithmetic(UnlearningMethod):
    name = "msa"
    config_class = MSAConfig

    def produce(self, pipeline):
        cfg: MSAConfig = self.config
        target = pipeline.target()
        theta0 = pipeline.checkpoint()
        terms = []
        if cfg.alpha != 0:
            theta1 = pipeline.finetune(
                "forget_vector",
                theta0,
                pipeline.forget_items(),
                cfg.forget_recipe,
                data_id=pipeline.forget_split,
            )
            terms.append((-cfg.alpha, theta1, theta0))
        if cfg.beta != 0:
            retain_items, data_id = pipeline.retain_subset(cfg.retain_size, cfg.retain_seed)
            theta2 = pipeline.finetune(
                "retain_vector", theta0, retain_items, cfg.retain_recipe, data_id=data_id
            )
            terms.append((cfg.beta, theta2, theta0))
        return combine_into_artifact(pipeline, "msa", target, terms)
