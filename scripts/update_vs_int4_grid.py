"""How large each method's update is against the int4 grid, the measurement behind results/robustness/README.md.

For every run (results.json) under the given folders, compares the unlearned model's block weights with the target's:
the median |Δw| in units of the target's int4 step (asymmetric round-to-nearest in groups of --group-size along each
row, as the quantize_int4 attack), the share of weights moved by more than half a step, and the share of int4 codes
(each model on its own grid) that differ from the target's, and the share of the whole update's squared norm that lies
in the quantized weights.

    python scripts/update_vs_int4_grid.py .cache/robustness/synthetic_tofu/defaults --seed 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

LEVELS = 15  # int4: 16 levels


def all_weights(folder: str) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        weights.update(load_file(path))
    return weights


def is_block_linear(name: str) -> bool:
    """The weights the quantization attacks quantize (msa_bench/attacks/quantization.py): the blocks' projections."""
    return ".layers." in name and name.endswith("proj.weight")


def quantized_share_of_update(target: dict, unlearned: dict) -> float:
    """The share of ‖θ_unlearned − θ_D‖² in the quantized weights; the rest (embeddings, norms, an untied output head)
    keeps full precision under the attack."""
    inside = outside = 0.0
    for name, weight in target.items():
        if not weight.is_floating_point():
            continue
        squared = float(torch.sum((unlearned[name].double() - weight.double()) ** 2))
        if is_block_linear(name):
            inside += squared
        else:
            outside += squared
    return inside / (inside + outside) if inside + outside else float("nan")


def grid(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups = weight.reshape(weight.shape[0], -1, group_size)
    low = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - low) / LEVELS
    return groups, low, step


def compare(target: dict, unlearned: dict, group_size: int) -> dict[str, float]:
    ratios, flips = [], []
    for name, weight in target.items():
        groups, low, step = grid(weight, group_size)
        other, other_low, other_step = grid(unlearned[name], group_size)
        ratios.append(((other - groups).abs() / step).flatten())
        codes = torch.round((groups - low) / step)
        other_codes = torch.round((other - other_low) / other_step)
        flips.append((codes != other_codes).float().flatten())
    ratio, flip = torch.cat(ratios), torch.cat(flips)
    return {
        "median_update_in_int4_steps": round(float(ratio.median()), 3),
        "share_moved_over_half_a_step": round(float((ratio > 0.5).float().mean()), 4),
        "share_of_int4_codes_changed": round(float(flip.mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()
    for folder in args.folders:
        for path in sorted(folder.rglob("results.json")):
            run = json.loads(path.read_text())
            if run.get("seed") != args.seed or run["method"] in ("target", "oracle"):
                continue
            target = all_weights(run["artifacts"]["target"])
            unlearned = all_weights(run["artifacts"]["model"])
            blocks = {name: w for name, w in target.items() if is_block_linear(name)}
            found = compare(blocks, unlearned, args.group_size)
            found["share_of_update_norm2_quantized"] = round(quantized_share_of_update(target, unlearned), 3)
            print(run["method"], json.dumps(found))


if __name__ == "__main__":
    main()
