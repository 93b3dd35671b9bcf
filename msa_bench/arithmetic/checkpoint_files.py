"""The files of a Hugging Face checkpoint as state arithmetic sees them: which tensors are in which safetensors file
(read from the headers, never the weights), whether two checkpoints have the same tensors, which files to copy to
an output, whether two checkpoints share a tokenizer vocabulary, and reading the same rows of a tensor from several
checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor

from msa_bench.arithmetic.safetensors_stream import RowChunk, TensorFileReader
from msa_bench.errors import CheckpointNotFoundError, StateArithmeticError

logger = logging.getLogger(__name__)

SINGLE_WEIGHTS_NAME = "model.safetensors"
SHARDED_INDEX_NAME = "model.safetensors.index.json"

# Files that hold weights (or describe where weights are) are never copied from the target: the
# output gets freshly computed weights, and a stale copy would be loaded instead of (or beside) them.
_WEIGHT_FILE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "*.bin.index.json",
)
# ``_artifact.json`` marks a finished entry of the artifact cache; copying it would make ``out_dir``
# look like a completed cache entry for the target's key.
_NEVER_COPIED_NAMES = frozenset({"_artifact.json"})

_MAX_NAMES_IN_MESSAGE = 5


def preview_names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_MAX_NAMES_IN_MESSAGE])
    more = f", ... ({len(names)} in total)" if len(names) > _MAX_NAMES_IN_MESSAGE else ""
    return f"[{shown}{more}]"


def key_mismatch_message(
    source: str, reference: str, missing: Sequence[str], unexpected: Sequence[str]
) -> str:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s) {preview_names(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensor(s) {preview_names(unexpected)}")
    return f"{source}: tensor names differ from {reference}: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# On-disk checkpoints


@dataclass(frozen=True)
class TensorInfo:
    file_name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass
class CheckpointLayout:
    """Where every tensor of a safetensors checkpoint lives, read from the file headers only."""

    directory: Path
    tensors: dict[str, TensorInfo]
    keys_by_file: dict[str, list[str]]
    metadata_by_file: dict[str, dict[str, str] | None]
    index: dict[str, Any] | None

    @property
    def is_sharded(self) -> bool:
        return self.index is not None


def _read_file_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str] | None]:
    if not path.is_file():
        raise CheckpointNotFoundError(f"weights file not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        entries = {}
        for name in handle.keys():
            tensor_slice = handle.get_slice(name)
            entries[name] = (tensor_slice.get_dtype(), tuple(tensor_slice.get_shape()))
        return entries, handle.metadata()


def read_layout(directory: Path) -> CheckpointLayout:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory not found: {directory}")
    single_file = directory / SINGLE_WEIGHTS_NAME
    index_file = directory / SHARDED_INDEX_NAME
    # Same precedence as transformers' from_pretrained: a single weights file wins over an index.
    if single_file.is_file():
        entries, metadata = _read_file_header(single_file)
        tensors = {
            name: TensorInfo(SINGLE_WEIGHTS_NAME, dtype, shape) for name, (dtype, shape) in entries.items()
        }
        return CheckpointLayout(
            directory, tensors, {SINGLE_WEIGHTS_NAME: list(entries)}, {SINGLE_WEIGHTS_NAME: metadata}, None
        )
    if not index_file.is_file():
        raise CheckpointNotFoundError(
            f"no safetensors weights in {directory} (expected {SINGLE_WEIGHTS_NAME} or {SHARDED_INDEX_NAME})"
        )

    index = json.loads(index_file.read_text())
    weight_map: dict[str, str] = index.get("weight_map", {})
    tensors: dict[str, TensorInfo] = {}
    keys_by_file: dict[str, list[str]] = {}
    metadata_by_file: dict[str, dict[str, str] | None] = {}
    for file_name in sorted(set(weight_map.values())):
        entries, metadata = _read_file_header(directory / file_name)
        listed = {name for name, listed_file in weight_map.items() if listed_file == file_name}
        if listed != set(entries):
            raise StateArithmeticError(
                key_mismatch_message(
                    str(directory / file_name),
                    f"its index {index_file}",
                    sorted(listed - set(entries)),
                    sorted(set(entries) - listed),
                )
            )
        keys_by_file[file_name] = list(entries)
        metadata_by_file[file_name] = metadata
        for name, (dtype, shape) in entries.items():
            tensors[name] = TensorInfo(file_name, dtype, shape)
    return CheckpointLayout(directory, tensors, keys_by_file, metadata_by_file, index)


class ChunkReader:
    """Reads the same rows of one tensor from any input checkpoint, each checkpoint's rows once per chunk.

    Files are read with plain reads (see safetensors_stream), so nothing of them stays resident in this process; they
    are opened on first use and closed with the ExitStack given (one output shard's lifetime).
    """

    def __init__(self, layouts: Mapping[Path, CheckpointLayout], exit_stack: ExitStack) -> None:
        self._layouts = layouts
        self._exit_stack = exit_stack
        self._files: dict[Path, TensorFileReader] = {}
        self._chunk: tuple[str, RowChunk] | None = None
        self.loaded: dict[Path, Tensor] = {}  # this chunk's rows of each checkpoint read so far

    def read(self, directory: Path, name: str, chunk: RowChunk) -> Tensor:
        if self._chunk != (name, chunk):
            self._chunk, self.loaded = (name, chunk), {}
        if directory not in self.loaded:
            layout = self._layouts[directory]
            info = layout.tensors[name]
            path = layout.directory / info.file_name
            if path not in self._files:
                self._files[path] = TensorFileReader(path)
                self._exit_stack.callback(self._files[path].close)
            self.loaded[directory] = self._files[path].read_rows(
                name, info.dtype, info.shape, chunk.start, chunk.stop
            )
        return self.loaded[directory]


def check_compatible(target: CheckpointLayout, other: CheckpointLayout) -> None:
    missing = sorted(set(target.tensors) - set(other.tensors))
    unexpected = sorted(set(other.tensors) - set(target.tensors))
    if missing or unexpected:
        raise StateArithmeticError(
            key_mismatch_message(str(other.directory), f"target {target.directory}", missing, unexpected)
        )
    for name, expected in target.tensors.items():
        check_same_tensor_kind(
            name, other.tensors[name], str(other.directory), expected, f"target {target.directory}"
        )


def check_same_tensor_kind(name: str, found: Any, where: str, expected: Any, against: str) -> None:
    """`found` (a tensor, or a header's shape/dtype record, in `where`) has the shape and dtype of `expected` (in
    `against`); else a StateArithmeticError naming the tensor and both places."""
    if tuple(found.shape) != tuple(expected.shape):
        raise StateArithmeticError(
            f"shape mismatch for tensor {name!r}: {where} has {list(found.shape)}, {against} has {list(expected.shape)}"
        )
    if found.dtype != expected.dtype:
        raise StateArithmeticError(
            f"dtype mismatch for tensor {name!r}: {where} has {found.dtype}, {against} has {expected.dtype}"
        )


def _is_weight_file(path: Path) -> bool:
    return any(path.match(pattern) for pattern in _WEIGHT_FILE_PATTERNS)


def copy_non_weight_files(source: Path, destination: Path) -> None:
    for entry in sorted(source.iterdir()):
        # Hidden entries are tool caches and lock files (e.g. huggingface_hub's .cache), not model files.
        if entry.name.startswith(".") or entry.name in _NEVER_COPIED_NAMES or _is_weight_file(entry):
            continue
        if entry.is_dir():
            shutil.copytree(entry, destination / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, destination / entry.name)


def remove_stale_weights(directory: Path) -> None:
    # A previous run may have used another shard layout; leftover shards or an index would otherwise
    # be picked up next to the new weights.
    for entry in directory.iterdir():
        if entry.is_file() and _is_weight_file(entry):
            logger.info("removing stale weights file %s", entry)
            entry.unlink()


# Files that define a tokenizer's vocabulary, whichever format a checkpoint saved it in.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")


def _vocabulary_digest(path: Path) -> str:
    """A digest of what maps token strings to embedding rows, not of the file's bytes: save_pretrained re-serialises
    tokenizer.json, and a base and an instruct release may differ in templates or post-processing while sharing
    every row."""
    if path.name == "tokenizer.json":
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data.get("model", {})
        payload = {
            "type": model.get("type"),
            "vocab": model.get("vocab"),
            "merges": model.get("merges"),
            "added": sorted((t.get("id"), t.get("content")) for t in data.get("added_tokens", [])),
        }
        content = json.dumps(payload, sort_keys=True).encode()
    elif path.name == "vocab.json":
        content = json.dumps(json.loads(path.read_text(encoding="utf-8")), sort_keys=True).encode()
    else:
        content = path.read_bytes()
    return hashlib.sha256(content).hexdigest()


def _tokenizer_fingerprint(model_dir: Path) -> dict[str, str]:
    return {
        name: _vocabulary_digest(model_dir / name)
        for name in _TOKENIZER_FILES
        if (model_dir / name).is_file()
    }


def check_tokenizers_match(target: Path, others: Sequence[Path]) -> None:
    """Refuse arithmetic between checkpoints whose tokenizers differ: the same embedding row would then stand for
    different tokens. Checkpoints that saved no tokenizer files are not compared."""
    reference = _tokenizer_fingerprint(Path(target))
    for other in others:
        fingerprint = _tokenizer_fingerprint(Path(other))
        shared = set(reference) & set(fingerprint)
        differing = sorted(name for name in shared if reference[name] != fingerprint[name])
        if differing:
            raise StateArithmeticError(
                f"the tokenizer of {other} differs from that of the target {target} ({', '.join(differing)}); "
                "model states with different vocabularies cannot be combined"
            )
