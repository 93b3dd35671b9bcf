"""Wall time of the default `msa-bench` run on this machine: cold (empty cache) and warm (another method).

Runs the real console script in subprocesses, as a user would:
  1. cold:  `msa-bench` with an empty cache (builds world, pretraining history, instruct, target, oracle, vectors);
  2. warm:  `msa-bench method=<m>` for each of the other methods, reusing the cache;
  3. warm:  `msa-bench method.alpha=2` (arithmetic + evaluation only).
Prints a table of wall seconds and each run's metrics, and writes it all to --out (JSON).

    python scripts/bench_default_run.py [--cache DIR] [--out bench_default_run.json] [--warm-methods ...]
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

COLD_LIMIT_S = 600
WARM_LIMIT_S = 90


def run_cli(args: list[str], cache: Path, run_dir: Path) -> tuple[float, dict]:
    env = {
        **os.environ,
        "MSA_BENCH_CACHE": str(cache),
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "msa_bench.cli", *args, "progress=false", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    (run_dir.parent / f"{run_dir.name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"`msa-bench {' '.join(args)}` failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed, json.loads((run_dir / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="cache dir (must be empty or absent; default: temp)"
    )
    parser.add_argument("--runs", type=Path, default=None, help="where run directories go (default: temp)")
    parser.add_argument("--out", type=Path, default=Path("bench_default_run.json"))
    parser.add_argument("--warm-methods", nargs="*", default=["task_vector", "grad_ascent", "npo"])
    args = parser.parse_args()

    cache = args.cache or Path(tempfile.mkdtemp(prefix="msa-bench-cache-"))
    if cache.exists() and any(cache.iterdir()):
        sys.exit(f"--cache {cache} is not empty; a cold run needs an empty cache")
    runs = args.runs or Path(tempfile.mkdtemp(prefix="msa-bench-runs-"))
    runs.mkdir(parents=True, exist_ok=True)

    jobs = [("cold", [])] + [(f"warm {m}", [f"method={m}"]) for m in args.warm_methods]
    jobs.append(("warm msa alpha=2", ["method.alpha=2"]))
    records = []
    for index, (label, overrides) in enumerate(jobs):
        seconds, results = run_cli(overrides, cache, runs / f"run{index}")
        limit = COLD_LIMIT_S if label == "cold" else WARM_LIMIT_S
        records.append(
            {
                "label": label,
                "overrides": overrides,
                "wall_seconds": round(seconds, 1),
                "limit_seconds": limit,
                "within_limit": seconds <= limit,
                "results": results,
            }
        )
        print(f"{label:22s} {seconds:7.1f} s  (limit {limit} s)", flush=True)

    cold = records[0]["results"]
    print("\nstage costs of the cold run (seconds):")
    for stage, cost in cold["cost"].items():
        print(
            f"  {stage:22s} {cost.get('wall_seconds', 0):7.1f}  tokens {cost.get('tokens', 0):>10,}  "
            f"peak {cost.get('peak_memory_mb', 0):7.0f} MiB"
        )
    columns = {"target": cold["reference_metrics"]["target"], "oracle": cold["reference_metrics"]["oracle"]}
    for record in records:
        name = record["results"]["method"] + (" a=2" if "method.alpha=2" in record["overrides"] else "")
        columns[name] = record["results"]["metrics"]
    from msa_bench.reporting.table import comparison_table

    print("\n" + comparison_table(columns, list(cold["metrics"])))
    args.out.write_text(
        json.dumps({"cache": str(cache), "runs": str(runs), "records": records}, indent=1, default=str)
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
