"""Peak memory of model-state arithmetic: combine_checkpoints against holding all four states in memory.

Builds four sharded random bf16 checkpoints (θ_D, θ0, θ1, θ2) of a Llama-shaped config in a temporary folder (removed
at the end), then computes MSA's ``θ_D − α(θ1 − θ0) + β(θ2 − θ0)`` twice, each in a fresh child process:

- ``streaming``: msa_bench.arithmetic.combine_checkpoints;
- ``in_memory``: the MSA code's way, the baseline: load the four state dicts, add in place into θ_D, save_file the
  shards.

Each child first combines tiny checkpoints of the same layout (loading the modules and the pages of torch's libraries
that any run needs), then resets its peak to its current RSS (writing 5 to /proc/self/clear_refs), combines the
measured ones and reports its peak resident set (VmHWM of /proc/self/status) and the peak's growth over the RSS before
the measured run, both as multiples of one model's size. The inputs are written by this process, flushed to disk and dropped from the page cache
(posix_fadvise DONTNEED) before each child starts, so a child finds no cached pages of them to map. The two outputs
are compared byte for byte.

    python scripts/bench_arithmetic_memory.py                       # ~1.05 GiB per model, 500 MB shards
    python scripts/bench_arithmetic_memory.py --layers 2 --hidden 512 --intermediate 2048 --vocab 32000 --json
    python scripts/bench_arithmetic_memory.py --compare-with /path/to/other/checkout   # also its combine_checkpoints

Disk: five models' worth in the temporary folder (four inputs, one output at a time). Memory: the baseline holds
about five models.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALPHA, BETA = 0.7, 0.3
CHECKPOINTS = ("theta_d", "theta_0", "theta_1", "theta_2")
# The tiny checkpoints each child combines once before its measured run (sharded in 100 KB shards).
WARMUP_CONFIG = {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 512}


def llama_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Llama checkpoint (tied embeddings, as Llama-3.2-1B)."""
    head_dim = args.hidden // args.heads
    kv = args.kv_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (args.vocab, args.hidden)}
    for layer in range(args.layers):
        prefix = f"model.layers.{layer}"
        shapes |= {
            f"{prefix}.input_layernorm.weight": (args.hidden,),
            f"{prefix}.self_attn.q_proj.weight": (args.hidden, args.hidden),
            f"{prefix}.self_attn.k_proj.weight": (kv, args.hidden),
            f"{prefix}.self_attn.v_proj.weight": (kv, args.hidden),
            f"{prefix}.self_attn.o_proj.weight": (args.hidden, args.hidden),
            f"{prefix}.post_attention_layernorm.weight": (args.hidden,),
            f"{prefix}.mlp.gate_proj.weight": (args.intermediate, args.hidden),
            f"{prefix}.mlp.up_proj.weight": (args.intermediate, args.hidden),
            f"{prefix}.mlp.down_proj.weight": (args.hidden, args.intermediate),
        }
    shapes["model.norm.weight"] = (args.hidden,)
    return shapes


def drop_from_page_cache(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def write_checkpoint(
    directory: Path, shapes: dict[str, tuple[int, ...]], shard_bytes: int, seed: int
) -> None:
    """A sharded bf16 checkpoint as save_pretrained lays it out: shards filled in order up to shard_bytes."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for number, names in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {
            name: (0.02 * torch.randn(shapes[name], generator=generator)).to(torch.bfloat16) for name in names
        }
        save_file(tensors, str(directory / file_name), metadata={"format": "pt"})
        total += sum(tensor.numel() * 2 for tensor in tensors.values())
        del tensors
        drop_from_page_cache(directory / file_name)
        weight_map |= dict.fromkeys(names, file_name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps(index, indent=2, sort_keys=True) + "\n"
    )
    (directory / "config.json").write_text(
        json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}) + "\n"
    )


# --------------------------------------------------------------------------------------------------
# Children: one measurement each, in a fresh interpreter.


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def combine_streaming(paths: dict[str, Path], out: Path) -> None:
    from msa_bench.arithmetic import StateDelta, combine_checkpoints

    deltas = [
        StateDelta(-ALPHA, paths["theta_1"], paths["theta_0"]),
        StateDelta(BETA, paths["theta_2"], paths["theta_0"]),
    ]
    combine_checkpoints(paths["theta_d"], deltas, out)


def combine_in_memory(paths: dict[str, Path], out: Path) -> None:
    """The baseline: four whole state dicts in memory, θ_D updated in place, the same per-tensor arithmetic (fp32,
    rounded once to bf16) so that the outputs can be compared byte for byte."""
    import torch
    from safetensors.torch import load_file, save_file

    index = json.loads((paths["theta_d"] / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    states = {}
    for checkpoint in CHECKPOINTS:
        states[checkpoint] = {}
        for file_name in files:
            states[checkpoint] |= load_file(paths[checkpoint] / file_name)
    theta_d, theta_0 = states["theta_d"], states["theta_0"]
    for name, tensor in theta_d.items():
        accumulator = tensor.to(torch.float32, copy=True)
        accumulator += -ALPHA * (states["theta_1"][name].float() - theta_0[name].float())
        accumulator += BETA * (states["theta_2"][name].float() - theta_0[name].float())
        tensor.copy_(accumulator.to(tensor.dtype))
    out.mkdir()
    for file_name in files:
        shard = {name: theta_d[name] for name, listed in index["weight_map"].items() if listed == file_name}
        save_file(shard, str(out / file_name), metadata={"format": "pt"})
    shutil.copy(paths["theta_d"] / "model.safetensors.index.json", out)


def run_child(kind: str, paths_json: str, out: str) -> None:
    combine = combine_streaming if kind == "streaming" else combine_in_memory
    families = json.loads(paths_json)
    # A first run on tiny checkpoints of the same layout loads what any run needs whatever the model's size: the
    # modules, and the pages of torch's shared libraries that its kernels live in (they count in the RSS).
    combine({name: Path(path) for name, path in families["warmup"].items()}, Path(out))
    shutil.rmtree(out)
    paths = {name: Path(path) for name, path in families["measured"].items()}
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    combine(paths, Path(out))
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    print(json.dumps({"rss_before_bytes": rss_before * 1024, "peak_bytes": peak * 1024, "seconds": seconds}))


def measure(kind: str, families: dict[str, dict[str, Path]], out: Path, pythonpath: str) -> dict:
    for directory in families["measured"].values():
        for shard in directory.glob("*.safetensors"):
            drop_from_page_cache(shard)
    environment = {**os.environ, "PYTHONPATH": pythonpath}
    paths_json = json.dumps(
        {family: {k: str(v) for k, v in paths.items()} for family, paths in families.items()}
    )
    command = [sys.executable, __file__, "--child", kind, paths_json, str(out)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"the {kind} child failed (exit {completed.returncode}):\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def weights_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for shard in sorted(directory.glob("*.safetensors")):
        with open(shard, "rb") as file:
            while block := file.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument(
        "--layers", type=int, default=5, help="5 layers of Llama-3.2-1B's shape: 1.06 GiB in bf16"
    )
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--shard-mb", type=float, default=500.0)
    parser.add_argument("--skip-baseline", action="store_true", help="measure combine_checkpoints only")
    parser.add_argument(
        "--compare-with", type=Path, help="also measure the combine_checkpoints of this checkout"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PATHS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(*args.child)
        return

    repository = str(Path(__file__).resolve().parents[1])
    shapes = llama_shapes(args)
    model_bytes = 2 * sum(math.prod(shape) for shape in shapes.values())  # bf16: 2 bytes a value
    figures: dict = {"model_bytes": model_bytes, "model_gib": model_bytes / 2**30, "n_tensors": len(shapes)}
    with tempfile.TemporaryDirectory(prefix="bench-arithmetic-") as scratch:
        root = Path(scratch)
        families = {
            family: {name: root / family / name for name in CHECKPOINTS} for family in ("warmup", "measured")
        }
        warmup_shapes = llama_shapes(argparse.Namespace(**WARMUP_CONFIG))
        started = time.perf_counter()
        for seed, name in enumerate(CHECKPOINTS):
            write_checkpoint(families["warmup"][name], warmup_shapes, 100_000, seed)
            write_checkpoint(families["measured"][name], shapes, int(args.shard_mb * 1e6), seed)
        figures["n_shards"] = len(list(families["measured"]["theta_d"].glob("*.safetensors")))
        figures["build_seconds"] = time.perf_counter() - started
        runs = [("streaming", repository)]
        if args.compare_with is not None:
            runs.append(("streaming", str(args.compare_with.resolve())))
        if not args.skip_baseline:
            runs.append(("in_memory", repository))
        digests = {}
        for kind, pythonpath in runs:
            label = kind if pythonpath == repository else f"{kind} ({pythonpath})"
            out = root / "out"
            result = measure(kind, families, out, pythonpath)
            result["peak_x_model"] = result["peak_bytes"] / model_bytes
            result["growth_x_model"] = (result["peak_bytes"] - result["rss_before_bytes"]) / model_bytes
            figures[label] = result
            digests[label] = weights_digest(out)
            shutil.rmtree(out)
        figures["outputs_identical"] = len(set(digests.values())) == 1
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"model: {figures['model_gib']:.3f} GiB bf16 ({len(shapes)} tensors, {figures['n_shards']} shards "
        f"of <= {args.shard_mb:g} MB); inputs built in {figures['build_seconds']:.0f}s"
    )
    for label, result in figures.items():
        if isinstance(result, dict):
            print(
                f"{label:>12}: peak RSS {result['peak_bytes'] / 2**30:.3f} GiB = {result['peak_x_model']:.2f}x "
                f"one model (growth over the interpreter {result['growth_x_model']:.2f}x), "
                f"{result['seconds']:.1f}s"
            )
    print(f"outputs byte-identical: {figures['outputs_identical']}")


if __name__ == "__main__":
    main()
