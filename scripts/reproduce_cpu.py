"""The CPU-scale reproduction behind results/cpu_reproduction/: sweeps with the real CLI, then `msa-bench report`.

For each benchmark and seed it runs, as `msa-bench -m` multiruns (basic launcher, one job at a time):

- methods:     every method the project has (msa, task_vector and the loss-based baselines) at their defaults,
- forget_only: msa with β = 0,
- alpha_beta:  msa over α × β, and task_vector over α (the sweeps behind the matched-forgetting comparison),
- checkpoints: msa from every saved model state of the embedded history (the checkpoint-distance ablation).

Raw runs go to --runs (outside the repository); the tables, plots and a README fragment with the exact commands,
the machine and the wall times go to --out. Every job after a seed's first reuses the cached history, target and
oracle, so most jobs only fine-tune, combine and evaluate.

    python scripts/reproduce_cpu.py --benchmark synthetic_tofu --seeds 0,1,2
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = "msa,task_vector,grad_ascent,grad_diff,npo,simnpo,rmu,satimp,undial"
BENCHMARKS = {
    # name: (overrides that select it, metrics, forget metric for matched forgetting, checkpoint sweeps)
    "synthetic_tofu": (
        [],
        "judged",
        "forget_Q_A_Prob",
        [
            ["checkpoint=base,instruct,target"],
            ["checkpoint=pretrain_step", "checkpoint.step=100,200,300,400"],
        ],
    ),
    "tofu": (["experiment=cpu/tofu"], "judged", "forget_Q_A_Prob", [["checkpoint=base,instruct,target"]]),
    "restor": (
        ["experiment=cpu/restor"],
        "restor",
        "restor_accuracy",
        [["checkpoint=base,instruct,closest"]],
    ),
    "muse_news": (
        ["experiment=cpu/muse_news"],
        "muse",
        "forget_verbmem_ROUGE",
        [["checkpoint=base,closest"]],
    ),
}


def sweeps(benchmark: str, seed: int, extra: list[str]) -> dict[str, list[list[str]]]:
    select, metrics, _, checkpoint_sweeps = BENCHMARKS[benchmark]
    common = [*select, f"metrics={metrics}", f"seed={seed}", "logger=none", "progress=false", *extra]
    return {
        "methods": [[*common, f"method={METHODS}"]],
        "forget_only": [[*common, "method=msa", "method.beta=0"]],
        "alpha_beta": [
            [*common, "method=msa", "method.alpha=0.5,1,2,3", "method.beta=0,1"],
            [*common, "method=task_vector", "method.alpha=0.5,1,2,3"],
        ],
        "checkpoints": [[*common, "method=msa", *overrides] for overrides in checkpoint_sweeps],
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="synthetic_tofu")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", type=Path, default=ROOT / ".cache" / "reproduction")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cpu_reproduction")
    parser.add_argument("--only", default="methods,forget_only,alpha_beta,checkpoints")
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild the tables and plots from --runs"
    )
    parser.add_argument(
        "--extra", default="", help="overrides added to every job, e.g. experiment=smoke (a dry run)"
    )
    args = parser.parse_args()

    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("MSA_BENCH_DATA", str(ROOT.parent / "shared" / "data"))
    runs = args.runs / args.benchmark
    wanted = args.only.split(",")
    log = []
    started = time.perf_counter()
    out = args.out / args.benchmark
    previous = out / "runs.json"
    if args.report_only and previous.is_file():
        recorded = json.loads(previous.read_text())
        log, started = recorded["sweeps"], started - recorded["total_wall_seconds"]
    for seed in [] if args.report_only else [int(s) for s in args.seeds.split(",")]:
        for group, commands in sweeps(args.benchmark, seed, args.extra.split()).items():
            if group not in wanted:
                continue
            for index, overrides in enumerate(commands):
                sweep_dir = runs / group / f"seed{seed}-{index}"
                record = run_sweep(overrides, sweep_dir, env)
                record |= {"group": group, "seed": seed}
                log.append(record)
                print(
                    f"{group} seed {seed}: rc={record['returncode']} {record['wall_seconds']} s", flush=True
                )
    total = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    forget_metric = BENCHMARKS[args.benchmark][2]
    reports = {
        "all": [runs / g for g in ("methods", "forget_only", "checkpoints") if (runs / g).is_dir()],
        "alpha_beta": [runs / "alpha_beta"],
    }
    for name, dirs in reports.items():
        dirs = [d for d in dirs if d.is_dir()]
        if not dirs:
            continue
        shutil.rmtree(out / name, ignore_errors=True)  # plots of rows that no longer exist must not linger
        command = [sys.executable, "-m", "msa_bench.cli", "report", *map(str, dirs), "--out", str(out / name)]
        if name == "alpha_beta":
            command += ["--matched-forgetting", forget_metric, "--sweep-param", "method.alpha"]
        subprocess.run(command, cwd=ROOT, env=env, check=False)

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    (out / "runs.json").write_text(
        json.dumps({"machine": machine, "total_wall_seconds": round(total, 1), "sweeps": log}, indent=2)
        + "\n"
    )
    print(f"done in {total:.0f} s; tables and plots in {out}")
    return 0 if all(r["returncode"] == 0 for r in log) else 1


if __name__ == "__main__":
    sys.exit(main())
