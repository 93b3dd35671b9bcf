"""Weight quantization as an attack on unlearning: a model's weights replaced by those its quantized form computes with.

Zhang et al. (arXiv 2410.16454) found that 4-bit quantization restores much of what gradient-based unlearning removed:
the unlearning update is smaller than one quantization step, so the unlearned and the target weights round to the same
grid point. `quantize_weights` quantizes a loaded model in place and writes back the library's own dequantization of
each quantized tensor (the values its quantized matmul computes with), in the model's dtype. The model is then a plain
model again, with no tensor subclasses left, so it is saved, cached and evaluated like any other.

Schemes (`SCHEMES`):
- `int8`: weight-only, one scale per output channel (row), symmetric, round-to-nearest: torchao's
  `Int8WeightOnlyConfig` (granularity PerRow). Takes no group size.
- `int4`: weight-only, group-wise round-to-nearest: every `group_size` consecutive weights of a row share a scale and
  an integer zero point. torchao's `IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size),
  mapping_type=ASYMMETRIC)` with its default affine (min/max) choice of the parameters. Asymmetric, because a group's
  weights are rarely centred on zero: the zero point lets the 16 levels span the group's own [min, max] instead of
  [-max|w|, +max|w|], so the grid is the finer of the two, as in torchao's int4 weight-only format (documented as
  "uint4 weight-only asymmetric per-group"). The attack then does not recover knowledge merely because its grid is
  coarser than a deployed int4 model's. (torchao's `Int4WeightOnlyConfig` is not usable here: on this CPU it raises
  "ImportError: Requires mslk >= 1.0.0"; the Intx path runs in eager mode on any device.)
- `nf4` and `bnb_int8`: bitsandbytes, CUDA only (not run on the CPU machine this was built on). `nf4` is
  `bitsandbytes.functional.quantize_4bit(quant_type="nf4", blocksize=group_size)` without double quantization (the
  transformers default, bnb_4bit_use_double_quant=False), dequantized with `dequantize_4bit`. `bnb_int8` is LLM.int8's
  weight storage: the weight cast to float16, then row-wise absmax int8 (`int8_vectorwise_quant`, as `Int8Params`
  stores it), dequantized with `int8_vectorwise_dequant`. LLM.int8's matmul also quantizes the activations (and keeps
  outlier features in float16); a weight write-back reproduces the weight quantization only.

What is quantized: every `nn.Linear` inside the transformer blocks (the model's one `nn.ModuleList` of
`config.num_hidden_layers` blocks: attention and MLP projections). The embeddings and the output head (`lm_head`,
tied to the embeddings or not) keep full precision, as bitsandbytes' default `llm_int8_skip_modules` keeps the output
head, and so do norms and biases.

Size (`QuantizationReport.model_size_bytes`): each quantized weight at its bit width, packed (int4 counts 4 bits per
weight although torchao stores them unpacked, one per int8), plus its scales at their stored dtype, plus integer zero
points at the weight's bit width (int4's lie in [-8, 7]; symmetric schemes have none), plus every parameter that is
not quantized at its dtype, tied parameters once. Buffers (rotary frequencies) are not counted: they are not saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch
from torch import nn

from msa_bench.errors import AttackError
from msa_bench.quiet_imports import quiet_torchao_import

TORCHAO_SCHEMES = ("int8", "int4")
BITSANDBYTES_SCHEMES = ("nf4", "bnb_int8")
SCHEMES = TORCHAO_SCHEMES + BITSANDBYTES_SCHEMES
# The schemes that take a group size: the others quantize whole rows.
GROUPED_SCHEMES = ("int4", "nf4")
WEIGHT_BITS = {"int8": 8, "int4": 4, "nf4": 4, "bnb_int8": 8}
CPU_ALTERNATIVES = "attacks=quantize_int8 or attacks=quantize_int4 (torchao, CPU and CUDA)"


@dataclass(frozen=True)
class QuantizationReport:
    """What `quantize_weights` did. ``group_size`` is None for the row-wise schemes (int8, bnb_int8)."""

    scheme: str
    library: str
    library_version: str
    group_size: int | None
    quantized_tensors: int
    model_size_bytes: int
    full_size_bytes: int


@dataclass(frozen=True)
class _Quantized:
    """One weight after quantization: the library's dequantized values and the bytes its quantized form takes."""

    dequantized: torch.Tensor
    stored_bytes: int


def quantize_weights(
    model: nn.Module, scheme: str, *, group_size: int | None, attack: str
) -> QuantizationReport:
    """Quantize every Linear of ``model``'s transformer blocks with ``scheme`` and write back the dequantized weights,
    in place (see the module docstring). ``group_size`` is used by int4 and nf4 and ignored by int8 and bnb_int8.
    ``attack`` is the attack's name (e.g. quantize_int4), for the messages.

    The scheme, the device, the model's blocks and the group size are checked before any weight changes, so a model
    refused for those is left as it was (a bitsandbytes failure on one tensor is raised as it happens).

    Raises:
        AttackError: an unknown scheme; a bitsandbytes scheme without CUDA (naming the CPU alternatives) or without
            bitsandbytes installed; a model without one stack of transformer blocks; a targeted Linear whose
            in_features the group size does not divide.
    """
    if scheme not in SCHEMES:
        raise AttackError(
            f"{attack}: unknown quantization scheme {scheme!r}; the schemes are {', '.join(SCHEMES)}"
        )
    if scheme in BITSANDBYTES_SCHEMES and not torch.cuda.is_available():
        raise AttackError(
            f"{attack}: scheme {scheme} runs bitsandbytes' CUDA kernels and this machine has no CUDA device; "
            f"on CPU use {CPU_ALTERNATIVES}"
        )
    targets = transformer_block_linears(model, attack)
    used_group_size = group_size if scheme in GROUPED_SCHEMES else None
    if scheme in GROUPED_SCHEMES:
        _check_groups(targets, group_size, attack)

    library, quantize_one = _quantizer(scheme, used_group_size, attack)
    full_size = _parameter_bytes(model)
    model_size = full_size
    for name, linear in targets:
        weight = linear.weight
        quantized = quantize_one(name, linear)
        model_size += quantized.stored_bytes - _tensor_bytes(weight)
        with torch.no_grad():
            weight.copy_(quantized.dequantized.to(device=weight.device, dtype=weight.dtype))
        # torchao replaced the Parameter with its tensor subclass: put the original (now holding the dequantized
        # values) back, so that nothing of the library is left in the model and tied references stay intact.
        linear.weight = weight
    return QuantizationReport(
        scheme=scheme,
        library=library,
        library_version=metadata.version(library),
        group_size=used_group_size,
        quantized_tensors=len(targets),
        model_size_bytes=model_size,
        full_size_bytes=full_size,
    )


def transformer_block_linears(model: nn.Module, attack: str) -> list[tuple[str, nn.Linear]]:
    """The (qualified name, module) of every nn.Linear inside the model's transformer blocks, in module order."""
    num_blocks = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and num_blocks is not None and len(module) == num_blocks
    ]
    if len(stacks) != 1:
        raise AttackError(
            f"{attack}: cannot tell the transformer blocks of {type(model).__name__}: expected exactly one "
            f"nn.ModuleList of config.num_hidden_layers={num_blocks} blocks, found {len(stacks)}; the quantization "
            "attacks support decoder-only transformers models (Llama, Qwen2, OLMo-2 and the like)"
        )
    prefix, stack = stacks[0]
    return [
        (f"{prefix}.{name}", module)
        for name, module in stack.named_modules()
        if isinstance(module, nn.Linear)
    ]


def _check_groups(targets: list[tuple[str, nn.Linear]], group_size: int, attack: str) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise AttackError(f"{attack}: group_size={group_size!r} must be a positive integer")
    widths = [linear.in_features for _, linear in targets]
    for name, linear in targets:
        if linear.in_features % group_size:
            common = math.gcd(*widths)
            fitting = [size for size in (256, 128, 64, 32, 16, 8, 4, 2, 1) if common % size == 0]
            raise AttackError(
                f"{attack}: cannot quantize {name}.weight, in_features {linear.in_features}, in groups of "
                f"group_size={group_size} (it does not divide {linear.in_features}); choose a group_size that divides "
                f"the in_features of every quantized Linear ({sorted(set(widths))}), e.g. {fitting[0]}"
            )


def _quantizer(
    scheme: str, group_size: int | None, attack: str
) -> tuple[str, Callable[[str, nn.Linear], _Quantized]]:
    """The library's name and a function quantizing one Linear's weight with it."""
    if scheme in TORCHAO_SCHEMES:
        return "torchao", _torchao_quantizer(scheme, group_size)
    return "bitsandbytes", _bitsandbytes_quantizer(scheme, group_size, attack)


def _torchao_quantizer(scheme: str, group_size: int | None) -> Callable[[str, nn.Linear], _Quantized]:
    with quiet_torchao_import():
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_primitives import MappingType

    if scheme == "int8":
        # set_inductor_config=False: the default changes torch._inductor's global settings, which we do not compile.
        config = Int8WeightOnlyConfig(set_inductor_config=False)
    else:
        config = IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerGroup(group_size), mapping_type=MappingType.ASYMMETRIC
        )
    bits = WEIGHT_BITS[scheme]
    has_zero_points = scheme == "int4"

    def quantize_one(name: str, linear: nn.Linear) -> _Quantized:
        had_own_repr = "extra_repr" in vars(linear)
        quantize_(linear, config)  # replaces linear.weight with torchao's quantized tensor subclass
        quantized = linear.weight
        if not had_own_repr:
            # quantize_ also binds its own extra_repr to the module (to print the quantized weight); drop it with the
            # subclass (quantize_weights puts the plain Parameter back).
            vars(linear).pop("extra_repr", None)
        stored = _packed_bytes(quantized.qdata.numel(), bits) + _tensor_bytes(quantized.scale)
        if has_zero_points:
            stored += _packed_bytes(quantized.zero_point.numel(), bits)
        return _Quantized(dequantized=quantized.dequantize(), stored_bytes=stored)

    return quantize_one


def _bitsandbytes_quantizer(
    scheme: str, group_size: int | None, attack: str
) -> Callable[[str, nn.Linear], _Quantized]:
    # Not run on the CPU machine this module was built on (no CUDA there); bitsandbytes is not a dependency.
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError as error:
        raise AttackError(
            f"{attack}: scheme {scheme} needs bitsandbytes, which is not installed; `pip install bitsandbytes` on "
            f"the CUDA machine, or use {CPU_ALTERNATIVES}"
        ) from error

    def quantize_one(name: str, linear: nn.Linear) -> _Quantized:
        weight = linear.weight.detach().to("cuda")
        try:
            if scheme == "nf4":
                packed, state = bnb_functional.quantize_4bit(
                    weight, blocksize=group_size, compress_statistics=False, quant_type="nf4"
                )
                dequantized = bnb_functional.dequantize_4bit(packed, state)
                stored = _tensor_bytes(packed) + _tensor_bytes(state.absmax)
            else:
                # LLM.int8 stores float16 weights as row-wise absmax int8 (bitsandbytes' Int8Params).
                rows, row_absmax, _ = bnb_functional.int8_vectorwise_quant(weight.to(torch.float16))
                dequantized = bnb_functional.int8_vectorwise_dequant(rows, row_absmax)
                stored = _tensor_bytes(rows) + _tensor_bytes(row_absmax)
        except (AssertionError, ValueError, RuntimeError, NotImplementedError) as error:
            raise AttackError(
                f"{attack}: bitsandbytes cannot quantize {name}.weight (shape {tuple(weight.shape)}, "
                f"group_size={group_size}) with {scheme}: {error}"
            ) from error
        return _Quantized(dequantized=dequantized, stored_bytes=stored)

    return quantize_one


def _packed_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _parameter_bytes(model: nn.Module) -> int:
    """Every parameter at its dtype; `parameters()` yields a tied parameter once."""
    return sum(_tensor_bytes(parameter) for parameter in model.parameters())
