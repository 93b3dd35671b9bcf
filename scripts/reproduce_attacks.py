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

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _reproduce_cpu():
    """scripts/reproduce_cpu.py, whose benchmark plans, sweep runner and runs.json merge this script shares."""
    spec = importlib.util.spec_from_file_location("reproduce_cpu", ROOT / "scripts" / "reproduce_cpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_cpu"] = module
    spec.loader.exec_module(module)
    return module


cpu = _reproduce_cpu()
ATTACKS = "attacks=standard"
# The α grid of the arithmetic methods' matched-forgetting curves, and the epochs of the baselines'.
ALPHAS = "0.5,1,2,3"
MATCHED_BASELINES = "grad_ascent,npo"
BASELINE_EPOCHS = "5,10"


def sweeps(benchmark: str, seed: int, extra: list[str]) -> dict[str, list[list[str]]]:
    plan = cpu.BENCHMARKS[benchmark]
    common = [
        *plan.select,
        f"metrics={plan.metrics}",
        f"seed={seed}",
        "logger=none",
        "progress=false",
        ATTACKS,
        *extra,
    ]
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--benchmark", choices=["synthetic_tofu", "tofu", "muse_news"], default="synthetic_tofu"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", type=Path, default=ROOT / ".cache" / "robustness")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "robustness")
    parser.add_argument("--only", default="defaults,matched")
    parser.add_argument(
        "--parallel", type=int, default=1, help="seeds run side by side (cpus/N threads each)"
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the reports from --runs")
    parser.add_argument("--extra", default="", help="overrides added to every job, e.g. experiment=smoke")
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error(f"--parallel={args.parallel} must be >= 1")
    wanted = args.only.split(",")
    unknown = set(wanted) - {"defaults", "matched"}
    if unknown:
        parser.error(f"--only names unknown sweep groups {sorted(unknown)}")

    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("MSA_BENCH_DATA", str(ROOT.parent / "shared" / "data"))
    runs, out = args.runs / args.benchmark, args.out / args.benchmark
    extra = args.extra.split()
    if args.parallel > 1 and not any(o.startswith("num_threads=") for o in extra):
        extra.append(f"num_threads={max(1, (os.cpu_count() or 1) // args.parallel)}")

    seeds = [] if args.report_only else [int(s) for s in args.seeds.split(",")]
    fresh, wall = cpu.run_seeds(
        lambda seed: sweeps(args.benchmark, seed, extra), seeds, wanted, runs, env, args.parallel
    )

    out.mkdir(parents=True, exist_ok=True)
    reports = {"defaults": ["defaults"], "matched": ["defaults", "matched"]}
    for name, groups in reports.items():
        if not (runs / name).is_dir():  # this report's own group has not run
            continue
        dirs = [runs / group for group in groups if (runs / group).is_dir()]
        shutil.rmtree(out / name, ignore_errors=True)
        sources = [os.path.relpath(d, ROOT) for d in dirs]
        command = [sys.executable, "-m", "msa_bench.cli", "report", *sources, "--out", str(out / name)]
        if name == "matched":
            command += ["--matched-forgetting", cpu.BENCHMARKS[args.benchmark].forget_metric]
        subprocess.run(command, cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL)

    total, log = cpu.record_sweeps(out / "runs.json", fresh, wall, cpu.machine_description())
    print(f"done in {wall:.0f} s ({total:.0f} s over every invocation); reports in {out}")
    return 0 if all(r["returncode"] == 0 for r in log) else 1


if __name__ == "__main__":
    sys.exit(main())
