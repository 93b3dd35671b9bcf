"""msa_fisher: MSA with the forget vector scaled per parameter by importance, in the spirit of PerTA (arXiv 2601.22030).

With τ_f = θ1 − θ0 and τ_r = θ2 − θ0, the unlearned model is θ_D − α·(w ⊙ τ_f) + β·τ_r, where, entry by entry,

    r = F_f / (F_f + F_r)   (1/2 where both are 0),      w = r / mean(r)

F_f and F_r are the diagonal empirical Fishers of the target θ_D (the model being edited) on the forget set and on the
retain subset msa draws for θ2 (the same items, also drawn when β = 0): the mean over batches of
`method.fisher_batch_size` examples of the squared gradient of the batch's mean token NLL (training/fisher.py).
The mean of r is over each tensor (`method.normalization=per_tensor`) or over the whole model (`global`), so that w
averages 1 and α keeps the scale it has in msa. Where the forget data moves the loss and the retain data does not,
w is large; where only the retain data does, w is near 0 and the entry is not negated.

PerTA's paper describes weights from gradients or the diagonal Fisher that "quantify the relative importance of each
parameter for forgetting versus retention"; its exact formula could not be read here, so this ratio and its
normalisation are this module's own design, not PerTA's (docs/arithmetic_methods.md).

The two Fishers are one cached stage (`fisher`, its cost in results.json), keyed by the target, the data and the
settings; the arithmetic streams them chunk by chunk beside the checkpoints (arithmetic/importance_weights.py).
`method.importance=none` is msa, bit for bit, and trains or computes nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from msa_bench.methods.msa import ModelStateArithmetic, MSAConfig
from msa_bench.methods.registry import register_method

IMPORTANCES = ("fisher", "none")
NORMALIZATIONS = ("per_tensor", "global")  # as in arithmetic/importance_weights.py (which imports torch)


def _positive_int(key: str, value, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "an integer >= 1 or null (all items)" if nullable else "an integer >= 1"
        raise ValueError(f"{key}={value!r} must be {allowed}")


@dataclass
class MSAFisherConfig(MSAConfig):
    name: str = "msa_fisher"
    importance: str = "fisher"  # fisher | none (msa)
    normalization: str = "per_tensor"  # per_tensor | global: where w = r / mean(r) averages 1
    # Examples per gradient (1: the per-example empirical Fisher; larger is cheaper, and averages inside a batch).
    fisher_batch_size: int = 1
    # At most this many examples of each of the forget and retain data (a seeded sample); null: all of them.
    fisher_max_items: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.importance not in IMPORTANCES:
            raise ValueError(f"method.importance={self.importance!r} must be one of {', '.join(IMPORTANCES)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"method.normalization={self.normalization!r} must be one of {', '.join(NORMALIZATIONS)}"
            )
        _positive_int("method.fisher_batch_size", self.fisher_batch_size)
        _positive_int("method.fisher_max_items", self.fisher_max_items, nullable=True)
        if self.importance != "none" and self.alpha == 0:
            raise ValueError(
                f"method.importance={self.importance} weights the forget vector θ1 − θ0, which method.alpha=0 "
                "leaves out; set method.alpha > 0 or method.importance=none"
            )


@register_method
class MSAFisher(ModelStateArithmetic):
    name = "msa_fisher"
    config_class = MSAFisherConfig
    # Not (yet) sequential: validate_config refuses benchmark.requests > 1 for it, saying why.
    sequential = None
    sequential_refusal = "its Fisher importances are estimated on the whole forget set; per-request importances are not implemented yet"

    def __init__(self, config):
        super().__init__(config)
        self._fisher = None  # the Fisher stage's artifact, once `prepare` has it

    @property
    def weighted(self) -> bool:
        return self.config.importance != "none"

    def planned_stages(self) -> list[str]:
        stages = super().planned_stages()
        if self.weighted:
            stages.insert(0, "importance (diagonal Fisher of θ_D on the forget set and the retain subset)")
        return stages

    def reads_retain_data(self) -> bool:
        return self.weighted

    def prepare(self, pipeline, target, retain):
        self._fisher = fisher_stage(pipeline, target, retain, self.config) if self.weighted else None

    def forget_vector_transforms(self, forget_term, retain_term):
        if self._fisher is None or forget_term is None:
            return []
        from msa_bench.arithmetic.importance_weights import ROLES, FisherWeighting

        folders = {role: self._fisher.path / role for role in ROLES}
        return [FisherWeighting(forget_term, folders, self.config.normalization)]

    def arithmetic_spec(self):
        cfg: MSAFisherConfig = self.config
        spec = {"importance": cfg.importance}
        if self._fisher is not None:  # the Fisher's key holds its data and settings
            spec |= {"normalization": cfg.normalization, "fisher": self._fisher.content_key}
        return spec


def fisher_stage(pipeline, target, retain: tuple[list[dict], str], cfg: MSAFisherConfig):
    """The cached `fisher` artifact: folders ``forget`` and ``retain``, each a ``model.safetensors`` of float32
    diagonal Fishers of `target` under its tensor names (parameters only), its cost recorded as stage ``fisher``."""
    retain_items, retain_id = retain
    spec = (
        {
            "importance": "fisher",
            "model": target.key,
            "loss": "mean_token_nll",
            "batch_size": cfg.fisher_batch_size,
            "forget": pipeline.forget_split,
            "retain": retain_id,
            "dtype": pipeline.cfg.model.dtype,
        }
        | pipeline.data_spec()
        | pipeline.encoding_spec()
    )
    if cfg.fisher_max_items is not None:  # only then: the sample's seed matters
        spec |= {"max_items": cfg.fisher_max_items, "seed": pipeline.cfg.seed}

    def build(out: Path) -> dict:
        from msa_bench.arithmetic.checkpoint_files import read_layout
        from msa_bench.models.build import count_parameters, load_model, trusts_remote_code
        from msa_bench.pipeline.cost import CostMeter
        from msa_bench.pipeline.disk_space import require_space_for_states, stored_parameter_count
        from msa_bench.training.data import sample_examples
        from msa_bench.training.fisher import diagonal_fisher, parameters_by_name, write_fisher

        require_space_for_states(
            pipeline.store.root, "the Fisher stage", stored_parameter_count(target.path), "float32", 2
        )
        examples = {
            "forget": pipeline.training_examples(pipeline.forget_items(), "the Fisher's forget data"),
            "retain": pipeline.training_examples(retain_items, "the Fisher's retain data"),
        }
        if cfg.fisher_max_items is not None:
            examples = {
                role: sample_examples(items, cfg.fisher_max_items, seed=pipeline.cfg.seed)
                for role, items in examples.items()
            }
        pad_token_id = pipeline.tokenizer().pad_token_id
        counts = {}
        with CostMeter("fisher", device=pipeline.device) as meter:
            model = load_model(
                target.path,
                pipeline.device,
                pipeline.cfg.model.dtype,
                trust_remote_code=trusts_remote_code(pipeline.cfg.model),
            )
            parameters = parameters_by_name(model, read_layout(target.path).tensors)
            for role, role_examples in examples.items():  # one pass each; one accumulator alive at a time
                fisher, tokens = diagonal_fisher(
                    model,
                    role_examples,
                    parameters,
                    batch_size=cfg.fisher_batch_size,
                    pad_token_id=pad_token_id,
                )
                (out / role).mkdir()
                write_fisher(out / role / "model.safetensors", fisher)
                del fisher
                # A forward and a backward pass per token: the training count (6·N), less the optimizer step.
                meter.add_tokens(tokens, count_parameters(model), training=True)
                batches = math.ceil(len(role_examples) / cfg.fisher_batch_size)
                counts[role] = {"examples": len(role_examples), "batches": batches, "tokens": tokens}
        return {"cost": meter.cost.to_dict(), "fisher": counts}

    return pipeline.record_stage("fisher", pipeline.store.get_or_build("fisher", spec, build))
