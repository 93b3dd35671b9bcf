"""The validation-protocol reproduction (issue 16, points 1 and 2; docs/validation_protocol.md): every method's grid
run on the validation forget set and on the test forget set, then `msa-bench report --select-on validation`, which
chooses each method's point on validation and reports the test runs there, beside matched forgetting (selection on
test).

The grid, the same on both forget sets (`benchmark.forget_set=validation,test`):

- msa:          α ∈ {0.5, 1, 2, 3}, β = 1;  task_vector: α ∈ {0.5, 1, 2, 3}
- every loss-based baseline (grad_ascent, grad_diff, npo, simnpo, rmu, satimp, undial): learning rate ∈
  {1e-4, 3e-4, 1e-3} × epochs ∈ {2, 5, 10}, the rest of its recipe as configured. The defaults (1e-4 or 2e-4,
  5 or 10 epochs) lie inside the grid's span; 1e-3 is the generated benchmark's target rate (cpu/tofu's: 3e-3).

The baselines' points are separate runs: with the recipes' decaying schedule, a point of one long run is not a
shorter run (docs/unlearning_dynamics.md). TOFU kinds only (MUSE and RESTOR have no validation set yet); real TOFU's
forget01 (experiment=cpu/tofu). Raw runs go to --runs, the report and runs.json to --out.

    python scripts/reproduce_validation.py --benchmark synthetic_tofu --seeds 0,1,2
    python scripts/reproduce_validation.py --benchmark tofu --seeds 0 --extra experiment=smoke   # a dry run
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT / "scripts"))
import reproduce_cpu as cpu  # noqa: E402

ALPHAS = "0.5,1,2,3"
LEARNING_RATES = "1e-4,3e-4,1e-3"
EPOCHS = "2,5,10"
FORGET_SETS = "validation,test"


def sweeps(benchmark: str, seed: int, extra: list[str]) -> dict[str, list[list[str]]]:
    common = cpu.common_overrides(benchmark, seed, extra, f"benchmark.forget_set={FORGET_SETS}")
    return {
        "arithmetic": [
            [*common, "method=msa", f"method.alpha={ALPHAS}", "method.beta=1"],
            [*common, "method=task_vector", f"method.alpha={ALPHAS}"],
        ],
        # One multirun per baseline: Hydra sweeps the product of the lists, and a failing job hides the others'
        # failures (shared/notes/environment.md), so a method's grid stays apart from the next one's.
        "baselines": [
            [
                *common,
                f"method={method}",
                f"method.recipe.learning_rate={LEARNING_RATES}",
                f"method.recipe.epochs={EPOCHS}",
            ]
            for method in cpu.BASELINES.split(",")
        ],
    }


def main() -> int:
    return cpu.reproduction_main(
        cpu.Reproduction(
            doc=__doc__,
            benchmarks=["synthetic_tofu", "tofu"],
            runs="validation",
            out="validation",
            sweeps=sweeps,
            reports={"selection": (("arithmetic", "baselines"), True)},
            report_args={"selection": ["--select-on", "validation"]},
        )
    )


if __name__ == "__main__":
    sys.exit(main())
