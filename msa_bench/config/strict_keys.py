"""Keys of a composed config that no schema declares.

Hydra's `+key=value` adds a key even to a struct config (its own error hint for an unknown key suggests exactly
that), and OmegaConf.to_object keeps such a key as a plain attribute of the dataclass it builds, set after __init__.
So `+method.alhpa=1` or `+benchmark.target_recipe.epoch=1` would run to the end and change nothing. Here every key of
a node typed by a dataclass must be one of its fields. A node typed as a plain dict, or an `Any` field holding a
mapping (method.forget_recipe={epochs: 5}), is free-form: its keys are its owner's to check.
"""

from __future__ import annotations

import dataclasses
import difflib

from omegaconf import DictConfig, ListConfig, OmegaConf

# The root's `hydra` node is Hydra's own, checked by Hydra's schema.
_NOT_OURS = frozenset({"hydra"})


def _describe(node: DictConfig, path: str, schema: type) -> str:
    if not path:
        return f"the top-level config ({schema.__name__})"
    name = node._get_node("name") if "name" in node else None
    label = name._value() if name is not None and not name._is_missing() else None
    named = f" {label!r}" if isinstance(label, str) and not name._is_interpolation() else ""
    return f"{path}{named} ({schema.__name__})"


def _unknown_key_message(node: DictConfig, path: str, key: str, fields: list[str]) -> str:
    schema = OmegaConf.get_type(node)
    dotted = f"{path}.{key}" if path else key
    prefix = f"{path}." if path else ""
    close = difflib.get_close_matches(key, fields, n=3)
    hint = (
        f"did you mean {' or '.join(prefix + name for name in close)}?"
        if close
        else f"its fields are {', '.join(sorted(fields))}"
    )
    return f"{dotted} is not a field of {_describe(node, path, schema)}; {hint}"


def _children(node: DictConfig | ListConfig, path: str):
    if isinstance(node, ListConfig):
        return [(f"{path}[{index}]", node._get_node(index)) for index in range(len(node))]
    return [(f"{path}.{key}" if path else str(key), node._get_node(key)) for key in node.keys()]


def _walk(node: DictConfig | ListConfig, path: str, problems: list[str]) -> None:
    if node._is_missing() or node._is_none() or node._is_interpolation():
        return  # nothing to check yet: MISSING and interpolations are checked when the config is converted
    if isinstance(node, DictConfig):
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            fields = [field.name for field in dataclasses.fields(schema)]
            for key in node.keys():
                if str(key) not in fields and not (not path and key in _NOT_OURS):
                    problems.append(_unknown_key_message(node, path, str(key), fields))
    for child_path, child in _children(node, path):
        if not path and child_path in _NOT_OURS:
            continue
        if isinstance(child, DictConfig | ListConfig):
            _walk(child, child_path, problems)


def unknown_key_problems(cfg: DictConfig) -> list[str]:
    """One message per key of `cfg` that is not a field of its node's schema, naming the dotted key and the nearest
    valid names (every group: model, checkpoint, benchmark and its recipes, method, metrics, logger, paths)."""
    problems: list[str] = []
    _walk(cfg, "", problems)
    return problems
