"""The form a config dataclass takes inside a cache key: options added later are left out while at their defaults.

A field declared with `metadata={OMIT_AT_DEFAULT: True}` (e.g. the recipe's memory options) enters a key only when
it is set to something else. Adding such a field therefore leaves every existing cache key, and so every cached
model, valid: a run that does not use the option keys its stages exactly as before the option existed.
"""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from msa_bench.config.schema import OMIT_AT_DEFAULT


def _default(field_) -> Any:
    if field_.default is not MISSING:
        return field_.default
    if field_.default_factory is not MISSING:
        return field_.default_factory()
    return MISSING


def without_default_options(node: Any, data: Any) -> Any:
    """`data` (the plain form of `node`: `dataclasses.asdict` or `OmegaConf.to_container`) without the fields that
    `node`'s dataclasses mark OMIT_AT_DEFAULT and hold at their default value, at any depth."""
    if is_dataclass(node) and isinstance(data, dict):
        by_name = {f.name: f for f in fields(node)}
        kept = {}
        for name, value in data.items():
            field_ = by_name.get(name)
            if field_ is None:
                kept[name] = value
                continue
            attribute = getattr(node, name)
            if field_.metadata.get(OMIT_AT_DEFAULT) and attribute == _default(field_):
                continue
            kept[name] = without_default_options(attribute, value)
        return kept
    if isinstance(node, dict) and isinstance(data, dict):
        return {k: without_default_options(node.get(k), v) for k, v in data.items()}
    if isinstance(node, list | tuple) and isinstance(data, list | tuple) and len(node) == len(data):
        return type(data)(without_default_options(n, d) for n, d in zip(node, data, strict=True))
    return data
