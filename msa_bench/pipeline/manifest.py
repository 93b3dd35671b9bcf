"""What a cache entry's `_artifact.json` marker records, and how it is written.

The spec's canonical JSON (its fingerprint is the entry's key), and the file list: every file's relative path, size
and sha256, and one `content` digest of them all.

An entry's `_artifact.json` records this list when the entry is built. Reading the entry compares the files on disk
with it: sizes are a `stat` per file (always checked), hashes read every byte (checked once per process, or on every
read with `cache.verify=true`). The `content` digest names the bytes of the entry, so a key made from it changes
whenever a rebuilt entry holds different bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MARKER_NAME = "_artifact.json"
# Read in 1 MiB chunks: a multi-GB safetensors file is hashed without holding it in memory.
_CHUNK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def record_files(folder: Path) -> dict[str, dict]:
    """`{relative posix path: {"size", "sha256"}}` for every file under `folder` but the marker (and its partial
    copies): the files the build wrote."""
    files: dict[str, dict] = {}
    for directory, subdirectories, names in os.walk(folder):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if relative.startswith(MARKER_NAME):
                continue
            files[relative] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return files


def content_digest(files: Mapping[str, Mapping]) -> str:
    """The sha256 of the canonical JSON of a file list: equal lists, equal digests, whatever the dict order."""
    canonical = json.dumps(
        {name: {"size": entry["size"], "sha256": entry["sha256"]} for name, entry in files.items()},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _unreadable(name: str, entry: Mapping, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"{name}: missing (recorded {entry['size']} bytes)"
    return f"{name}: unreadable ({error.strerror or error})"


def find_mismatch(folder: Path, files: Mapping[str, Mapping], *, hashes: bool) -> str | None:
    """What differs between `folder` and its recorded file list, as "<file>: <what>", or None when nothing does.

    Sizes are compared first for every file (cheap), then, with `hashes`, the sha256 of each file.
    """
    for name, entry in files.items():
        try:
            size = (folder / name).stat().st_size
        except OSError as error:
            return _unreadable(name, entry, error)
        if size != entry["size"]:
            return f"{name}: size {size} bytes vs {entry['size']} recorded"
    if hashes:
        for name, entry in files.items():
            # Another process may move the entry aside (it found it corrupt) while this one hashes it: a file gone
            # or unreadable is a mismatch too, which sends the caller to the lock and the rebuilt entry.
            try:
                actual = file_sha256(folder / name)
            except OSError as error:
                return _unreadable(name, entry, error)
            if actual != entry["sha256"]:
                return f"{name}: sha256 {actual[:16]}… vs {entry['sha256'][:16]}… recorded (same size)"
    return None


def canonical(value: Any) -> Any:
    """Convert ``value`` to plain JSON types with a deterministic order (sets sorted, Paths as str)."""
    if isinstance(value, Mapping):
        return {str(name): canonical(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [canonical(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fsync_directory(directory: Path) -> None:
    # Makes the rename durable; some platforms cannot open directories, which only costs durability.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_marker(path: Path, record: Mapping) -> None:
    """Write ``record`` as ``path`` atomically: a reader sees the old marker or the new one, never a part."""
    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(partial, "w") as marker:
        json.dump(record, marker, indent=2, sort_keys=True)
        marker.flush()
        os.fsync(marker.fileno())
    os.replace(partial, path)
