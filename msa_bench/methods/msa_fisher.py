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

After sequential requests 1..k the weight multiplies the cumulative forget vector Σ_{j≤k} τ_f^(j), and F_f is the
Fisher of θ_D on the union of requests 1..k's items (stage `fisher (request k)`, one per prefix), F_r that of the
single run's retain subset (stage `fisher_retain`, computed once): the weight of k requests is the one a single
request of those items would get (docs/sequential_requests.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from msa_bench.methods.msa import ModelStateArithmetic, MSAConfig
from msa_bench.methods.registry import SUMS, register_method
from msa_bench.methods.requests import request_stage

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
    # After k requests: the cumulative forget vector, weighted by the Fisher of the union of their items.
    sequential = SUMS

    def __init__(self, config):
        super().__init__(config)
        self._fisher = None  # the single run's Fisher stage artifact, once `prepare` has it
        self._fisher_folders = None  # {forget, retain} -> the folder of that Fisher the weighting reads
        self._fisher_key = None  # what names the Fishers in the arithmetic's cache key

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
        self._fisher_folders = self._fisher_key = None
        if self._fisher is not None:
            self._fisher_folders = {role: self._fisher.path / role for role in ("forget", "retain")}
            self._fisher_key = self._fisher.content_key

    def prepare_requests(self, pipeline, target, requests, retain):
        """F_f on the union of `requests`' items (a cached stage per prefix 1..k), F_r on the single run's retain
        subset (one cached stage for every k), both of θ_D, before any request's θ1 is trained."""
        self._fisher = self._fisher_folders = self._fisher_key = None
        if not self.weighted:
            return
        union = ([item for r in requests for item in r.items], "+".join(r.data_id for r in requests))
        fishers = {
            "forget": fisher_of(
                pipeline, target, {"forget": union}, self.config, request_stage("fisher", requests[-1].index)
            ),
            "retain": fisher_of(pipeline, target, {"retain": retain}, self.config, "fisher_retain"),
        }
        self._fisher_folders = {role: fisher.path / role for role, fisher in fishers.items()}
        self._fisher_key = {role: fisher.content_key for role, fisher in fishers.items()}

    def forget_vector_transforms(self, forget_terms, retain_terms):
        if self._fisher_folders is None or not forget_terms:
            return []
        from msa_bench.arithmetic.importance_weights import FisherWeighting

        return [FisherWeighting(forget_terms, self._fisher_folders, self.config.normalization)]

    def arithmetic_spec(self):
        cfg: MSAFisherConfig = self.config
        spec = {"importance": cfg.importance}
        if self._fisher_key is not None:  # the Fishers' keys hold their data and settings
            spec |= {"normalization": cfg.normalization, "fisher": self._fisher_key}
        return spec


def fisher_stage(pipeline, target, retain: tuple[list[dict], str], cfg: MSAFisherConfig):
    """The single run's cached `fisher` artifact: folders ``forget`` (the forget set) and ``retain`` (`retain`'s
    items), its cost recorded as stage ``fisher``."""
    roles = {"forget": (pipeline.forget_items(), pipeline.forget_split), "retain": retain}
    return fisher_of(pipeline, target, roles, cfg, "fisher")


def fisher_of(pipeline, target, roles: dict[str, tuple[list[dict], str]], cfg: MSAFisherConfig, stage: str):
    """A cached `fisher` artifact: for each role (forget, retain) given as (items, data id), a folder of that name
    holding a ``model.safetensors`` of float32 diagonal Fishers of `target` under its tensor names (parameters
    only); its cost recorded as `stage`. The key names each role's data, so one holding only F_f or F_r never
    shares an entry with the single run's, which holds both."""
    spec = (
        {
            "importance": "fisher",
            "model": target.key,
            "loss": "mean_token_nll",
            "batch_size": cfg.fisher_batch_size,
            **{role: data_id for role, (_, data_id) in roles.items()},
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
            pipeline.store.root,
            "the Fisher stage",
            stored_parameter_count(target.path),
            "float32",
            len(roles),
        )
        examples = {
            role: pipeline.training_examples(items, f"the Fisher's {role} data")
            for role, (items, _) in roles.items()
        }
        if cfg.fisher_max_items is not None:
            examples = {
                role: sample_examples(items, cfg.fisher_max_items, seed=pipeline.cfg.seed)
                for role, items in examples.items()
            }
        pad_token_id = pipeline.tokenizer().pad_token_id
        counts = {}
        with CostMeter(stage, device=pipeline.device) as meter:
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

    return pipeline.record_stage(stage, pipeline.store.get_or_build("fisher", spec, build))
