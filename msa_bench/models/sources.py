"""Where pretrained models come from: a local folder of model copies, or the Hugging Face hub and its cache.

A pretrained model is named by a hub id (``org/name``) and a revision (a branch, tag or commit of the hub repository,
e.g. ``main`` or an intermediate-checkpoint branch). :func:`resolve_model_dir` turns the pair into a local folder in
Hugging Face format (config.json, tokenizer files, safetensors weights), which every loader in msa_bench reads with
``local_files_only=True``:

* with a local root (``model.local_root``, or the ``MSA_BENCH_MODELS`` environment variable when that is null) the
  folder is ``<local_root>/<hub_id>/<revision>/``, e.g. ``<local_root>/meta-llama/Llama-3.1-8B/main/``; nothing is
  downloaded;
* without one, the hub snapshot of that revision: from the Hugging Face cache if it is already there, else downloaded
  (config, generation config, tokenizer and safetensors files only).

:func:`model_fingerprint` gives a short content fingerprint of such a folder, for cache keys.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from msa_bench.errors import ModelSourceError  # noqa: F401  (re-exported)
from msa_bench.models.safety import weights_problems

MODELS_ENV_VAR = "MSA_BENCH_MODELS"

# What a model folder needs from a hub repository: configs, tokenizer files and safetensors weights. Everything else
# (README, pytorch_model*.bin duplicates, original/ consolidated checkpoints of many GB) is left on the hub.
HUB_ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer*",  # tokenizer.json, tokenizer_config.json, tokenizer.model (sentencepiece)
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",  # chat_template.jinja / chat_template.json (newer repos keep the template out of the config)
    "vocab.*",
    "merges.txt",
    "*.txt",
    "*.tiktoken",
    "*.safetensors",
    "*.safetensors.index.json",
    # The Python files `auto_map` names: never run unless model.trust_remote_code=true (msa_bench/models/safety.py),
    # but without them a trusted remote-code model could not load offline.
    "*.py",
]
# fnmatch's "*" also matches "/": without this, "*.safetensors" or "tokenizer*" would pull files from subfolders
# (e.g. onnx/ exports) that the top-level model does not use.
HUB_IGNORE_PATTERNS = ["*/*"]

_TRUE_VALUES = {"1", "on", "yes", "true"}


def _fix_steps() -> str:
    return (
        f"To use a local copy, set model.local_root (or the {MODELS_ENV_VAR} environment variable) to a folder holding "
        "<hub_id>/<revision>/ model folders (config.json, tokenizer files, *.safetensors); to download it, leave "
        f"model.local_root null and {MODELS_ENV_VAR} unset, and run with network access to the Hugging Face hub (and "
        "a token, e.g. HF_TOKEN, for gated models)."
    )


def _check_relative_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ModelSourceError(f"{what} must be a non-empty string, got {value!r}")
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or any(part in ("", ".", "..") for part in parts):
        raise ModelSourceError(
            f"{what} {value!r} is not a valid name (no empty, '.' or '..' parts, not absolute)"
        )


def default_local_root() -> str | None:
    """The ``MSA_BENCH_MODELS`` environment variable, if set and not empty."""
    return os.environ.get(MODELS_ENV_VAR) or None


def _resolve_local(hub_id: str, revision: str, local_root: Path, origin: str) -> Path:
    model_dir = local_root.joinpath(*hub_id.split("/"), *revision.split("/"))
    where = f"model {hub_id!r} at revision {revision!r}"
    if not model_dir.is_dir():
        repo_dir = local_root.joinpath(*hub_id.split("/"))
        if not local_root.is_dir():
            context = f"the local root {local_root} does not exist"
        elif not repo_dir.is_dir():
            context = f"{repo_dir} does not exist"
        else:
            revisions = sorted(entry.name for entry in repo_dir.iterdir() if entry.is_dir())
            context = f"revisions in {repo_dir}: {', '.join(revisions) if revisions else 'none'}"
        raise ModelSourceError(
            f"{where} not found: looked for the folder {model_dir} (local root from {origin}; {context}). "
            f"{_fix_steps()}"
        )
    problems = weights_problems(model_dir)
    if problems:
        raise ModelSourceError(
            f"{where}: the folder {model_dir} (local root from {origin}) is incomplete: {'; '.join(problems)}. "
            f"Copy the whole Hugging Face model folder (config.json, tokenizer files, *.safetensors) there. {_fix_steps()}"
        )
    return model_dir


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or any(
        os.environ.get(name, "").strip().lower() in _TRUE_VALUES
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _resolve_hub(hub_id: str, revision: str, cache_dir: str | Path | None, fix: str | None = None) -> Path:
    """`fix`: what the error says to do (default: model.local_root's steps, for the model under study)."""
    from huggingface_hub import constants, snapshot_download

    where = f"model {hub_id!r} at revision {revision!r}"
    cache = cache_dir if cache_dir is not None else constants.HF_HUB_CACHE
    download_kwargs = dict(
        repo_id=hub_id,
        revision=revision,
        allow_patterns=HUB_ALLOW_PATTERNS,
        ignore_patterns=HUB_IGNORE_PATTERNS,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    attempts = []
    # The cache first: no request at all (and no token needed) for a model fetched before.
    try:
        cached = Path(snapshot_download(**download_kwargs, local_files_only=True))
    except Exception as error:  # any failure means "not usable from the cache"
        attempts.append(f"not in the Hugging Face cache {cache} ({type(error).__name__}: {error})")
    else:
        problems = weights_problems(cached)
        if not problems:
            return cached
        # A snapshot folder exists but lacks files (e.g. only config.json was fetched before): download the rest.
        attempts.append(f"the cached snapshot {cached} is incomplete ({'; '.join(problems)})")

    if _hub_offline():
        attempts.append(
            "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), so the hub was not contacted"
        )
    else:
        try:
            downloaded = Path(snapshot_download(**download_kwargs))
        except Exception as error:  # network, auth, missing repo or revision: all alike
            attempts.append(f"downloading from the Hugging Face hub failed ({type(error).__name__}: {error})")
        else:
            problems = weights_problems(downloaded)
            if not problems:
                return downloaded
            attempts.append(f"the downloaded snapshot {downloaded} is incomplete ({'; '.join(problems)})")
    raise ModelSourceError(
        f"could not get {where} from the Hugging Face hub: {'; '.join(attempts)}. {fix or _fix_steps()}"
    )


def hub_snapshot(hub_id: str, revision: str = "main", *, fix: str) -> Path:
    """The hub snapshot of a model that is not the one under study (e.g. a metric's classifier), which
    model.local_root does not cover: from the Hugging Face cache, else downloaded unless offline. `fix` says in the
    error what to set instead.

    Raises :class:`ModelSourceError` naming the hub id, where it looked and `fix`.
    """
    _check_relative_name(hub_id, "hub id")
    _check_relative_name(revision, "revision")
    return _resolve_hub(hub_id, revision, None, fix)


def resolve_model_dir(
    hub_id: str,
    revision: str,
    local_root: str | Path | None,
    *,
    cache_dir: str | Path | None = None,
) -> Path:
    """The local Hugging Face model folder of ``hub_id`` at ``revision``.

    ``local_root`` (falling back to the ``MSA_BENCH_MODELS`` environment variable when None): the folder
    ``<local_root>/<hub_id>/<revision>`` (hub ids nest as ``org/name``), which must hold config.json and the safetensors
    weights transformers loads (model.safetensors, or all shards model.safetensors.index.json lists; pickle weights
    are refused, see msa_bench/models/safety.py). Otherwise the hub snapshot: the Hugging Face cache (``cache_dir``, default the
    standard HF cache) is tried without any request, then the hub (unless HF_HUB_OFFLINE is set).

    Raises :class:`ModelSourceError` naming the hub id, the revision, where it looked and what to do.
    """
    _check_relative_name(hub_id, "hub id")
    _check_relative_name(revision, "revision")
    origin = "model.local_root"
    if local_root is None:
        local_root, origin = default_local_root(), MODELS_ENV_VAR
    if local_root is not None:
        return _resolve_local(hub_id, revision, Path(local_root).expanduser(), origin)
    return _resolve_hub(hub_id, revision, cache_dir)


# --------------------------------------------------------------------------------------------------
# Fingerprints

FINGERPRINT_LENGTH = 16
# Files bigger than this (weights, in practice) are sampled instead of read in full.
_FULL_HASH_LIMIT = 64 * 2**20
_SAMPLE_BYTES = 2**20
_SAMPLE_POINTS = (0.25, 0.5, 0.75)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
# Written by msa_bench's artifact cache next to model files; says nothing about the model.
_IGNORED_NAMES = frozenset({"_artifact.json"})


def _hub_snapshot_commit(model_dir: Path) -> tuple[str, str] | None:
    """(repo folder name, commit) when ``model_dir`` is ``.../models--org--name/snapshots/<commit>``."""
    parent = model_dir.parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--") and len(model_dir.name) == 40:
        try:
            int(model_dir.name, 16)
        except ValueError:
            return None
        return parent.parent.name, model_dir.name
    return None


def _sampled_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        offsets = [0, *(int(size * point) for point in _SAMPLE_POINTS), max(size - _SAMPLE_BYTES, 0)]
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def _file_digest(path: Path, size: int) -> str:
    if size > _FULL_HASH_LIMIT or path.name.endswith(_WEIGHT_SUFFIXES):
        return "sampled:" + _sampled_digest(path, size)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """A short (16 hex digits) content fingerprint of a model folder, stable across machines and paths.

    * A hub snapshot (``.../models--org--name/snapshots/<commit>/``): the repository, the commit (hub commits are
      immutable, so it pins every file's content) and the names and sizes of the files present (a snapshot holds only
      what was downloaded).
    * Any other folder: every top-level file except hidden ones and ``_artifact.json``, by name and size; small files
      (configs, tokenizer, chat template; under 64 MiB and not weights) hashed in full; weight files (``*.safetensors``
      etc. or anything bigger) hashed over five 1 MiB samples: the start (the safetensors header with every tensor's
      name, dtype, shape and offset), 25%, 50%, 75% and the end. Reading ~5 MiB per shard keeps an 8B model cheap (a
      full hash reads 16 GB), and replaced weights (another revision, a fine-tune) differ nearly everywhere, so the
      samples change. The price: an edit confined to bytes outside the samples (a few changed values in one tensor)
      keeps the fingerprint; re-save such a model elsewhere.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"cannot fingerprint {model_dir}: not a folder")
    files = sorted(
        entry
        for entry in model_dir.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.name not in _IGNORED_NAMES
    )
    digest = hashlib.sha256()
    snapshot = _hub_snapshot_commit(model_dir)
    if snapshot is not None:
        repo_folder, commit = snapshot
        digest.update(f"hub-snapshot\0{repo_folder}\0{commit}\n".encode())
        for entry in files:
            digest.update(f"{entry.name}\0{entry.stat().st_size}\n".encode())
    else:
        digest.update(b"folder\n")
        for entry in files:
            size = entry.stat().st_size
            digest.update(f"{entry.name}\0{size}\0{_file_digest(entry, size)}\n".encode())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]
