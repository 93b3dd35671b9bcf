"""What a model folder must be before transformers reads it: safetensors weights, and no code unless trusted.

Loading must never run code from a file. Two ways a model folder could:
- pickle weights (pytorch_model*.bin, *.pt, *.pth, *.ckpt): unpickling can run anything. Every load passes
  `use_safetensors=True`, so only the files transformers then reads count as weights: model.safetensors, or the shards
  of model.safetensors.index.json. Any other *.safetensors file beside a pickle does not make the folder loadable.
- `auto_map` in config.json or tokenizer_config.json names Python files of the repository, which transformers imports
  with `trust_remote_code=True` and otherwise asks about on an interactive prompt. msa_bench always passes the value
  of model.trust_remote_code (default false) and refuses such a folder before transformers sees it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from msa_bench.errors import ModelSourceError

log = logging.getLogger("msa_bench.models")

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt")
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")

# Folders whose remote code this process has already warned about.
_warned: set[Path] = set()


class UnsafeModelError(ModelSourceError):
    """A model folder would run code when loaded (pickle weights, or remote code not trusted); the message names the
    folder and what to do."""


def pickle_weights(model_dir: Path) -> list[str]:
    """The names of the pickle weight files in ``model_dir`` (top level only, as transformers reads it)."""
    return sorted({entry.name for pattern in PICKLE_PATTERNS for entry in Path(model_dir).glob(pattern)})


def pickle_problem(model_dir: Path, pickles: list[str]) -> str:
    return (
        f"its weights are pickles ({', '.join(pickles)}), which msa_bench never loads: unpickling can run arbitrary "
        "code. Get the repository's safetensors weights (model.safetensors or model.safetensors.index.json with its "
        "shards), or, only if you trust the file, convert it once: "
        f"AutoModelForCausalLM.from_pretrained('{model_dir}', use_safetensors=False).save_pretrained('<new folder>')"
    )


def weights_problems(model_dir: Path) -> list[str]:
    """What keeps ``model_dir`` from being a model folder transformers loads with use_safetensors=True (empty:
    nothing): config.json, and model.safetensors or every shard model.safetensors.index.json lists."""
    model_dir = Path(model_dir)
    problems = []
    if not (model_dir / "config.json").is_file():
        problems.append("no config.json")
    index_file = model_dir / SAFETENSORS_INDEX_NAME
    if (model_dir / SAFETENSORS_NAME).is_file():
        return problems  # transformers reads the single file first and ignores everything else
    if index_file.is_file():
        try:
            shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            problems.append(f"an unreadable {SAFETENSORS_INDEX_NAME} ({type(error).__name__}: {error})")
            return problems
        missing = [shard for shard in shards if not (model_dir / shard).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in total)" if len(missing) > 5 else "")
            problems.append(f"weight shards listed in {SAFETENSORS_INDEX_NAME} are missing: {shown}")
        return problems
    pickles = pickle_weights(model_dir)
    if pickles:
        problems.append(pickle_problem(model_dir, pickles))
    else:
        others = sorted(entry.name for entry in model_dir.glob("*.safetensors"))
        found = f"; {', '.join(others)} would not be loaded" if others else ""
        problems.append(
            f"no weights ({SAFETENSORS_NAME} or {SAFETENSORS_INDEX_NAME}; only safetensors weights are supported{found})"
        )
    return problems


def _natively_supported(name: str, content: dict) -> bool:
    """Whether transformers has its own class for what this file describes, so that with trust_remote_code=False it
    loads that class, ignoring the `auto_map` (and neither prompts nor runs the repository's code)."""
    import transformers

    if name == "config.json":
        return content.get("model_type") in transformers.CONFIG_MAPPING
    tokenizer_class = content.get("tokenizer_class")
    if not isinstance(tokenizer_class, str):
        return False
    return any(
        getattr(transformers, candidate, None) is not None
        for candidate in (tokenizer_class, tokenizer_class.removesuffix("Fast"), f"{tokenizer_class}Fast")
    )


def remote_code(model_dir: Path, *, needed_only: bool = False) -> dict[str, object]:
    """The `auto_map` entries of the folder's config.json and tokenizer_config.json, by file name (empty: none).

    With ``needed_only``, only those that loading without trust_remote_code could not do without: a file whose
    architecture or tokenizer class transformers has itself is loaded with that class, and its `auto_map` ignored."""
    found = {}
    for name in REMOTE_CODE_FILES:
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ModelSourceError(
                f"{path} is not valid JSON ({error}); re-download or re-save the model"
            ) from error
        if isinstance(content, dict) and content.get("auto_map"):
            if needed_only and _natively_supported(name, content):
                continue
            found[name] = content["auto_map"]
    return found


def check_model_folder(model_dir: Path, *, trust_remote_code: bool, weights: bool = True) -> None:
    """Refuse a folder whose loading would run code, or that has no weights transformers would load (with
    ``weights``: see weights_problems), or that has `auto_map` remote code, unless ``trust_remote_code``; with it,
    warn once per folder, naming it and the code it runs.

    Raises:
        UnsafeModelError: pickle weights or untrusted remote code, naming the folder and what to set or convert.
        ModelSourceError: no config.json or no safetensors weights.
    """
    model_dir = Path(model_dir)
    problems = weights_problems(model_dir) if weights else []
    if problems:
        error = UnsafeModelError if pickle_weights(model_dir) else ModelSourceError
        raise error(f"cannot load the model folder {model_dir}: {'; '.join(problems)}")
    # Trusted, transformers prefers the repository's code wherever there is an auto_map; untrusted, it uses its own
    # class where it has one, so only the rest must be refused.
    code = remote_code(model_dir, needed_only=not trust_remote_code)
    if not code:
        return
    where = ", ".join(f"{name}: {entries}" for name, entries in code.items())
    if not trust_remote_code:
        raise UnsafeModelError(
            f"the model folder {model_dir} ships Python code (auto_map in {where}), which msa_bench does not run "
            "unless model.trust_remote_code=true; set that only for a repository whose code you have read"
        )
    if model_dir not in _warned:
        _warned.add(model_dir)
        log.warning(
            "model.trust_remote_code=true: running the Python code of %s (auto_map in %s)", model_dir, where
        )
