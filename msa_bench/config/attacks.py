"""The `attacks` config group: robustness attacks run on the method's model, the target and the oracle after the plain
evaluation (msa_bench/attacks, docs/attacks.md).

Each conf/attacks/<option>.yaml adds entries to one of three maps, keyed by the attack's name (the `<name>` of
results.json's `attack/<name>/<metric>` keys), so that options combine: `attacks=[quantize_int4,leak_at_k]`.
`attacks=none` (the default) has none; `attacks=standard` has every attack that runs on a CPU.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

# Quantization schemes: the library that applies each, and whether it needs CUDA.
QUANTIZATION_SCHEMES: dict[str, tuple[str, bool]] = {
    "int8": ("torchao", False),
    "int4": ("torchao", False),
    "nf4": ("bitsandbytes", True),
    "bnb_int8": ("bitsandbytes", True),
}
GROUPED_SCHEMES = ("int4", "nf4")  # the schemes that quantize in groups of `group_size` input features
RELEARNING_DATA = ("forget", "retain")
ATTACK_NAME = re.compile(r"[a-z0-9_]+")


@dataclass
class QuantizationAttackConfig:
    """Weight-only quantization of every linear layer of the transformer blocks (msa_bench/attacks/quantization.py)."""

    scheme: str = "int4"  # int8 | int4 (torchao, CPU or CUDA) | nf4 | bnb_int8 (bitsandbytes, CUDA only)
    # Input features per quantization group (int4, nf4); 64 is bitsandbytes' NF4 block size.
    group_size: int = 64


@dataclass
class RelearningAttackConfig:
    """`steps` optimizer steps of fine-tuning with the benchmark's target recipe, on a seeded subset of the forget set
    (data: forget) or of the retain pool (data: retain, "benign relearning"); the forget metrics are then read on the
    forget items that were not relearned (msa_bench/attacks/relearning.py)."""

    data: str = "forget"  # forget | retain
    steps: int = 10
    # The share of the forget set relearned on (and held out of the evaluation); benign relearning trains on as
    # many retain items, so that both attacks see the same amount of data.
    fraction: float = 0.25


@dataclass
class SamplingAttackConfig:
    """leak@k: `k` sampled answers per forget question at `temperature`; each generation metric's per-item value is
    the maximum over the k samples (metrics.sampling)."""

    k: int = 10
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class AttacksConfig:
    name: str = "none"
    quantization: dict[str, QuantizationAttackConfig] = field(default_factory=dict)
    relearning: dict[str, RelearningAttackConfig] = field(default_factory=dict)
    sampling: dict[str, SamplingAttackConfig] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every configured attack, in the order they run: quantization, relearning, sampling."""
        return [*self.quantization, *self.relearning, *self.sampling]

    @property
    def enabled(self) -> bool:
        return bool(self.names())


def attack_problems(attacks: AttacksConfig, cuda_available: Callable[[], bool]) -> list[str]:
    """Every invalid attack setting, one message each naming its dotted key (`cuda_available` is asked only for an
    attack that needs CUDA)."""
    problems: list[str] = []
    seen: set[str] = set()
    for group in ("quantization", "relearning", "sampling"):
        for name in getattr(attacks, group):
            if name in seen:
                problems.append(
                    f"attacks: the attack name {name!r} is used twice; give each attack its own name"
                )
            seen.add(name)
            if not ATTACK_NAME.fullmatch(name):
                problems.append(
                    f"attacks.{group}.{name}: an attack's name may hold only a-z, 0-9 and _ (it becomes part of "
                    "results.json's attack/<name>/<metric> keys)"
                )
    for name, settings in attacks.quantization.items():
        key = f"attacks.quantization.{name}"
        if settings.scheme not in QUANTIZATION_SCHEMES:
            problems.append(
                f"{key}.scheme={settings.scheme!r} is not valid; choose one of {list(QUANTIZATION_SCHEMES)}"
            )
            continue
        library, needs_cuda = QUANTIZATION_SCHEMES[settings.scheme]
        if needs_cuda and not cuda_available():
            cpu = [f"quantize_{s}" for s, (_, cuda) in QUANTIZATION_SCHEMES.items() if not cuda]
            problems.append(
                f"{key}.scheme={settings.scheme} quantizes with {library}, which needs a CUDA GPU and none is "
                f"visible; on a CPU use the torchao attacks instead: attacks={cpu[0]} or attacks={cpu[1]} "
                "(attacks=standard has both)"
            )
        if settings.scheme in GROUPED_SCHEMES and settings.group_size < 1:
            problems.append(f"{key}.group_size={settings.group_size} must be >= 1")
    for name, settings in attacks.relearning.items():
        key = f"attacks.relearning.{name}"
        if settings.data not in RELEARNING_DATA:
            problems.append(
                f"{key}.data={settings.data!r} is not valid; choose one of {list(RELEARNING_DATA)}"
            )
        if settings.steps < 1:
            problems.append(f"{key}.steps={settings.steps} must be >= 1")
        if not 0 < settings.fraction < 1:
            problems.append(
                f"{key}.fraction={settings.fraction} must be between 0 and 1 (exclusive): the relearned share of the "
                "forget set, the rest of which is evaluated"
            )
    for name, settings in attacks.sampling.items():
        key = f"attacks.sampling.{name}"
        if settings.k < 1:
            problems.append(f"{key}.k={settings.k} must be >= 1")
        if settings.temperature < 0:
            problems.append(f"{key}.temperature={settings.temperature} must be >= 0 (0: greedy)")
        if settings.temperature == 0 and settings.k > 1:
            problems.append(
                f"{key}: k={settings.k} greedy decodes (temperature=0) are all the same answer; set "
                f"{key}.temperature > 0, or k=1 for the greedy value"
            )
        if not 0 < settings.top_p <= 1:
            problems.append(f"{key}.top_p={settings.top_p} must be in (0, 1]")
    return problems
