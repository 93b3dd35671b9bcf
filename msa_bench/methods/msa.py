"""Model State Arithmetic (Rezaei, Saberi et al., arXiv 2506.20941).

θ0 is a model state saved before the forget set was seen (`checkpoint=`). Fine-tune θ0 on the forget set to get θ1
and on a small retain set to get θ2; the unlearned model is θ_D − α(θ1 − θ0) + β(θ2 − θ0). With β = 0 the method is
forget-only and θ2 is never trained; with θ0 = θ_D (`checkpoint=target`) it is task arithmetic.

`method.layer_scale` (methods/layer_scale.py) multiplies α per tensor by a factor that depends on the tensor's depth
or name; the default, uniform, is the paper's formula. msa_ties and msa_projected (their own modules) subclass this
method and change the forget vector θ1 − θ0 before the sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from msa_bench.config.schema import TrainRecipe
from msa_bench.data.retain_draw import RETAIN_DRAWS
from msa_bench.methods.arithmetic_output import combine_into_artifact
from msa_bench.methods.layer_scale import (
    check_layer_scale,
    is_uniform,
    layer_factors,
    layer_scale_spec,
    pattern_matches,
)
from msa_bench.methods.registry import SUMS, MethodConfig, UnlearningMethod, register_method
from msa_bench.methods.requests import request_stage


def optional_recipe(key: str, value: Any) -> TrainRecipe | None:
    """A recipe given as a mapping (`method.forget_recipe={epochs:5}`), or None to inherit the target's.

    Typed Any in the schema because Hydra cannot merge an override into a typed dataclass field that is null."""
    if value is None or isinstance(value, TrainRecipe):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a recipe mapping such as {{epochs: 5}} or null, got {value!r}")
    known = {f.name for f in fields(TrainRecipe)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{key} has unknown field(s) {unknown}; valid fields: {sorted(known)}")
    return TrainRecipe(**value)


def vector_recipe(recipe: TrainRecipe | None, pipeline) -> TrainRecipe:
    """A vector's recipe; None means the one that made the target (benchmark.target_recipe), as in the paper's
    code, which uses one fine-tuning recipe for θ1, θ2 and θ_D."""
    return recipe if recipe is not None else pipeline.cfg.benchmark.target_recipe


def check_coefficient(key: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}={value} must be a finite number >= 0 (the formula already carries the sign)")


def require_retain_vector(setting: str, value: str, beta: float, does: str) -> None:
    """A variant's setting that reads θ2 − θ0 (msa_ties' election, msa_projected's projection) refuses β = 0, which
    leaves θ2 untrained; `does` says what the setting does with it."""
    if value != "none" and beta == 0:
        raise ValueError(
            f"method.{setting}={value} {does} the retain vector θ2 − θ0, which method.beta=0 leaves untrained; "
            f"set method.beta > 0 or method.{setting}=none"
        )


@dataclass
class MSAConfig(MethodConfig):
    name: str = "msa"
    alpha: float = 1.0
    beta: float = 1.0
    # None: benchmark.target_recipe; else a TrainRecipe mapping (see optional_recipe).
    forget_recipe: Any = None
    retain_recipe: Any = None
    # The retain vector's data (msa_bench/data/retain_draw.py). The pool: the benchmark's retain pool, or the named
    # split `retain_split` of its data folder (TOFU: e.g. retain90). Its size: retain_size items, or
    # int(pool * retain_fraction); None for both: the size of the forget set. retain_draw: sample (Python's
    # random.sample) or shuffle (the paper's code: datasets' shuffle(seed), then the first items).
    retain_size: int | None = None
    retain_fraction: float | None = None
    retain_split: str | None = None
    retain_draw: str = "sample"
    retain_seed: int = 0
    # uniform | linear | linear_decreasing | {regex: factor}: a per-tensor factor on α (methods/layer_scale.py). Typed
    # Any so that it can hold a name or a mapping.
    layer_scale: Any = "uniform"
    # Sequential requests (benchmark.requests > 1): false applies β(θ2 − θ0) once, whatever the number of requests;
    # true adds one retain vector per request, each on its own retain draw (seed retain_seed + k − 1, sized like the
    # request unless retain_size/retain_fraction say otherwise). docs/sequential_requests.md says why once is the
    # default.
    retain_per_request: bool = False

    def __post_init__(self):
        check_layer_scale(self.layer_scale)
        check_coefficient("method.alpha", self.alpha)
        check_coefficient("method.beta", self.beta)
        self.forget_recipe = optional_recipe("method.forget_recipe", self.forget_recipe)
        self.retain_recipe = optional_recipe("method.retain_recipe", self.retain_recipe)
        if self.retain_size is not None and self.retain_fraction is not None:
            raise ValueError(
                f"method.retain_size={self.retain_size} and method.retain_fraction={self.retain_fraction} both "
                "size the retain subset; set one of them to null"
            )
        if self.retain_fraction is not None and not 0 < self.retain_fraction <= 1:
            raise ValueError(f"method.retain_fraction={self.retain_fraction} must be in (0, 1]")
        if self.retain_draw not in RETAIN_DRAWS:
            raise ValueError(
                f"method.retain_draw={self.retain_draw!r} must be one of {', '.join(RETAIN_DRAWS)}"
            )


@register_method
class ModelStateArithmetic(UnlearningMethod):
    name = "msa"
    config_class = MSAConfig
    sequential = SUMS

    def planned_stages(self) -> list[str]:
        cfg: MSAConfig = self.config
        vectors = [
            *(["forget vector θ1 (fine-tune θ0 on the forget set)"] if cfg.alpha != 0 else []),
            *(["retain vector θ2 (fine-tune θ0 on retain data)"] if cfg.beta != 0 else []),
        ]
        return [*vectors, f"arithmetic ({self.name})"]

    def retain_data(self, pipeline) -> tuple[list[dict], str]:
        """The single run's retain subset (items, data id) as the method's retain settings draw it."""
        cfg: MSAConfig = self.config
        return pipeline.retain_subset(
            cfg.retain_size,
            cfg.retain_seed,
            fraction=cfg.retain_fraction,
            split=cfg.retain_split,
            draw=cfg.retain_draw,
        )

    def produce(self, pipeline):
        cfg: MSAConfig = self.config
        # The retain subset is drawn first, so that a bad retain_split or size fails before anything is trained.
        retain = None
        if cfg.beta != 0 or self.reads_retain_data():
            retain = self.retain_data(pipeline)
        target = pipeline.target()
        # Checked against the target's tensor names before θ1 and θ2 are trained.
        transforms = self.layer_scale_transforms(target, forget_term=0)
        self.prepare(pipeline, target, retain)
        theta0 = pipeline.checkpoint()
        terms = []
        if cfg.alpha != 0:
            theta1 = pipeline.finetune(
                "forget_vector",
                theta0,
                pipeline.forget_items(),
                vector_recipe(cfg.forget_recipe, pipeline),
                data_id=pipeline.forget_split,
            )
            terms.append((-cfg.alpha, theta1, theta0))
        if cfg.beta != 0:
            retain_items, data_id = retain
            theta2 = pipeline.finetune(
                "retain_vector",
                theta0,
                retain_items,
                vector_recipe(cfg.retain_recipe, pipeline),
                data_id=data_id,
            )
            terms.append((cfg.beta, theta2, theta0))
        forget_terms = (0,) if cfg.alpha != 0 else ()
        retain_terms = (len(terms) - 1,) if cfg.beta != 0 else ()
        terms += [(0.0, vector, theta0) for vector in self.observed_vectors(pipeline, theta0)]
        # The variant's own change of θ1 − θ0 comes first, then the layer scale of its coefficient.
        transforms = [*self.forget_vector_transforms(forget_terms, retain_terms), *transforms]
        spec = self.arithmetic_spec() | self.layer_scale_cache_spec()
        return combine_into_artifact(
            pipeline,
            self.name,
            target,
            terms,
            transforms=transforms,
            spec=spec,
        )

    def produce_after_requests(self, pipeline, requests, previous):
        """θ_D − α Σ_{j≤k} (θ1^(j) − θ0) + β(θ2 − θ0), θ1^(j) = θ0 fine-tuned on request j's items; the retain term
        once (θ2 exactly the single-request run's) or, with method.retain_per_request, one per request. `previous`
        is not needed: every request's vector is a cached fine-tune of the same θ0. A variant's change applies to
        the cumulative forget vector Σ_{j≤k} (θ1^(j) − θ0) (difference_transforms.py: its statistics are those of
        the sum), so that one request is the variant's single run and step k depends only on requests 1..k."""
        cfg: MSAConfig = self.config
        retains = []  # (the request the retain vector belongs to, None when applied once; items; data id)
        if cfg.beta != 0:
            for request in requests if cfg.retain_per_request else [None]:
                per_request = request is not None
                size = cfg.retain_size
                if per_request and size is None and cfg.retain_fraction is None:
                    size = len(
                        request.items
                    )  # a retain draw the size of the request, as the default is the forget set's
                seed = cfg.retain_seed + (request.index - 1 if per_request else 0)
                drawn = pipeline.retain_subset(
                    size, seed, fraction=cfg.retain_fraction, split=cfg.retain_split, draw=cfg.retain_draw
                )
                retains.append((request.index if per_request else None, *drawn))
        once = None  # the single run's retain subset, for a variant that reads it whatever retain_per_request says
        if self.reads_retain_data():
            once = self.retain_data(pipeline)
        target = pipeline.target()
        # Checked against the target's tensor names before any θ1 is trained; it multiplies every request's
        # forget coefficient alike.
        factors = self.layer_scale_factors(target)
        self.prepare_requests(pipeline, target, requests, once)
        theta0 = pipeline.checkpoint()
        recipe = vector_recipe(cfg.forget_recipe, pipeline)
        terms = []
        if cfg.alpha != 0:
            for request in requests:
                stage = request_stage("forget_vector", request.index)
                theta1 = pipeline.finetune(stage, theta0, request.items, recipe, data_id=request.data_id)
                terms.append((-cfg.alpha, theta1, theta0))
        forget_terms = tuple(range(len(terms)))
        scales = [] if factors is None else [scale_coefficient(term, factors) for term in forget_terms]
        for index, items, data_id in retains:
            stage = "retain_vector" if index is None else request_stage("retain_vector", index)
            theta2 = pipeline.finetune(
                stage, theta0, items, vector_recipe(cfg.retain_recipe, pipeline), data_id=data_id
            )
            terms.append((cfg.beta, theta2, theta0))
        retain_terms = tuple(range(len(forget_terms), len(terms)))
        transforms = [*self.forget_vector_transforms(forget_terms, retain_terms), *scales]
        spec = self.arithmetic_spec() | self.layer_scale_cache_spec()
        return combine_into_artifact(
            pipeline,
            self.name,
            target,
            terms,
            transforms=transforms,
            spec=spec,
            stage=request_stage("arithmetic", requests[-1].index),
        )

    def layer_scale_cache_spec(self) -> dict:
        """The layer scale's part of the arithmetic's cache key: none when uniform or when there is no forget term
        (α = 0), so plain msa keeps the keys it always had."""
        cfg: MSAConfig = self.config
        if is_uniform(cfg.layer_scale) or cfg.alpha == 0:
            return {}
        return {"layer_scale": layer_scale_spec(cfg.layer_scale)}

    def layer_scale_factors(self, target) -> tuple[dict[str, float], dict[str, int]] | None:
        """The layer scale's factor of each tensor of `target` (ConfigError when it fits none) and how many tensors
        each regex of a mapping matched; None when uniform."""
        cfg: MSAConfig = self.config
        if is_uniform(cfg.layer_scale) or cfg.alpha == 0:
            return None
        from msa_bench.arithmetic.checkpoint_files import read_layout

        names = list(read_layout(target.path).tensors)
        return layer_factors(cfg.layer_scale, names), pattern_matches(cfg.layer_scale, names)

    def layer_scale_transforms(self, target, forget_term: int) -> list:
        """The layer scale as a transform of the forget term's coefficient; none when uniform (plain MSA)."""
        factors = self.layer_scale_factors(target)
        return [] if factors is None else [scale_coefficient(forget_term, factors)]

    def reads_retain_data(self) -> bool:
        """Whether the variant reads the retain subset even when β = 0 leaves θ2 untrained (msa_fisher's
        importances); plain MSA draws it only for θ2."""
        return False

    def prepare(self, pipeline, target, retain: tuple[list[dict], str] | None) -> None:
        """A variant's own stage on the target θ_D, before θ1 and θ2 (msa_fisher's importances): given the
        retain subset (items and data id) when β > 0 or `reads_retain_data`; plain MSA has none."""

    def prepare_requests(self, pipeline, target, requests, retain: tuple[list[dict], str] | None) -> None:
        """`prepare` for the model after `requests` (1..k), before any of their θ1 is trained: given the single
        run's retain subset when `reads_retain_data`; plain MSA has none."""

    def observed_vectors(self, pipeline, theta0) -> list:
        """Fine-tunes of θ0 that a variant's transform reads but does not add (msa_projected's format vector):
        each joins the sum as a term (coefficient 0; its key joins the arithmetic's), after θ1's and θ2's terms,
        so the first is term (α ≠ 0) + (β ≠ 0). Plain MSA has none; the sequential path reads none."""
        return []

    def forget_vector_transforms(self, forget_terms: tuple[int, ...], retain_terms: tuple[int, ...]) -> list:
        """What a variant does to θ1 − θ0 before the sum: the terms `forget_terms` (one; after sequential requests
        one per request, whose sum it transforms; none when α = 0), given θ2 − θ0 (the terms `retain_terms`, none
        when β = 0); plain MSA does nothing."""
        return []

    def arithmetic_spec(self) -> dict:
        """The variant's settings that enter the arithmetic's cache key; plain MSA has none."""
        return {}


def scale_coefficient(term: int, factors: tuple[dict[str, float], dict[str, int]]):
    from msa_bench.arithmetic.difference_transforms import ScaleCoefficient

    return ScaleCoefficient(term, *factors)
