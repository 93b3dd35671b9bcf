"""The validation-protocol reproduction (issue 16, points 1 and 2; docs/validation_protocol.md): every method's grid
run on the validation forget set and on the test forget set, then `msa-bench report --select-on validation`, which
chooses each method's point on validation and reports the test runs there, beside matched forgetting (selection on
test).

The grid, the same on both forget sets (`benchmark.forget_set=validation,test`):

- msa:          α ∈ {0.5, 1, 2, 3}, β = 1;  task_vector: α ∈ {0.5, 1, 2, 3}
- every loss-based baseline (grad_ascent, grad_diff, npo, simnpo, rmu, satimp, undial): learning rate ∈
  {1e-4, 3e-4, 1e-3} × how long it trains, the rest of its recipe as configured:
  - TOFU (synthetic_tofu, tofu): epochs ∈ {2, 5, 10}. The defaults (1e-4 or 2e-4, 5 or 10 epochs) lie inside the
    grid's span; 1e-3 is the generated benchmark's target rate (cpu/tofu's: 3e-3). Validation and test forget sets
    have the same size, so an epoch is the same number of steps on both.
  - MUSE-News (muse_news, experiment=cpu/muse_news): optimizer steps ∈ {100, 300} (method.recipe.max_steps). Its
    validation set (50 retain texts, about 700 blocks) is a twelfth of the forget corpus (888 articles, 8,378
    blocks), so an epoch would be 12 times fewer updates on validation than on test; a step count is the same
    training on both. 300 steps is about 0.6 of an epoch over the forget corpus at batch 16 (the reproduction's
    baselines ran one epoch, 524 steps, results/cpu_reproduction).

The baselines' points are separate runs: with the recipes' decaying schedule, a point of one long run is not a
shorter run (docs/unlearning_dynamics.md). RESTOR has no validation set yet. Raw runs go to --runs, the report and
runs.json to --out.

    python scripts/reproduce_validation.py --benchmark synthetic_tofu --seeds 0,1,2
    python scripts/reproduce_validation.py --benchmark tofu --seeds 0 --extra experiment=smoke   # a dry run
    MSA_BENCH_DATA=../shared/data python scripts/reproduce_validation.py --benchmark muse_news --seeds 0
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT / "scripts"))
import reproduce_cpu as cpu  # noqa: E402

ALPHAS = "0.5,1,2,3"
LEARNING_RATES = "1e-4,3e-4,1e-3"
# How long each baseline trains, per benchmark (the module docstring says why MUSE counts steps).
TRAINING_LENGTHS = {
    "synthetic_tofu": ("method.recipe.epochs", "2,5,10"),
    "tofu": ("method.recipe.epochs", "2,5,10"),
    "muse_news": ("method.recipe.max_steps", "100,300"),
}
FORGET_SETS = "validation,test"


def sweeps(benchmark: str, seed: int, extra: list[str]) -> dict[str, list[list[str]]]:
    common = cpu.common_overrides(benchmark, seed, extra, f"benchmark.forget_set={FORGET_SETS}")
    length_key, lengths = TRAINING_LENGTHS[benchmark]
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
                f"{length_key}={lengths}",
            ]
            for method in cpu.BASELINES.split(",")
        ],
    }


def main() -> int:
    return cpu.reproduction_main(
        cpu.Reproduction(
            doc=__doc__,
            benchmarks=list(TRAINING_LENGTHS),
            runs="validation",
            out="validation",
            sweeps=sweeps,
            reports={"selection": (("arithmetic", "baselines"), True)},
            report_args={"selection": ["--select-on", "validation"]},
        )
    )


if __name__ == "__main__":
    sys.exit(main())
