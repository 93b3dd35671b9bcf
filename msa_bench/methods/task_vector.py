"""Task arithmetic (Ilharco et al. 2023) as an unlearning baseline.

Fine-tune the final model θ_D further on the forget set to get θ_D'; the unlearned model is θ_D − α(θ_D' − θ_D).
This is MSA with θ0 = θ_D and β = 0, and shares its cached fine-tune when the recipes agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msa_bench.methods.arithmetic_output import combine_into_artifact
from msa_bench.methods.msa import check_coefficient, optional_recipe, vector_recipe
from msa_bench.methods.registry import SUMS, MethodConfig, UnlearningMethod, register_method
from msa_bench.methods.requests import request_stage


@dataclass
class TaskVectorConfig(MethodConfig):
    name: str = "task_vector"
    alpha: float = 1.0
    recipe: Any = None  # None: benchmark.target_recipe; else a TrainRecipe mapping

    def __post_init__(self):
        check_coefficient("method.alpha", self.alpha)
        self.recipe = optional_recipe("method.recipe", self.recipe)


@register_method
class TaskVector(UnlearningMethod):
    name = "task_vector"
    config_class = TaskVectorConfig
    sequential = SUMS

    def planned_stages(self) -> list[str]:
        cfg: TaskVectorConfig = self.config
        finetune = ["task vector (fine-tune θ_D on the forget set)"] if cfg.alpha != 0 else []
        return [*finetune, "arithmetic (task_vector)"]

    def produce(self, pipeline):
        cfg: TaskVectorConfig = self.config
        target = pipeline.target()
        terms = []
        if cfg.alpha != 0:
            finetuned = pipeline.finetune(
                "task_vector_finetune",
                target,
                pipeline.forget_items(),
                vector_recipe(cfg.recipe, pipeline),
                data_id=pipeline.forget_split,
            )
            terms.append((-cfg.alpha, finetuned, target))
        return combine_into_artifact(pipeline, "task_vector", target, terms)

    def produce_after_requests(self, pipeline, requests, previous):
        """θ_D − α Σ_{j≤k} (θ_D^(j) − θ_D), θ_D^(j) = θ_D fine-tuned on request j's items (its θ0 is θ_D)."""
        cfg: TaskVectorConfig = self.config
        target = pipeline.target()
        terms = []
        if cfg.alpha != 0:
            for request in requests:
                finetuned = pipeline.finetune(
                    request_stage("task_vector_finetune", request.index),
                    target,
                    request.items,
                    vector_recipe(cfg.recipe, pipeline),
                    data_id=request.data_id,
                )
                terms.append((-cfg.alpha, finetuned, target))
        return combine_into_artifact(
            pipeline, "task_vector", target, terms, stage=request_stage("arithmetic", requests[-1].index)
        )
