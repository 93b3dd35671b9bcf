"""msa_ties: MSA with a TIES-style trim and sign election of the forget vector (TIES-Merging, Yadav et al. 2023).

With τ_f = θ1 − θ0 and τ_r = θ2 − θ0, the unlearned model is θ_D − α·m⊙τ_f + β·τ_r, where the mask m keeps:

1. **Trim** (`method.density` = d in (0, 1]): per tensor of n values, the entries of τ_f whose magnitude is at least
   the k-th largest, k = ⌈d·n⌉ (ties at the threshold are all kept, as in TIES' code). TIES trims each task vector
   to its top-k% over the whole flattened model; here each tensor keeps its own top d, because a tensor's threshold
   needs only that tensor (one pass over its rows before it is written), while a global threshold would need every
   magnitude of the model at once. Per tensor also keeps every tensor's largest changes, whatever its scale.
2. **Elect** (`method.election`):
   - ``retain`` (the default): drop the kept entries of τ_f whose sign equals τ_r's (τ_r ≠ 0). Subtracting α·τ_f
     negates τ_f; where the retain fine-tune moved a weight the same way, that change is something the retain
     knowledge needs too (the answer templates and format every QA fine-tune learns), so it is not negated. Entries
     where τ_r is 0 or of the other sign are kept: negating them moves away from the forget set and, if anything,
     toward the retain set.
   - ``mass``: TIES' own election applied to the two signed terms −α·τ̂_f and β·τ_r: an entry's elected sign is that
     of their sum (the sign with the larger total mass), and the entries of either term with the other sign are
     dropped ("disjoint merge"). TIES then averages the agreeing entries; here they are summed with their
     coefficients, as MSA sums its terms, so that α and β keep their meaning.
   - ``none``: trim only.

The retain vector is never trimmed. With density 1 and election none this is `msa`, bit for bit (same arithmetic;
the cache key differs only by the method's name and these settings). The election needs τ_r, so β must be > 0.
`method.layer_scale` applies on top, to the coefficient of the trimmed forget vector (the mass election weighs
−α·τ̂_f before that factor). After sequential requests τ_f is the sum of the requests' forget vectors, trimmed and
elected as one (docs/sequential_requests.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from msa_bench.methods.msa import ModelStateArithmetic, MSAConfig, require_retain_vector
from msa_bench.methods.registry import SUMS, register_method

ELECTIONS = ("retain", "mass", "none")  # as in arithmetic/difference_transforms.py (which imports torch)


@dataclass
class MSATiesConfig(MSAConfig):
    name: str = "msa_ties"
    density: float = (
        0.2  # the fraction of each tensor's τ_f entries kept (largest magnitudes); TIES' default k=20%
    )
    election: str = "retain"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.density, bool) or not (math.isfinite(self.density) and 0 < self.density <= 1):
            raise ValueError(f"method.density={self.density} must be in (0, 1] (the fraction of τ_f kept)")
        if self.election not in ELECTIONS:
            raise ValueError(f"method.election={self.election!r} must be one of {', '.join(ELECTIONS)}")
        require_retain_vector("election", self.election, self.beta, "elects signs against")


@register_method
class MSATies(ModelStateArithmetic):
    name = "msa_ties"
    config_class = MSATiesConfig
    # After k requests the trim and election are those of the cumulative forget vector (docs/sequential_requests.md).
    sequential = SUMS

    def forget_vector_transforms(self, forget_terms, retain_terms):
        from msa_bench.arithmetic.difference_transforms import TrimAndElect

        cfg: MSATiesConfig = self.config
        if not forget_terms:
            return []
        return [TrimAndElect(forget_terms, retain_terms, cfg.density, cfg.election)]

    def arithmetic_spec(self):
        cfg: MSATiesConfig = self.config
        return {"density": cfg.density, "election": cfg.election}
