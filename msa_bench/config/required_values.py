"""A `???` (required value) in a YAML file that nothing filled in.

OmegaConf's merge never lets MISSING overwrite a value, so a YAML `key: ???` merged over a schema field that has a
default keeps the default without a word: a config that means "the user must choose this" would run with a value
nobody chose. Only the config files can tell, so this reads the files Hydra composed (the primary config and the
chosen option of each group, found through `hydra.runtime`) and reports each `???` whose key still holds its schema
default and is not set on the command line. A value equal to the default that another file sets on purpose is
reported too: such a file contradicts the `???` and one of the two should go.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

_PACKAGE_HEADER = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)
_NO_DEFAULT = object()


def _missing_keys(node, prefix: str, found: set[str]) -> None:
    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        if key == "defaults" and not prefix:
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_missing(node, key):
            found.add(dotted)
        else:
            _missing_keys(node._get_node(key), dotted, found)


def _schema_default(parent: DictConfig, leaf: str):
    """The default the schema of `parent` gives `leaf`, or _NO_DEFAULT."""
    schema = OmegaConf.get_type(parent)
    if not dataclasses.is_dataclass(schema):
        return _NO_DEFAULT
    for field in dataclasses.fields(schema):
        if field.name == leaf:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
    return _NO_DEFAULT


def _package(text: str, default: str) -> str:
    header = _PACKAGE_HEADER.search(text[:2000])
    package = header.group(1) if header else default
    return "" if package == "_global_" else package


def _composed_files(hydra_cfg: DictConfig, config_name: str) -> list[tuple[Path, str]]:
    """(file, package) of the primary config and of each chosen group option that lives in a folder."""
    folders = [Path(str(s.path)) for s in hydra_cfg.runtime.config_sources if s.schema == "file"]
    wanted = [(config_name, "")]
    for group, option in hydra_cfg.runtime.choices.items():
        if option is not None and str(group).split("/")[0] != "hydra" and "@" not in str(group):
            wanted.append((f"{group}/{option}", str(group).replace("/", ".")))
    files = []
    for name, default_package in wanted:
        found = next(
            (folder / f"{name}.yaml" for folder in folders if (folder / f"{name}.yaml").is_file()), None
        )
        if found is not None:
            files.append((found, default_package))
    return files


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def unfilled_required_values(
    cfg: DictConfig, hydra_cfg: DictConfig, config_name: str = "config"
) -> list[str]:
    """One message per `???` in a composed YAML file whose key still holds its schema default (and is not set on the
    command line), naming the key and the file."""
    on_command_line = {_override_key(str(o)) for o in hydra_cfg.overrides.task}
    required: dict[str, Path] = {}
    for path, default_package in _composed_files(hydra_cfg, config_name):
        found: set[str] = set()
        _missing_keys(
            OmegaConf.load(path), _package(path.read_text(encoding="utf-8"), default_package), found
        )
        for key in found:
            required.setdefault(key, path)
    problems = []
    for key, path in sorted(required.items()):
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, throw_on_resolution_failure=False) if parent_key else cfg
        if key in on_command_line or not isinstance(parent, DictConfig) or leaf not in parent:
            continue
        if OmegaConf.is_missing(parent, leaf):
            continue  # still MISSING: converting the config reports it
        default = _schema_default(parent, leaf)
        value = parent._get_node(leaf)
        kept = value._value() if not isinstance(value, DictConfig | ListConfig) else value
        if default is _NO_DEFAULT or kept != default:
            continue  # a value some config file chose, not the schema's
        problems.append(
            f"{key} is required by {path} (`???`) but nothing sets it, so the schema default {default!r} would be "
            f"used silently; set {key}=<value> on the command line or in a config file"
        )
    return problems
