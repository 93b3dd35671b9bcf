"""`method.layer_scale`: a factor per tensor that multiplies α, the coefficient of the forget term (θ1 − θ0) only.

The retain term (β) and θ_D are never scaled. The values:

- ``uniform`` (the default): every factor is 1, which is plain MSA (no factor is applied at all, and the cache key is
  the one plain MSA always had).
- ``linear``: α grows with depth. A tensor of transformer block i of L gets ``2(i + 1) / (L + 1)``, from
  ``2 / (L + 1)`` for the first block to ``2L / (L + 1)`` for the last.
- ``linear_decreasing``: the reverse, ``2(L − i) / (L + 1)``.
- a mapping ``{regex: factor}``: a tensor whose name the regex matches (``re.search``: anywhere in the name) gets that
  factor; the first regex in the mapping's order that matches wins; tensors no regex matches get 1. A regex that
  matches no tensor at all is an error that lists some tensor names.

Why the linear profiles are normalised to a mean factor of 1 over the blocks (rather than running from 1/L to 1): the
variants are compared with uniform MSA at matched forgetting, along a sweep of α. With mean 1 the total weight on
the blocks is unchanged, so the α grid that brackets the oracle's forgetting for MSA brackets it for these profiles
too; a 1/L..1 profile would shrink the whole forget term by about half and shift every matched point to a larger α.

Depth: block i is the integer in a name's ``layers.<i>.``, ``h.<i>.`` or ``blocks.<i>.`` component (Llama, Qwen,
Mistral: ``model.layers.7.mlp.up_proj.weight``; GPT-2: ``transformer.h.7.attn.c_attn.weight``). L is the largest such
index + 1. Tensors outside the blocks (embeddings, the final norm, lm_head) get factor 1, the blocks' mean: they
belong to no depth, and 1 leaves them as plain MSA treats them.

No torch here: every method module is imported when a config is validated, and this one with msa.py.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from msa_bench.errors import ConfigError

LAYER_PROFILES = ("uniform", "linear", "linear_decreasing")
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_NAMES_SHOWN = 8
log = logging.getLogger("msa_bench.methods")


def check_layer_scale(value: Any, key: str = "method.layer_scale") -> None:
    """Raise ValueError (naming `key`) unless `value` is one of LAYER_PROFILES or a {regex: factor >= 0} mapping."""
    if isinstance(value, str):
        if value not in LAYER_PROFILES:
            raise ValueError(
                f"{key}={value!r} must be one of {', '.join(LAYER_PROFILES)}, or a mapping {{regex: factor}}"
            )
        return
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"{key}={value!r} must be one of {', '.join(LAYER_PROFILES)}, or a non-empty mapping {{regex: factor}}"
        )
    for pattern, factor in value.items():
        try:
            re.compile(str(pattern))
        except re.error as error:
            raise ValueError(f"{key}: {pattern!r} is not a valid regex ({error})") from error
        if (
            isinstance(factor, bool)
            or not isinstance(factor, int | float)
            or not math.isfinite(factor)
            or factor < 0
        ):
            raise ValueError(
                f"{key}: the factor of {pattern!r} is {factor!r}; it must be a finite number >= 0"
            )


def is_uniform(value: Any) -> bool:
    return isinstance(value, str) and value == "uniform"


def layer_scale_spec(value: Any) -> str | list[list[Any]]:
    """What enters the arithmetic's cache key: the profile's name, or the mapping as ordered [regex, factor] pairs
    (order matters: the first match wins)."""
    if isinstance(value, str):
        return value
    return [[str(pattern), float(factor)] for pattern, factor in value.items()]


def layer_index(name: str) -> int | None:
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def _some_names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f", ... ({len(names)} in total)" if len(names) > _NAMES_SHOWN else "")


def layer_factors(
    value: Any, tensor_names: Sequence[str], key: str = "method.layer_scale"
) -> dict[str, float]:
    """The factor of every tensor in `tensor_names` whose factor is not 1 (the others are left out). ConfigError
    when the setting fits no tensor of the model (checked once the target's tensor names are known)."""
    check_layer_scale(value, key)
    names = list(tensor_names)
    if is_uniform(value):
        return {}
    if isinstance(value, str):
        depths = {name: index for name in names if (index := layer_index(name)) is not None}
        if not depths:
            raise ConfigError(
                f"{key}={value}: no tensor name holds a block index (layers.<i>., h.<i>. or blocks.<i>.), so depth "
                f"is unknown; the tensors are named e.g. {_some_names(names)}. Use a mapping {{regex: factor}}"
            )
        n_layers = max(depths.values()) + 1
        if value == "linear":
            return {name: 2 * (index + 1) / (n_layers + 1) for name, index in depths.items()}
        return {name: 2 * (n_layers - index) / (n_layers + 1) for name, index in depths.items()}
    patterns = [(pattern, re.compile(str(pattern)), float(factor)) for pattern, factor in value.items()]
    unmatched = [pattern for pattern, compiled, _ in patterns if not any(compiled.search(n) for n in names)]
    if unmatched:
        raise ConfigError(
            f"{key}: the regex(es) {unmatched} match no tensor of the model; its tensors are named e.g. "
            f"{_some_names(names)}"
        )
    factors = {}
    for name in names:
        factor = next((f for _, compiled, f in patterns if compiled.search(name)), 1.0)
        if factor != 1.0:
            factors[name] = factor
    _warn_of_several_depths(value, names, key)
    return factors


def pattern_matches(value: Any, tensor_names: Sequence[str]) -> dict[str, int]:
    """How many tensors each regex of a {regex: factor} mapping sets the factor of (the first match wins), for the
    arithmetic's report; {} for a profile."""
    if isinstance(value, str):
        return {}
    patterns = [(str(pattern), re.compile(str(pattern))) for pattern in value]
    counts = dict.fromkeys((pattern for pattern, _ in patterns), 0)
    for name in tensor_names:
        winner = next((pattern for pattern, compiled in patterns if compiled.search(name)), None)
        if winner is not None:
            counts[winner] += 1
    return counts


def _warn_of_several_depths(value: Mapping, names: Sequence[str], key: str) -> None:
    """A regex that names a block index (holds a digit) but matches several blocks' tensors is most likely an
    unanchored index: `layers.1` also matches layers.10-19 (`.` is any character, and nothing ends the number)."""
    for pattern in value:
        if not any(character.isdigit() for character in str(pattern)):
            continue
        compiled = re.compile(str(pattern))
        depths = sorted(
            {depth for name in names if compiled.search(name) and (depth := layer_index(name)) is not None}
        )
        if len(depths) > 1:
            log.warning(
                "%s: the regex %r matches tensors of %d blocks (%s); re.search matches anywhere in the name, so "
                "anchor a block index with literal dots, e.g. 'layers\\.1\\.' (in YAML also 'layers[.]1[.]') for block 1 alone",
                key,
                str(pattern),
                len(depths),
                ", ".join(map(str, depths[:_NAMES_SHOWN])) + (", ..." if len(depths) > _NAMES_SHOWN else ""),
            )
