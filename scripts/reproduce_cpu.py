"""The CPU-scale reproduction behind results/cpu_reproduction/: sweeps with the real CLI, then `msa-bench report`.

For each benchmark and seed it runs, as `msa-bench -m` multiruns (basic launcher, one job at a time):

- methods:     every method the project has (msa, task_vector and the loss-based baselines) at their defaults,
- forget_only: msa with β = 0,
- alpha_beta:  msa over α × β, and task_vector over α (the sweeps behind the matched-forgetting comparison),
- strength:    every loss-based baseline over its training epochs (its matched-forgetting curve),
- checkpoints: msa from every saved model state of the embedded history (the checkpoint-distance ablation),
- checkpoint_alpha: the same checkpoints over α ∈ {0.5, 1, 2, 3}, so each θ0 gets a matched-forgetting reading.

Raw runs go to --runs (outside the repository); the tables, plots and a README fragment with the exact commands,
the machine and the wall times go to --out. Every job after a seed's first reuses the cached history, target and
oracle, so most jobs only fine-tune, combine and evaluate.

    python scripts/reproduce_cpu.py --benchmark synthetic_tofu --seeds 0,1,2
    python scripts/reproduce_cpu.py --benchmark muse_news --parallel 2   # two seeds at a time, one thread each

Sweeps that an earlier invocation recorded in runs.json are kept unless re-run, so `--only strength` extends a
finished reproduction; its total wall time adds up every invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARITHMETIC_METHODS = "msa,task_vector"
BASELINES = "grad_ascent,grad_diff,npo,simnpo,rmu,satimp,undial"
ALPHAS = "0.5,1,2,3"  # the α of every α sweep: msa × β, task_vector, and the checkpoints


@dataclass(frozen=True)
class BenchmarkPlan:
    select: list[str]  # the overrides that select the benchmark
    metrics: str  # the metrics group
    forget_metric: str  # the metric matched to the oracle's value in the matched-forgetting comparison
    checkpoint_sweeps: list[list[str]]
    # Added to the baselines' jobs only, e.g. a shorter recipe where their defaults cost hours on 2 cores.
    baseline_overrides: list[str] = field(default_factory=list)
    # The loss-based baselines' strength is how long they train, not α: their matched-forgetting curves sweep these
    # epochs (the `strength` group). None leaves the group empty where it would cost hours.
    baseline_epochs: str | None = "1,2,5,10,20"


BENCHMARKS = {
    "synthetic_tofu": BenchmarkPlan(
        [],
        "judged",
        "forget_Q_A_Prob",
        [
            ["checkpoint=base,instruct,target"],
            ["checkpoint=pretrain_step", "checkpoint.step=100,200,300,400"],
        ],
    ),
    # judged_full: the judged accuracies and TOFU's whole suite with open-unlearning's aggregate scores.
    "tofu": BenchmarkPlan(
        ["experiment=cpu/tofu"], "judged_full", "forget_Q_A_Prob", [["checkpoint=base,instruct,target"]]
    ),
    "restor": BenchmarkPlan(
        ["experiment=cpu/restor"], "restor", "restor_accuracy", [["checkpoint=base,instruct,closest"]]
    ),
    # VerbMem barely separates target and oracle at this scale (0.149 against 0.138, results/cpu_scale), so the
    # matched comparison uses the min-k% membership AUC, which does (0.79 against 0.54). The baselines' default
    # 5-10 epochs over the 888 forget articles take 10-25 minutes each on 2 cores, so here they train one epoch.
    "muse_news": BenchmarkPlan(
        ["experiment=cpu/muse_news"],
        "muse",
        "muse_mia_min_k",
        [["checkpoint=base,closest"]],
        # choice(1), not a plain 1: Hydra composes a multirun's config once, with its non-swept overrides, before
        # the sweep picks the methods; the default method (msa) has no `recipe`, so a plain override fails there.
        baseline_overrides=["method.recipe.epochs=choice(1)"],
        baseline_epochs=None,
    ),
}


def common_overrides(benchmark: str, seed: int, extra: list[str], *more: str) -> list[str]:
    """The overrides every job of a reproduction's seed starts with: the benchmark's selection and metrics, the
    seed, no logger or progress display, then the script's own `more` and the command line's `extra`."""
    plan = BENCHMARKS[benchmark]
    return [
        *plan.select,
        f"metrics={plan.metrics}",
        f"seed={seed}",
        "logger=none",
        "progress=false",
        *more,
        *extra,
    ]


def sweeps(benchmark: str, seed: int, extra: list[str]) -> dict[str, list[list[str]]]:
    plan = BENCHMARKS[benchmark]
    common = common_overrides(benchmark, seed, extra)
    if plan.baseline_overrides:
        methods = [
            [*common, f"method={ARITHMETIC_METHODS}"],
            [*common, f"method={BASELINES}", *plan.baseline_overrides],
        ]
    else:
        methods = [[*common, f"method={ARITHMETIC_METHODS},{BASELINES}"]]
    return {
        "methods": methods,
        "forget_only": [[*common, "method=msa", "method.beta=0"]],
        "alpha_beta": [
            [*common, "method=msa", f"method.alpha={ALPHAS}", "method.beta=0,1"],
            [*common, "method=task_vector", f"method.alpha={ALPHAS}"],
        ],
        "strength": [[*common, f"method={BASELINES}", f"method.recipe.epochs={plan.baseline_epochs}"]]
        if plan.baseline_epochs
        else [],
        "checkpoints": [[*common, "method=msa", *overrides] for overrides in plan.checkpoint_sweeps],
        # The checkpoint ablation along α too, so that each θ0 is compared at matched forgetting and not only at
        # α = 1, where the checkpoints forget by different amounts.
        "checkpoint_alpha": [
            [*common, "method=msa", f"method.alpha={ALPHAS}", *overrides]
            for overrides in plan.checkpoint_sweeps
        ],
    }


def run_sweep(overrides: list[str], sweep_dir: Path, env: dict) -> dict:
    command = [
        sys.executable,
        "-m",
        "msa_bench.cli",
        "-m",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary_path = sweep_dir / "sweep_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if completed.returncode != 0:
        print(completed.stderr[-3000:], file=sys.stderr)
    return {
        "command": "msa-bench -m " + " ".join(shlex.quote(o) for o in overrides),
        "returncode": completed.returncode,
        "wall_seconds": round(wall, 1),
        "jobs": summary.get("jobs", []),
    }


def record_sweeps(path: Path, fresh: dict, wall: float, machine: dict) -> tuple[float, list[dict]]:
    """Merge this invocation's sweeps into runs.json. Sweeps recorded earlier stay unless re-run, so a reproduction
    can be extended (say, --only strength) without losing the record of the rest; the file is read at the end, so
    invocations that overlap in time keep each other's records. Returns the total wall time and every record."""
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    merged: dict[tuple[str, int, int], dict] = {}
    for record in recorded.get("sweeps", []):
        # Records written before "index" existed list a group's sweeps in order.
        index = record.get("index", sum(k[:2] == (record["group"], record["seed"]) for k in merged))
        merged[(record["group"], record["seed"], index)] = record | {"index": index}
    for key, record in fresh.items():
        # A re-run whose every job was skipped measured nothing: the record of the run that did the work stays.
        redundant = record["jobs"] and all(job.get("state") == "skipped" for job in record["jobs"])
        if not (redundant and key in merged):
            merged[key] = record
    log = [merged[key] for key in sorted(merged, key=lambda k: (k[1], k[0], k[2]))]
    total = round(recorded.get("total_wall_seconds", 0.0) + wall, 1)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(
        json.dumps({"machine": machine, "total_wall_seconds": total, "sweeps": log}, indent=2) + "\n"
    )
    partial.replace(path)
    return total, log


def run_seeds(
    sweeps_of: Callable[[int], dict[str, list[list[str]]]],
    seeds: list[int],
    wanted: list[str],
    runs: Path,
    env: dict,
    parallel: int,
) -> tuple[dict[tuple[str, int, int], dict], float]:
    """Every wanted sweep group of every seed (`sweeps_of(seed)`), `parallel` seeds side by side; the records by
    (group, seed, index) and the wall time."""
    fresh: dict[tuple[str, int, int], dict] = {}
    lock = threading.Lock()

    def run_seed(seed: int) -> None:
        for group, commands in sweeps_of(seed).items():
            if group not in wanted:
                continue
            for index, overrides in enumerate(commands):
                record = run_sweep(overrides, runs / group / f"seed{seed}-{index}", env)
                record |= {"group": group, "seed": seed, "index": index}
                with lock:
                    fresh[(group, seed, index)] = record
                print(
                    f"{group} seed {seed}: rc={record['returncode']} {record['wall_seconds']} s", flush=True
                )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(run_seed, seeds))  # list(): re-raise any exception from a seed
    return fresh, time.perf_counter() - started


def machine_description() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class Reproduction:
    """What a reproduction script runs and reports: its sweep groups per benchmark and seed, and its reports."""

    doc: str  # the script's docstring, its --help
    benchmarks: list[str]
    runs: str  # the default --runs folder under .cache/, and --out folder under results/
    out: str
    sweeps: Callable[[str, int, list[str]], dict[str, list[list[str]]]]  # (benchmark, seed, extra) -> groups
    # Report name -> the sweep groups it reads, and whether it adds the matched-forgetting comparison.
    reports: dict[str, tuple[tuple[str, ...], bool]]
    # Report name -> more `msa-bench report` options (e.g. --select-on validation).
    report_args: dict[str, list[str]] = field(default_factory=dict)


def reproduction_main(plan: Reproduction) -> int:
    """The command line every reproduction script shares: run the wanted groups of every seed, build the reports
    with `msa-bench report`, and merge the records into runs.json."""
    parser = argparse.ArgumentParser(
        description=plan.doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmark", choices=plan.benchmarks, default="synthetic_tofu")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", type=Path, default=ROOT / ".cache" / plan.runs)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / plan.out)
    groups = list(plan.sweeps("synthetic_tofu", 0, []))
    parser.add_argument("--only", default=",".join(groups), help=f"sweep groups among {groups}")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="seeds run side by side, each job with cpus/N torch threads (default 1: one seed at a time)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild the tables and plots from --runs"
    )
    parser.add_argument(
        "--extra", default="", help="overrides added to every job, e.g. experiment=smoke (a dry run)"
    )
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error(f"--parallel={args.parallel} must be >= 1")
    wanted = args.only.split(",")
    unknown = set(wanted) - set(plan.sweeps(args.benchmark, 0, [])) - set(groups)
    if unknown:
        parser.error(f"--only names unknown sweep groups {sorted(unknown)}")

    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("MSA_BENCH_DATA", str(ROOT.parent / "shared" / "data"))
    runs, out = args.runs / args.benchmark, args.out / args.benchmark
    extra = args.extra.split()
    if args.parallel > 1 and not any(o.startswith("num_threads=") for o in extra):
        extra.append(f"num_threads={max(1, (os.cpu_count() or 1) // args.parallel)}")

    seeds = [] if args.report_only else [int(s) for s in args.seeds.split(",")]
    fresh, wall = run_seeds(
        lambda seed: plan.sweeps(args.benchmark, seed, extra), seeds, wanted, runs, env, args.parallel
    )

    out.mkdir(parents=True, exist_ok=True)
    forget_metric = BENCHMARKS[args.benchmark].forget_metric
    for name, (sources, matched) in plan.reports.items():
        dirs = [runs / group for group in sources if (runs / group).is_dir()]
        if not dirs:  # none of this report's groups has run
            continue
        shutil.rmtree(out / name, ignore_errors=True)  # plots of rows that no longer exist must not linger
        # Relative to the repository (the report's cwd), so committed reports name no one's home folder.
        relative = [os.path.relpath(d, ROOT) for d in dirs]
        command = [sys.executable, "-m", "msa_bench.cli", "report", *relative, "--out", str(out / name)]
        if matched:
            # No --sweep-param: each method's curve follows the key it varies (α for the arithmetic methods,
            # epochs for the baselines).
            command += ["--matched-forgetting", forget_metric]
        command += plan.report_args.get(name, [])
        subprocess.run(command, cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL)

    total, log = record_sweeps(out / "runs.json", fresh, wall, machine_description())
    print(f"done in {wall:.0f} s ({total:.0f} s over every invocation); tables and plots in {out}")
    return 0 if all(r["returncode"] == 0 for r in log) else 1


def main() -> int:
    return reproduction_main(
        Reproduction(
            doc=__doc__,
            benchmarks=sorted(BENCHMARKS),
            runs="reproduction",
            out="cpu_reproduction",
            sweeps=sweeps,
            reports={
                "all": (("methods", "forget_only", "checkpoints"), False),
                "alpha_beta": (("alpha_beta", "strength", "checkpoint_alpha"), True),
            },
        )
    )


if __name__ == "__main__":
    sys.exit(main())
