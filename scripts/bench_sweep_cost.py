"""What an α/β sweep over MSA costs per job, against its first job.

Runs `msa-bench -m method.alpha=... method.beta=...` with the real CLI into a fresh cache, then reads each job's
status.json: the first job builds the history, the target, the oracle and the vectors; every later job should only
combine cached vectors and evaluate. Prints the per-job wall times and the stages each job built.

    python scripts/bench_sweep_cost.py                      # the embedded default (a few minutes, mostly job 1)
    python scripts/bench_sweep_cost.py --extra experiment=smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alphas", default="0.5,1,2")
    parser.add_argument("--betas", default="0,1")
    parser.add_argument("--extra", default="", help="overrides for every job, e.g. experiment=smoke")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="msa-sweep-cost-") as scratch:
        scratch = Path(scratch)
        env = dict(
            os.environ, MSA_BENCH_CACHE=str(scratch / "cache"), WANDB_MODE="disabled", HF_HUB_OFFLINE="1"
        )
        overrides = [
            f"method.alpha={args.alphas}",
            f"method.beta={args.betas}",
            "logger=none",
            "progress=false",
            *args.extra.split(),
        ]
        command = [
            sys.executable,
            "-m",
            "msa_bench.cli",
            "-m",
            *overrides,
            f"hydra.sweep.dir={scratch / 'sweep'}",
        ]
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        total = time.perf_counter() - started

        jobs = []
        for status_path in sorted(
            (scratch / "sweep").glob("*/status.json"), key=lambda p: int(p.parent.name)
        ):
            status = json.loads(status_path.read_text())
            results = json.loads((status_path.parent / "results.json").read_text())
            built = sorted(stage for stage, cost in results["cost"].items() if not cost.get("reused"))
            jobs.append(
                {
                    "job": int(status_path.parent.name),
                    "overrides": status.get("overrides"),
                    "wall_seconds": round(status["wall_seconds"], 2),
                    "built": built,
                }
            )

    first = jobs[0]["wall_seconds"]
    later = [job["wall_seconds"] for job in jobs[1:]]
    print(f"sweep of {len(jobs)} jobs in {total:.1f} s (process start-up included)")
    for job in jobs:
        print(
            f"  job {job['job']}: {job['wall_seconds']:8.2f} s  built: {', '.join(job['built']) or 'nothing'}"
        )
    if later:
        mean_later = sum(later) / len(later)
        print(
            f"first job {first:.1f} s; later jobs {mean_later:.1f} s on average ({mean_later / first:.1%} of the first)"
        )
    if args.json:
        args.json.write_text(json.dumps({"total_seconds": round(total, 1), "jobs": jobs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
