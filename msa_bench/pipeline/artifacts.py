"""Content-addressed, crash-safe cache for pipeline artifacts (checkpoints, vectors, evaluations).

An artifact lives at ``root/<kind>/<key>`` where ``key`` fingerprints the configuration it depends
on, so a second run that only changes the unlearning method or α reuses the expensive stages.
Artifacts are built in a private temporary directory and moved into place with one atomic rename,
after their ``_artifact.json`` marker is written: a directory without the marker is never read.
A per-key file lock makes concurrent jobs of a sweep build each artifact once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from msa_bench import __version__
from msa_bench.progress import current_progress

logger = logging.getLogger("msa_bench.artifacts")

MARKER_NAME = "_artifact.json"
_TMP_PREFIX = ".tmp-"
RESERVED_META_KEYS = frozenset({"kind", "key", "spec", "created_at", "build_seconds", "msa_bench_version"})
_KIND_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Artifact:
    """A complete artifact: its files are under ``path``.

    ``meta`` is the content of ``_artifact.json``: the metadata returned by the build (e.g. ``cost``)
    at the top level, next to the bookkeeping fields in ``RESERVED_META_KEYS``.
    """

    kind: str
    key: str
    path: Path
    meta: dict
    reused: bool


def _canonical(value: Any) -> Any:
    """Convert ``value`` to plain JSON types with a deterministic order (sets sorted, Paths as str)."""
    if isinstance(value, Mapping):
        return {str(name): _canonical(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [_canonical(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _canonical_json(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _fsync_directory(directory: Path) -> None:
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


class ArtifactStore:
    """Cache of pipeline artifacts under ``root``, safe for concurrent jobs and killed processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def fingerprint(spec: Mapping) -> str:
        """First 16 hex chars of the sha256 of the spec's canonical JSON (independent of dict order)."""
        return hashlib.sha256(_canonical_json(spec).encode("utf-8")).hexdigest()[:16]

    def _kind_dir(self, kind: str) -> Path:
        if not _KIND_PATTERN.match(kind):
            raise ValueError(
                f"artifact kind must be a simple name (letters, digits, '_', '-', '.'), got {kind!r}"
            )
        return self.root / kind

    def path_for(self, kind: str, spec: Mapping) -> Path:
        """Final location of the artifact for ``spec`` (it may not exist yet)."""
        return self._kind_dir(kind) / self.fingerprint(spec)

    def _load(self, kind: str, key: str, *, reused: bool) -> Artifact | None:
        path = self._kind_dir(kind) / key
        marker = path / MARKER_NAME
        if not marker.is_file():
            return None
        return Artifact(kind=kind, key=key, path=path, meta=json.loads(marker.read_text()), reused=reused)

    def lookup(self, kind: str, spec: Mapping) -> Artifact | None:
        """The complete artifact for ``spec``, or None."""
        return self._load(kind, self.fingerprint(spec), reused=True)

    def get_or_build(self, kind: str, spec: Mapping, build: Callable[[Path], Mapping | None]) -> Artifact:
        """Return the artifact for ``spec``, calling ``build(tmp_dir)`` only if no complete one exists.

        ``build`` writes its files into ``tmp_dir`` and may return JSON-serialisable metadata (e.g.
        cost figures), stored at the top level of ``Artifact.meta``; its keys must not be one of
        ``RESERVED_META_KEYS``. The directory is renamed afterwards, so ``build`` must not record absolute
        paths inside it. If ``build`` raises, nothing is kept and the error propagates.
        """
        # The console shows a build inside the stage that needed it (msa_bench/progress.py); nothing else changes.
        key = self.fingerprint(spec)
        with current_progress().artifact(kind, key):
            return self._get_or_build(kind, key, spec, build)

    def _get_or_build(
        self, kind: str, key: str, spec: Mapping, build: Callable[[Path], Mapping | None]
    ) -> Artifact:
        existing = self._load(kind, key, reused=True)
        if existing is not None:
            logger.info("reusing %s %s", kind, key)
            return existing

        kind_dir = self._kind_dir(kind)
        kind_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(kind_dir / f"{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("waiting for another job building %s %s", kind, key)
            lock.acquire()
        try:
            # Another job may have finished this artifact while we waited for the lock.
            existing = self._load(kind, key, reused=True)
            if existing is not None:
                logger.info("reusing %s %s", kind, key)
                return existing
            self._remove_leftovers(kind_dir, key)
            logger.info("building %s %s", kind, key)
            current_progress().building(kind)
            return self._build(kind, key, spec, build)
        finally:
            lock.release()

    def _build(self, kind: str, key: str, spec: Mapping, build: Callable[[Path], Mapping | None]) -> Artifact:
        kind_dir = self._kind_dir(kind)
        tmp_dir = kind_dir / f"{_TMP_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp_dir.mkdir()
        try:
            started = time.perf_counter()
            extra = build(tmp_dir)
            build_seconds = time.perf_counter() - started
            if extra is not None and not isinstance(extra, Mapping):
                raise TypeError(f"build for {kind} must return a mapping or None, got {type(extra).__name__}")
            metadata = _canonical(extra or {})
            clashes = sorted(RESERVED_META_KEYS & metadata.keys())
            if clashes:
                raise ValueError(f"build for {kind} returned reserved metadata keys {clashes}")
            record = {
                **metadata,
                "kind": kind,
                "key": key,
                "spec": _canonical(spec),
                "created_at": datetime.now(UTC).isoformat(),
                "build_seconds": build_seconds,
                "msa_bench_version": __version__,
            }
            with open(tmp_dir / MARKER_NAME, "w") as marker:
                json.dump(record, marker, indent=2, sort_keys=True)
                marker.flush()
                os.fsync(marker.fileno())
            final = kind_dir / key
            if final.exists():
                # Only reachable if something other than this store created it; we hold the lock.
                logger.warning("replacing incomplete artifact directory %s", final)
                shutil.rmtree(final)
            os.replace(tmp_dir, final)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        _fsync_directory(kind_dir)
        return Artifact(kind=kind, key=key, path=final, meta=record, reused=False)

    @staticmethod
    def _remove_leftovers(kind_dir: Path, key: str) -> None:
        # The caller holds the key's lock, so any temporary directory for this key belongs to a
        # builder that died (lock released by the OS) and will never be finished.
        for leftover in kind_dir.glob(f"{_TMP_PREFIX}{key}-*"):
            logger.info("removing leftover %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def remove_stale_temporaries(self) -> int:
        """Delete temporary directories of dead builders under every kind; returns how many.

        A temporary directory is stale when its key's lock can be taken right away: a live builder
        holds that lock for as long as its directory exists. Works across hosts sharing ``root``.
        """
        removed = 0
        if not self.root.is_dir():
            return removed
        for kind_dir in sorted(path for path in self.root.iterdir() if path.is_dir()):
            keys = {
                path.name[len(_TMP_PREFIX) :].split("-", 1)[0] for path in kind_dir.glob(f"{_TMP_PREFIX}*")
            }
            for key in sorted(keys):
                lock = FileLock(str(kind_dir / f"{key}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    leftovers = list(kind_dir.glob(f"{_TMP_PREFIX}{key}-*"))
                    self._remove_leftovers(kind_dir, key)
                    removed += len(leftovers)
                finally:
                    lock.release()
        return removed
