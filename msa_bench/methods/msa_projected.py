"""msa_projected: MSA with the forget vector's component along a direction removed.

With τ_f = θ1 − θ0, τ_r = θ2 − θ0 and a direction d, the unlearned model is θ_D − α·(τ_f − c·d) + β·τ_r, where
c = ⟨τ_f, d⟩ / ‖d‖² makes τ_f − c·d orthogonal to d (c = 0 where d = 0). `method.project_off` picks d:

- ``retain`` (the default): d = τ_r, the retain vector itself.
- ``heldout``: d = τ_h = θh − θ0, the "format vector": θ0 fine-tuned, with the retain vector's recipe and on as many
  items as θ2, on held-out QA of the forget set's format about entities neither forgotten nor evaluated
  (Benchmark.heldout_qa; docs/arithmetic_methods.md says which data each benchmark gives). θh is a cached stage
  (`format_vector`, its cost in results.json), trained only then. The retain term β·τ_r is added as in MSA.

`method.projection` says where c is computed:

- ``per_tensor`` (the default): from each tensor's own entries; each tensor's forget difference is made orthogonal
  to its own d. One extra pass over each tensor's rows, just before it is written.
- ``global``: one c for the whole model, from the inner products over every floating tensor (a first streaming pass
  over the model, accumulated in float64, before the combining pass).
- ``none``: c = 0, which is `msa`, bit for bit.

Why: τ_f also carries what every QA fine-tune learns (the answer templates, the format), and subtracting it damages
the retain set. The part of τ_f that τ_r shares is the best estimate of that common part available from the cached
vectors, but τ_r also holds the retain facts; τ_h learns the format from QA that holds neither the retain nor the
forget facts. Projecting off τ_r needs θ2, so β must then be > 0 unless projection is none.

After sequential requests τ_f is the sum of the requests' forget vectors and τ_r the sum of the retain vectors
(one, unless `method.retain_per_request`); projecting the sum is, by linearity, the sum of the request vectors each
projected off the same τ_r (docs/sequential_requests.md). Off the format vector, sequential requests are refused
before anything trains: the sequential arithmetic reads no extra vector yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from msa_bench.errors import ConfigError
from msa_bench.methods.msa import ModelStateArithmetic, MSAConfig, require_retain_vector, vector_recipe
from msa_bench.methods.registry import SUMS, register_method

PROJECTIONS = ("per_tensor", "global", "none")
PROJECT_OFF = ("retain", "heldout")


@dataclass
class MSAProjectedConfig(MSAConfig):
    name: str = "msa_projected"
    projection: str = "per_tensor"
    project_off: str = "retain"

    def __post_init__(self):
        super().__post_init__()
        if self.projection not in PROJECTIONS:
            raise ValueError(f"method.projection={self.projection!r} must be one of {', '.join(PROJECTIONS)}")
        if self.project_off not in PROJECT_OFF:
            raise ValueError(
                f"method.project_off={self.project_off!r} must be one of {', '.join(PROJECT_OFF)}"
            )
        if self.project_off == "retain":
            require_retain_vector("projection", self.projection, self.beta, "projects the forget vector off")
        elif self.projection == "none":
            raise ValueError(
                "method.project_off=heldout names the vector the forget vector is projected off, and "
                "method.projection=none projects nothing; set method.projection=per_tensor or global, or "
                "method.project_off=retain"
            )


@register_method
class MSAProjected(ModelStateArithmetic):
    name = "msa_projected"
    config_class = MSAProjectedConfig
    # After k requests the cumulative forget vector is projected (docs/sequential_requests.md).
    sequential = SUMS

    def __init__(self, config):
        super().__init__(config)
        self._format_data: tuple[list[dict], str] | None = None  # the held-out items and their id, once drawn

    @property
    def uses_format_vector(self) -> bool:
        """Whether θh is trained: only when the projection is off it and there is a forget vector to project."""
        cfg: MSAProjectedConfig = self.config
        return cfg.project_off == "heldout" and cfg.projection != "none" and cfg.alpha != 0

    def planned_stages(self) -> list[str]:
        stages = super().planned_stages()
        if self.uses_format_vector:
            stages.insert(-1, "format vector θh (fine-tune θ0 on held-out QA of the same format)")
        return stages

    def preflight(self, pipeline):
        # The held-out data exists and is large enough: a benchmark without it refuses before any training.
        if self.uses_format_vector:
            requests = pipeline.cfg.benchmark.requests or 1
            if requests > 1:
                raise ConfigError(
                    f"method=msa_projected with method.project_off=heldout cannot unlearn sequential deletion "
                    f"requests (benchmark.requests={requests}): the sequential arithmetic does not read the "
                    "format vector yet; use method.project_off=retain or benchmark.requests=null"
                )
            self.format_data(pipeline)

    def format_data(self, pipeline) -> tuple[list[dict], str]:
        """θh's items and data id: as many held-out items as the retain subset θ2 trains on, drawn with its seed
        and draw (the subset is drawn for its size even when β = 0 leaves θ2 untrained)."""
        if self._format_data is None:
            cfg: MSAProjectedConfig = self.config
            retain_items, _ = self.retain_data(pipeline)
            self._format_data = pipeline.heldout_subset(len(retain_items), cfg.retain_seed, cfg.retain_draw)
        return self._format_data

    def observed_vectors(self, pipeline, theta0):
        if not self.uses_format_vector:
            return []
        items, data_id = self.format_data(pipeline)
        recipe = vector_recipe(self.config.retain_recipe, pipeline)
        return [pipeline.finetune("format_vector", theta0, items, recipe, data_id=data_id)]

    def forget_vector_transforms(self, forget_terms, retain_terms):
        from msa_bench.arithmetic.difference_transforms import ProjectOffRetain

        cfg: MSAProjectedConfig = self.config
        if cfg.projection == "none" or not forget_terms:
            return []
        if cfg.project_off == "heldout":
            # The format vector's term follows θ1's and θ2's (ModelStateArithmetic.observed_vectors); single runs
            # only (preflight refuses sequential requests with it).
            format_term = max((*forget_terms, *retain_terms)) + 1
            return [ProjectOffRetain(forget_terms, format_term, cfg.projection)]
        if not retain_terms:
            return []
        return [ProjectOffRetain(forget_terms, retain_terms, cfg.projection)]

    def arithmetic_spec(self):
        spec = {"projection": self.config.projection}
        if self.config.project_off != "retain":  # the default's key stays as it was before the option existed
            spec["project_off"] = self.config.project_off
        return spec
