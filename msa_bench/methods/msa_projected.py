"""msa_projected: MSA with the forget vector's component along the retain vector removed.

With τ_f = θ1 − θ0 and τ_r = θ2 − θ0, the unlearned model is θ_D − α·(τ_f − c·τ_r) + β·τ_r, where
c = ⟨τ_f, τ_r⟩ / ‖τ_r‖² makes τ_f − c·τ_r orthogonal to τ_r (c = 0 where τ_r = 0). `method.projection`:

- ``per_tensor`` (the default): c is computed per tensor, from that tensor's entries; each tensor's forget
  difference is made orthogonal to its own retain difference. One extra pass over each tensor's rows, just before
  it is written.
- ``global``: one c for the whole model, from the inner products over every floating tensor (a first streaming pass
  over the model, accumulated in float64, before the combining pass).
- ``none``: c = 0, which is `msa`, bit for bit.

Why: τ_f also carries what every QA fine-tune learns (the answer templates, the format), and subtracting it damages
the retain set. The part of τ_f that τ_r shares is the best estimate of that common part available from the cached
vectors. The projection needs τ_r, so β must be > 0 unless projection is none.

After sequential requests τ_f is the sum of the requests' forget vectors and τ_r the sum of the retain vectors
(one, unless `method.retain_per_request`); projecting the sum is, by linearity, the sum of the request vectors each
projected off the same τ_r (docs/sequential_requests.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from msa_bench.methods.msa import ModelStateArithmetic, MSAConfig, require_retain_vector
from msa_bench.methods.registry import SUMS, register_method

PROJECTIONS = ("per_tensor", "global", "none")


@dataclass
class MSAProjectedConfig(MSAConfig):
    name: str = "msa_projected"
    projection: str = "per_tensor"

    def __post_init__(self):
        super().__post_init__()
        if self.projection not in PROJECTIONS:
            raise ValueError(f"method.projection={self.projection!r} must be one of {', '.join(PROJECTIONS)}")
        require_retain_vector("projection", self.projection, self.beta, "projects the forget vector off")


@register_method
class MSAProjected(ModelStateArithmetic):
    name = "msa_projected"
    config_class = MSAProjectedConfig
    # After k requests the cumulative forget vector is projected (docs/sequential_requests.md).
    sequential = SUMS

    def forget_vector_transforms(self, forget_terms, retain_terms):
        from msa_bench.arithmetic.difference_transforms import ProjectOffRetain

        cfg: MSAProjectedConfig = self.config
        if cfg.projection == "none" or not forget_terms or not retain_terms:
            return []
        return [ProjectOffRetain(forget_terms, retain_terms, cfg.projection)]

    def arithmetic_spec(self):
        return {"projection": self.config.projection}
