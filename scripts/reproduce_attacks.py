"""The robustness reproduction behind results/robustness/: every method under attacks=standard, with the real CLI.

For each benchmark and seed it runs, as `msa-bench -m` multiruns (basic launcher), with `attacks=standard`:

- defaults: every method at its defaults (msa, task_vector and the loss-based baselines);
- matched:  msa over α (β = 1), task_vector over α, and gradient ascent and NPO over their training epochs: the
            sweeps that `msa-bench report --matched-forgetting` interpolates, so that each method's recovery can be
            read at the oracle's forgetting as well as at its default.

Then `msa-bench report` builds the tables, the recovery table and the recovery plot. Raw runs go to --runs (outside
the repository), the reports and runs.json (every command, return code and wall time) to --out. The target and the
oracle of a seed are attacked once and reused by every job, as is each model the two groups share (msa at α = 1).

    python scripts/reproduce_attacks.py --benchmark synthetic_tofu --seeds 0,1,2 --parallel 2
    python scripts/reproduce_attacks.py --benchmark tofu --only defaults
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# scripts/reproduce_cpu.py holds the benchmark plans, the sweep runner, the runs.json merge and the command line.
sys.path.insert(0, str(ROOT / "scripts"))
import reproduce_cpu as cpu  # noqa: E402

ATTACKS = "attacks=standard"
# The α grid of the arithmetic methods' matched-forgetting curves, and the epochs of the baselines'.
ALPHAS = "0.5,1,2,3"
MATCHED_BASELINES = "grad_ascent,npo"
BASELINE_EPOCHS = "5,10"


def sweeps(benchmark: str, seed: int, extra: list[str]) -> dict[str, list[list[str]]]:
    plan = cpu.BENCHMARKS[benchmark]
    common = cpu.common_overrides(benchmark, seed, extra, ATTACKS)
    baselines = [*common, f"method={cpu.BASELINES}", *plan.baseline_overrides]
    defaults = [[*common, f"method={cpu.ARITHMETIC_METHODS}"], baselines]
    matched = [
        [*common, "method=msa", f"method.alpha={ALPHAS}", "method.beta=1"],
        [*common, "method=task_vector", f"method.alpha={ALPHAS}"],
    ]
    if (
        plan.baseline_epochs
    ):  # MUSE's baselines train one epoch here (reproduce_cpu.py says why): no epochs sweep
        matched.append([*common, f"method={MATCHED_BASELINES}", f"method.recipe.epochs={BASELINE_EPOCHS}"])
    return {"defaults": defaults, "matched": matched}


def main() -> int:
    return cpu.reproduction_main(
        cpu.Reproduction(
            doc=__doc__,
            benchmarks=["synthetic_tofu", "tofu", "muse_news"],
            runs="robustness",
            out="robustness",
            sweeps=sweeps,
            reports={"defaults": (("defaults",), False), "matched": (("defaults", "matched"), True)},
        )
    )


if __name__ == "__main__":
    sys.exit(main())
