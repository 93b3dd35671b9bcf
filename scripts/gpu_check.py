"""The GPU acceptance check: the paper pipeline at reduced steps on real-sized models, offline, in one command.

    python scripts/gpu_check.py --out results/gpu_check.json             # on a CUDA machine (bf16)
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/check.json   # what the tests run

It needs no hub and no data: the models are randomly initialised with the real configs of Llama-3.2-1B-Instruct and
(memory permitting) Llama-3.1-8B-Instruct, written as `model.local_root` stand-ins with the tests' offline tokenizer
(tests/stand_in_models.py), and the TOFU files are generated (msa_bench/data/synthetic.py) in TOFU's layout. Random
weights change nothing about speed or memory, and 200-token generations run to their full length since a random model
rarely stops. Each check is the real `msa-bench` command (`experiment=paper/tofu_llama32_1b`), so the stages, cache,
preflight and cost records are the ones a researcher's run goes through:

  dense      target and oracle fine-tunes, θ1 and θ2, MSA arithmetic, TOFU evaluation with 200-token generations
  lora       θ1 and θ2 through LoRA (peft=lora), the arithmetic on the merged weights, the evaluation
  lora_8b    an 8B-shaped model, every fine-tune through LoRA (full mode, when the GPU has the memory)
  ddp        the dense check on 2 processes through torchrun (full mode, when 2 GPUs are visible)

For every stage it records the wall time, tokens per second, the measured peak memory (CUDA: the allocator's peak)
and the memory preflight's estimate. On CUDA it checks that each training stage's estimate lies within 20% of the
measured peak, and that each evaluation's estimate, an upper bound by design, is not below it. It writes one JSON
file; the exit status is 0 when every check passed and the adapters of the LoRA checks moved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

from msa_bench.data.synthetic import generate_world, write_benchmark  # noqa: E402
from tests.benchmark_fixtures import TINY_WORLD  # noqa: E402
from tests.stand_in_models import (  # noqa: E402
    ARCHITECTURE,
    END_OF_TEXT,
    END_OF_TURN,
    LLAMA31_8B,
    LLAMA32_1B,
    stand_in_tokenizer,
)

ESTIMATE_TOLERANCE = 0.20
TIME_BUDGET_SECONDS = 8 * 60
TINY = dict(ARCHITECTURE, max_position_embeddings=512)
# The tests' tiny world: 20 authors of 20 QA, so forget10 is 2 authors (40 QA), enough batches for every stage.
WORLD = TINY_WORLD
GIB = 2**30


def write_stand_in(root: Path, hub_id: str, architecture: dict, dtype: torch.dtype) -> Path:
    """A randomly initialised instruct model with `architecture` at root/<hub_id>/main/, with the offline tokenizer."""
    tokenizer = stand_in_tokenizer(chat_template=True)
    vocab_size = max(architecture.get("vocab_size", 0), len(tokenizer))
    eos = [tokenizer.convert_tokens_to_ids(END_OF_TEXT), tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    config = LlamaConfig(
        **{**architecture, "vocab_size": vocab_size},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=None,
        torch_dtype=dtype,
    )
    torch.manual_seed(0)
    # Built directly in `dtype` on the GPU when there is one: an 8B model built in float32 first would need 32 GB.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, do_sample=False
    )
    folder = root.joinpath(*hub_id.split("/"), "main")
    model.save_pretrained(folder, max_shard_size="2GB")
    tokenizer.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


def layers_that_fit(work: Path, architecture: dict) -> int:
    """32 layers when the disk holds five copies of the full 8B model in bf16 (about 80 GB), else the most that fit:
    the widths, and so every per-layer memory term, stay the 8B model's."""
    hidden, vocab = architecture["hidden_size"], architecture["vocab_size"]
    kv = architecture["num_key_value_heads"] * architecture["head_dim"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * architecture["intermediate_size"]
    embeddings = 2 * vocab * hidden
    free = shutil.disk_usage(work).free * 0.8
    copies = 5 * 2  # five models of 2 bytes per parameter
    fitting = int((free / copies - embeddings) // per_layer)
    return max(1, min(architecture["num_hidden_layers"], fitting))


def run_check(name: str, command: list[str], work: Path, environment: dict) -> dict:
    """Run one `msa-bench` command; return its outcome and the stage costs of its results.json."""
    run_dir = work / "runs" / name
    started = time.perf_counter()
    completed = subprocess.run(
        [*command, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
    )
    outcome = {
        "check": name,
        "command": " ".join([*command, f"hydra.run.dir={run_dir}"]),
        "exit_status": completed.returncode,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    results_file = run_dir / "results.json"
    if completed.returncode != 0 or not results_file.is_file():
        outcome["error"] = (completed.stderr or completed.stdout)[-3000:]
        outcome["stages"] = []
        return outcome
    results = json.loads(results_file.read_text())
    # Stages reused from the cache (the lora check reuses the dense check's target and oracle) were measured before.
    outcome["stages"] = [
        stage_figures(name, cost) for name, cost in results["cost"].items() if not cost.get("reused")
    ]
    outcome["metrics"] = results["metrics"]
    return outcome


def stage_figures(name: str, cost: dict) -> dict:
    """One stage's figures: time, throughput, measured peak, the preflight's estimate and how far apart they are."""
    seconds = cost.get("wall_seconds") or 0.0
    tokens = cost.get("tokens") or 0
    figures = {
        "stage": name,
        "wall_seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 and tokens else None,
        "peak_memory_mb": round(cost.get("peak_memory_mb", 0.0), 1),
        "memory_kind": cost.get("memory_kind"),
        "estimated_peak_memory_mb": cost.get("estimated_peak_memory_mb"),
    }
    if "lora" in cost:  # the adapters' size and how far training moved them (lora_B starts at zero)
        figures["lora"] = {
            key: cost["lora"].get(key) for key in ("trainable_parameters", "lora_B_norm", "storage")
        }
    estimate, peak = figures["estimated_peak_memory_mb"], figures["peak_memory_mb"]
    if estimate is not None and peak and figures["memory_kind"] == "cuda_allocated":
        figures["estimate_error"] = round(estimate / peak - 1.0, 3)
        if name.startswith("eval:"):
            # An evaluation's estimate is an upper bound (the longest sequence of its sets in every row, logits at
            # every position): it must not fall below the peak, and how far above it lies is reported.
            figures["estimate_kind"] = "upper bound"
            figures["estimate_within_tolerance"] = estimate >= peak
        else:
            figures["estimate_kind"] = "model"
            figures["estimate_within_tolerance"] = abs(figures["estimate_error"]) <= ESTIMATE_TOLERANCE
    return figures


def paper_command(
    launcher: list[str], models: Path, data: Path, cache: Path, args, extra: list[str]
) -> list[str]:
    # Reduced steps: θ1 (and, for a same-sized retain subset, θ2) takes `--steps` optimizer steps of the paper's
    # batch over forget10; the target and oracle, on ten times the data, take ten times as many. (With a warm-up
    # a single step would train at learning rate 0.)
    n_forget = sum(1 for _ in open(data / "forget10.jsonl"))
    batch = 4
    epochs = args.steps * batch / n_forget
    return [
        *launcher,
        "experiment=paper/tofu_llama32_1b",
        f"model.local_root={models}",
        f"benchmark.data_dir={data}",
        f"paths.cache_dir={cache}",
        f"device={args.device}",
        f"model.dtype={'bfloat16' if args.device == 'cuda' else 'float32'}",
        f"benchmark.target_recipe.epochs={epochs:.4f}",
        f"benchmark.target_recipe.batch_size={batch}",
        f"benchmark.retain_eval_size={args.eval_items}",
        "metrics.max_new_tokens=200",
        "logger=none",
        "progress=off",
        f"num_threads={max(1, (os.cpu_count() or 2) // 2)}",
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--tiny", action="store_true", help="the tests' tiny architecture instead of the real configs"
    )
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument(
        "--steps", type=int, default=10, help="optimizer steps of θ1 (the target: 10 times more)"
    )
    parser.add_argument(
        "--eval-items", type=int, default=32, help="retain items evaluated (forget10: 40 items)"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="keep models, cache and runs here")
    parser.add_argument("--skip", nargs="*", default=[], choices=["lora", "lora_8b", "ddp"])
    parser.add_argument(
        "--layers-8b",
        type=int,
        default=None,
        help="layers of the 8B-shaped model (default: 32, or fewer to fit the disk)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda but no CUDA device is visible; use --device cpu --tiny on a machine without one"
        )

    started = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="msa-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    models, data, cache = work / "models", work / "data" / "tofu", work / "cache"
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    architecture = TINY if args.tiny else LLAMA32_1B
    print(f"writing the stand-in models and data under {work}", flush=True)
    write_stand_in(models, "meta-llama/Llama-3.2-1B-Instruct", architecture, dtype)
    write_benchmark(generate_world(WORLD), data)
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    msa_bench = [sys.executable, "-m", "msa_bench.cli"]
    checks: list[dict] = []
    skipped: dict[str, str] = {}
    report_models = {"llama32_1b": "tiny stand-in architecture" if args.tiny else "real config"}

    def check(name: str, launcher: list[str], extra: list[str]) -> None:
        print(f"check {name} ...", flush=True)
        outcome = run_check(
            name, paper_command(launcher, models, data, cache, args, extra), work, environment
        )
        print(f"  exit {outcome['exit_status']} after {outcome['wall_seconds']} s", flush=True)
        checks.append(outcome)

    check("dense", msa_bench, ["method=msa"])
    if "lora" not in args.skip:
        check("lora", msa_bench, ["method=msa", "peft=lora"])
    free_gib = torch.cuda.mem_get_info()[0] / GIB if args.device == "cuda" else 0.0
    if args.device == "cuda" and not args.tiny and "lora_8b" not in args.skip:
        if free_gib < 40:
            skipped["lora_8b"] = f"{free_gib:.0f} GiB of GPU memory free; the 8B-shaped LoRA check needs 40"
        else:
            # The dense models' cache is not needed any more, and an 8B run writes five full models (stand-in,
            # target, oracle, their evaluations' inputs, the MSA output): make room first.
            shutil.rmtree(cache, ignore_errors=True)
            layers = args.layers_8b or layers_that_fit(work, LLAMA31_8B)
            architecture_8b = dict(LLAMA31_8B, num_hidden_layers=layers)
            write_stand_in(models, "meta-llama/Llama-3.1-8B-Instruct", architecture_8b, dtype)
            report_models["llama31_8b"] = f"real widths, {layers} of 32 layers"
            check(
                "lora_8b",
                msa_bench,
                [
                    "model=llama31_8b_instruct",
                    "method=msa",
                    "peft=lora",
                    "peft.apply_to_target_oracle=true",
                    "peft.vector_storage=factors",
                ],
            )
    n_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and n_gpus < 2:
        skipped["ddp"] = f"{n_gpus} GPU visible; the 2-process DDP check needs 2"
    if n_gpus >= 2 and "ddp" not in args.skip:
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "msa_bench.cli",
        ]
        check("ddp", torchrun, ["method=msa", f"paths.cache_dir={work / 'cache-ddp'}"])

    stages = [stage for outcome in checks for stage in outcome["stages"]]
    estimates = [s for s in stages if "estimate_within_tolerance" in s]
    report = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or "cpu",
        "gpus": n_gpus,
        "mode": "tiny" if args.tiny else "full",
        "models": report_models,
        "world": asdict(WORLD),
        "skipped": skipped,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "checks": checks,
        "estimate_tolerance": ESTIMATE_TOLERANCE,
        "estimates_checked": len(estimates),
        "estimates_within_tolerance": sum(s["estimate_within_tolerance"] for s in estimates),
        "total_seconds": round(time.perf_counter() - started, 1),
        "time_budget_seconds": TIME_BUDGET_SECONDS,
    }
    report["within_time_budget"] = report["total_seconds"] <= TIME_BUDGET_SECONDS
    if not estimates:
        report["estimate_note"] = (
            "estimates are compared with CUDA allocator peaks only; CPU RSS includes the runtime"
        )
    lora_stages = [s for c in checks if c["check"].startswith("lora") for s in c["stages"] if "lora" in s]
    report["adapters_changed"] = bool(lora_stages) and all(s["lora"]["lora_B_norm"] > 0 for s in lora_stages)
    report["passed"] = (
        all(c["exit_status"] == 0 for c in checks)
        and all(s["estimate_within_tolerance"] for s in estimates)
        and (report["adapters_changed"] or "lora" in args.skip)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}: {'passed' if report['passed'] else 'FAILED'} in {report['total_seconds']} s")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
