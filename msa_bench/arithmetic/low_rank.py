"""A term of model-state arithmetic stored as LoRA factors: ``coefficient · scale · B @ A`` per adapted tensor.

A LoRA fine-tune of θ0 is θ1 = θ0 + scale·B·A on each adapted linear weight (scale = alpha/r, or alpha/√r with
rsLoRA) and θ0 elsewhere, so θ1 − θ0 is known from the adapter alone: a few MB instead of a full model. A
:class:`LowRankDelta` stands where a :class:`~msa_bench.arithmetic.state_arithmetic.StateDelta` would, with the
adapter folder (peft's adapter_config.json + adapter_model.safetensors) in place of the fine-tuned model::

    combine_checkpoints(theta_d, [LowRankDelta(-alpha, adapter_1, theta_0), StateDelta(beta, theta_2, theta_0)], out)

Its difference for a tensor is computed on demand in the arithmetic's compute dtype; a tensor with no adapter
contributes nothing. The adapter's keys (``base_model.model.<module>.lora_A.weight``) are mapped to the base
model's tensor names (``<module>.weight``), and every one is checked against the target's layout before anything
is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from msa_bench.arithmetic.checkpoint_files import CheckpointLayout, preview_names
from msa_bench.errors import CheckpointNotFoundError, StateArithmeticError

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# peft saves the adapted model's parameters under this prefix (PeftModel -> LoraModel -> the base model).
_PEFT_PREFIX = "base_model.model."
_FACTOR_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}


def is_adapter_folder(path: Path) -> bool:
    """Whether `path` holds a peft adapter (as `peft.vector_storage=factors` saves one) rather than a model."""
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


@dataclass(frozen=True)
class LowRankDelta:
    """Contributes ``coefficient · (θ0 + scale·B·A − θ0) = coefficient · scale·B·A`` to the combined checkpoint.

    `finetuned` is the adapter folder; `base` is the model it was trained on (θ0), named so that the term reads
    like a StateDelta and the tokenizers can be compared; its weights are never read.
    """

    coefficient: float
    finetuned: Path
    base: Path

    def load(self, target_layout: CheckpointLayout) -> LowRankFactors:
        """Read the adapter and check every adapted tensor against the target's names, shapes and dtypes."""
        factors = read_adapter(Path(self.finetuned))
        factors.check_against(target_layout)
        return factors


@dataclass
class LowRankFactors:
    """The factors of one adapter, by the base model's tensor name: (A [r, in], B [out, r]) and the scale."""

    folder: Path
    scale: float
    factors: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    fan_in_fan_out: bool = False

    def difference(self, name: str, compute_dtype: torch.dtype, rows: slice | None = None) -> Tensor | None:
        """scale·B@A for tensor `name` (only its `rows`, when given) in `compute_dtype`, or None when the adapter
        does not touch it. The streaming arithmetic asks for a run of rows at a time: B's rows times A."""
        pair = self.factors.get(name)
        if pair is None:
            return None
        a, b = pair
        rows = rows or slice(None)
        if (
            self.fan_in_fan_out
        ):  # GPT-2-style Conv1D weights are stored [in, out]: rows of (B@A).T are A's columns
            product = a[:, rows].to(compute_dtype).T @ b.to(compute_dtype).T
        else:
            product = b[rows].to(compute_dtype) @ a.to(compute_dtype)
        return (product * self.scale).contiguous()

    def check_against(self, layout: CheckpointLayout) -> None:
        unknown = sorted(name for name in self.factors if name not in layout.tensors)
        if unknown:
            raise StateArithmeticError(
                f"the adapter in {self.folder} adapts tensor(s) {preview_names(unknown)} that the target "
                f"{layout.directory} does not have; it was trained on another architecture"
            )
        for name, (a, b) in self.factors.items():
            info = layout.tensors[name]
            shape = (a.shape[1], b.shape[0]) if self.fan_in_fan_out else (b.shape[0], a.shape[1])
            if tuple(info.shape) != shape:
                raise StateArithmeticError(
                    f"the adapter in {self.folder} gives {name!r} the shape {list(shape)} (B {list(b.shape)} @ A "
                    f"{list(a.shape)}), but the target {layout.directory} has {list(info.shape)}"
                )
            if not info.dtype.startswith(("F", "BF")):
                raise StateArithmeticError(
                    f"the adapter in {self.folder} adapts {name!r}, which the target stores as {info.dtype}; "
                    "only floating tensors can take a low-rank difference"
                )


def _adapter_scale(config: dict, folder: Path) -> float:
    unsupported = {
        "use_dora": config.get("use_dora"),  # DoRA rescales the merged weight: not a pure B·A difference
        # Per-module ranks and alphas would need per-module scales.
        "rank_pattern": config.get("rank_pattern"),
        "alpha_pattern": config.get("alpha_pattern"),
        "modules_to_save": config.get("modules_to_save"),  # full copies of modules, not factors
    }
    if config.get("peft_type", "LORA") != "LORA" or config.get("bias", "none") != "none":
        unsupported["peft_type/bias"] = f"{config.get('peft_type')}/{config.get('bias')}"
    used = {key: value for key, value in unsupported.items() if value}
    if used:
        raise StateArithmeticError(
            f"the adapter in {folder} uses {', '.join(f'{k}={v}' for k, v in used.items())}, which the low-rank "
            "arithmetic does not read; store that vector merged (peft.vector_storage=merged)"
        )
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, int | float):
        raise StateArithmeticError(
            f"{folder / ADAPTER_CONFIG_NAME}: r={r!r}, lora_alpha={alpha!r} are not valid"
        )
    return float(alpha) / (r**0.5 if config.get("use_rslora") else r)


def read_adapter(folder: Path) -> LowRankFactors:
    """The factors of the peft LoRA adapter saved in `folder`, keyed by the base model's tensor names."""
    config_file, weights_file = folder / ADAPTER_CONFIG_NAME, folder / ADAPTER_WEIGHTS_NAME
    for path in (config_file, weights_file):
        if not path.is_file():
            raise CheckpointNotFoundError(f"adapter file not found: {path} (a LoRA vector needs both files)")
    config = json.loads(config_file.read_text())
    scale = _adapter_scale(config, folder)
    halves: dict[str, dict[str, Tensor]] = {}
    for key, tensor in load_file(str(weights_file)).items():
        suffix = next((s for s in _FACTOR_SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(_PEFT_PREFIX):
            raise StateArithmeticError(
                f"{weights_file}: tensor {key!r} is not a LoRA factor (expected {_PEFT_PREFIX}<module>.lora_A.weight"
                " or .lora_B.weight)"
            )
        module = key[len(_PEFT_PREFIX) : -len(suffix)]
        halves.setdefault(f"{module}.weight", {})[_FACTOR_SUFFIXES[suffix]] = tensor
    incomplete = sorted(name for name, pair in halves.items() if set(pair) != {"A", "B"})
    if incomplete:
        raise StateArithmeticError(
            f"{weights_file}: lora_A or lora_B missing for {preview_names(incomplete)}"
        )
    factors = {name: (pair["A"], pair["B"]) for name, pair in halves.items()}
    return LowRankFactors(folder, scale, factors, fan_in_fan_out=bool(config.get("fan_in_fan_out")))


def delta_between(coefficient: float, finetuned: Path, base: Path):
    """The arithmetic term for ``coefficient · (finetuned − base)``: a LowRankDelta when `finetuned` is an adapter
    folder, else a StateDelta."""
    from msa_bench.arithmetic.state_arithmetic import StateDelta

    if is_adapter_folder(finetuned):
        return LowRankDelta(coefficient, Path(finetuned), Path(base))
    return StateDelta(coefficient, Path(finetuned), Path(base))
