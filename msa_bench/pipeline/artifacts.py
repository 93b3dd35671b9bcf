"""Content-addressed, verified, crash-safe cache for pipeline artifacts (checkpoints, vectors, evaluations).

An artifact lives at ``root/<kind>/<key>`` where ``key`` fingerprints the configuration it depends
on, so a second run that only changes the unlearning method or α reuses the expensive stages.
Artifacts are built in a private temporary directory and moved into place with one atomic rename,
after their ``_artifact.json`` marker is written: a directory without the marker is never read.
A per-key file lock makes concurrent jobs of a sweep build each artifact once.

The marker records every file's relative path, size and sha256, and a ``content`` digest of that list
(msa_bench/pipeline/manifest.py). Reading an entry checks every size, always, and every hash on the
entry's first read in a process, or on every read with ``ArtifactStore(root, verify=True)``
(``cache.verify=true``). An entry that differs from its record is never served: it is moved, under its
key's lock, to ``root/.quarantine/<kind>-<key>-<UTC time>/`` (kept for inspection, never deleted) and
rebuilt. ``Artifact.content_key`` (the key plus the content digest) is what downstream keys are made of,
so a rebuilt entry with other bytes never serves stale downstream entries.

Entries built by msa_bench before file lists were recorded have no list to check. They are adopted: the
first read records their files as they are now (the marker is rewritten atomically, under the lock) and
logs a WARNING that they could not be checked against their build. Refusing them would stop every run
until the cache is cleared by hand. From then on they are checked like any other entry. (Only entries made
from no other entry, such as the generated world or a hub-model copy, are found again after the upgrade:
the keys of the others now carry their inputs' content digests, so those are rebuilt once.)

Cleanup only ever touches names this store writes (``.tmp-<key>-<pid>-<hex>`` temporaries; with
``orphans``, 16-hex entry folders without a marker, which go to the quarantine), so a root shared with
other tools loses nothing of theirs.
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from msa_bench import __version__
from msa_bench.distributed import in_lockstep, is_distributed
from msa_bench.errors import ArtifactError, MSABenchError
from msa_bench.pipeline.lockstep import get_or_build_in_lockstep, refuse_collective_build
from msa_bench.pipeline.manifest import (
    MARKER_NAME,
    canonical,
    canonical_json,
    content_digest,
    find_mismatch,
    fsync_directory,
    record_files,
    write_marker,
)
from msa_bench.progress import current_progress
from msa_bench.training.scratch import remove_stale_scratch

logger = logging.getLogger("msa_bench.artifacts")

QUARANTINE_DIR = ".quarantine"
_TMP_PREFIX = ".tmp-"
RESERVED_META_KEYS = frozenset(
    {"kind", "key", "spec", "created_at", "build_seconds", "msa_bench_version", "files", "content"}
)
_KIND_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The names this store writes inside a kind's folder: entries (a fingerprint) and a builder's temporary directory.
_KEY_NAME = re.compile(r"^[0-9a-f]{16}$")
_TEMPORARY_NAME = re.compile(r"^\.tmp-([0-9a-f]{16})-\d+-[0-9a-f]+$")
# Entries whose every hash was checked in this process, as (folder, content digest): later reads check sizes only.
_HASHED_THIS_PROCESS: set[tuple[str, str]] = set()


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

    @property
    def content(self) -> str:
        """The sha256 of the entry's file list (every file's path, size and sha256)."""
        return self.meta["content"]

    @property
    def content_key(self) -> str:
        """The key downstream keys are made of: the store key and the content digest, so that an input rebuilt
        with other bytes gives its dependants other keys."""
        return f"{self.key}@{self.content[:16]}"


@dataclass(frozen=True)
class EntryCheck:
    """What reading one entry found: the checked artifact, or why there is none."""

    artifact: Artifact | None
    problem: str | None = None  # what differs from the record, when the entry was corrupt
    quarantined_to: Path | None = None  # where the corrupt entry was moved
    adopted: bool = False  # an entry of an older msa_bench whose file list was recorded just now


class ArtifactStore:
    """Cache of pipeline artifacts under ``root``, safe for concurrent jobs and killed processes.

    ``verify=True`` rehashes every file of an entry on each read; by default each entry is hashed on its first
    read in a process and only its sizes are checked afterwards.
    """

    def __init__(self, root: Path, verify: bool = False) -> None:
        self.root = Path(root)
        self.verify = verify

    @staticmethod
    def fingerprint(spec: Mapping) -> str:
        """First 16 hex chars of the sha256 of the spec's canonical JSON (independent of dict order)."""
        return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()[:16]

    def _kind_dir(self, kind: str) -> Path:
        if not _KIND_PATTERN.match(kind):
            raise ValueError(
                f"artifact kind must be a simple name (letters, digits, '_', '-', '.'), got {kind!r}"
            )
        return self.root / kind

    def path_for(self, kind: str, spec: Mapping) -> Path:
        """Final location of the artifact for ``spec`` (it may not exist yet)."""
        return self._kind_dir(kind) / self.fingerprint(spec)

    def contains(self, kind: str, spec: Mapping) -> bool:
        """Whether a complete entry for ``spec`` exists, without checking its files (for log lines only)."""
        return (self.path_for(kind, spec) / MARKER_NAME).is_file()

    # ------------------------------------------------------------------ reading and checking
    def _read(self, kind: str, key: str) -> EntryCheck | dict:
        """The checked entry, or its marker when it records no file list (an older msa_bench built it)."""
        path = self._kind_dir(kind) / key
        marker = path / MARKER_NAME
        if not marker.is_file():
            return EntryCheck(None)
        try:
            meta = json.loads(marker.read_text())
        except (OSError, ValueError) as error:
            return EntryCheck(None, problem=f"{MARKER_NAME}: unreadable ({error})")
        if not isinstance(meta, dict):
            return EntryCheck(None, problem=f"{MARKER_NAME}: not a JSON object")
        files = meta.get("files")
        if files is None:
            return meta
        try:
            consistent = content_digest(files) == meta.get("content")
        except (AttributeError, KeyError, TypeError):
            consistent = False  # not a {path: {"size", "sha256"}} mapping
        if not consistent:
            return EntryCheck(None, problem=f"{MARKER_NAME}: its file list does not match its content digest")
        memo = (str(path), meta["content"])
        hashes = self.verify or memo not in _HASHED_THIS_PROCESS
        mismatch = find_mismatch(path, files, hashes=hashes)
        if mismatch is not None:
            _HASHED_THIS_PROCESS.discard(memo)
            return EntryCheck(None, problem=mismatch)
        if hashes:
            _HASHED_THIS_PROCESS.add(memo)
        return EntryCheck(Artifact(kind=kind, key=key, path=path, meta=meta, reused=True))

    def settle_locked(self, kind: str, key: str) -> EntryCheck:
        """Read an entry whose lock the caller holds: adopt an older entry, or move a corrupt one aside."""
        reading = self._read(kind, key)
        if isinstance(reading, dict):
            return EntryCheck(self._adopt(kind, key, reading), adopted=True)
        if reading.problem is None:
            return reading
        moved = self._quarantine(kind, key, reading.problem)
        return EntryCheck(None, problem=reading.problem, quarantined_to=moved)

    def check(self, kind: str, key: str) -> EntryCheck:
        """Read the entry ``kind/key``, taking its lock only when it has to be adopted or moved aside."""
        reading = self._read(kind, key)
        if isinstance(reading, EntryCheck) and reading.problem is None:
            return reading
        with self.locked(kind, key):
            return self.settle_locked(kind, key)

    def _adopt(self, kind: str, key: str, meta: dict) -> Artifact:
        path = self._kind_dir(kind) / key
        files = record_files(path)
        record = {**meta, "files": files, "content": content_digest(files)}
        write_marker(path / MARKER_NAME, record)
        _HASHED_THIS_PROCESS.add((str(path), record["content"]))
        logger.warning(
            "cache entry %s/%s was built by msa_bench %s, which recorded no file list: recorded its %d files as "
            "they are now, so it could not be checked against its build (delete %s to rebuild it)",
            kind,
            key,
            meta.get("msa_bench_version", "(unknown version)"),
            len(files),
            path,
        )
        return Artifact(kind=kind, key=key, path=path, meta=record, reused=True)

    def _quarantine(self, kind: str, key: str, problem: str) -> Path:
        """Move a corrupt entry to ``root/.quarantine/<kind>-<key>-<UTC time>/``; the caller holds the lock."""
        quarantine = self.root / QUARANTINE_DIR
        quarantine.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        destination = quarantine / f"{kind}-{key}-{stamp}"
        suffix = 1
        while destination.exists():
            suffix += 1
            destination = quarantine / f"{kind}-{key}-{stamp}-{suffix}"
        shutil.move(self._kind_dir(kind) / key, destination)
        logger.warning("cache entry %s/%s is corrupt (%s): moved it to %s", kind, key, problem, destination)
        return destination

    def lookup(self, kind: str, spec: Mapping) -> Artifact | None:
        """The complete, checked artifact for ``spec``, or None (also when it was corrupt and moved aside)."""
        return self.check(kind, self.fingerprint(spec)).artifact

    # ------------------------------------------------------------------ building
    def get_or_build(
        self, kind: str, spec: Mapping, build: Callable[[Path], Mapping | None], *, collective: bool = False
    ) -> Artifact:
        """Return the artifact for ``spec``, calling ``build(tmp_dir)`` only if no complete one exists.

        With several ranks, rank 0 decides and writes (msa_bench/pipeline/lockstep.py): ``collective=True`` (a build
        that calls ``run_training``) runs the build on every rank, any other build runs on rank 0 alone.

        ``build`` writes its files into ``tmp_dir`` and may return JSON-serialisable metadata (e.g.
        cost figures), stored at the top level of ``Artifact.meta``; its keys must not be one of
        ``RESERVED_META_KEYS``. The directory is renamed afterwards, so ``build`` must not record absolute
        paths inside it. If ``build`` raises, nothing is kept and the error propagates.

        Raises:
            ArtifactError: the entry was corrupt, was moved aside, and rebuilding it raised an MSABenchError
                (another error keeps its type and traceback, with a note naming the corrupt entry).
        """
        # The console shows a build inside the stage that needed it (msa_bench/progress.py); nothing else changes.
        key = self.fingerprint(spec)
        with current_progress().artifact(kind, key):
            if in_lockstep():
                return get_or_build_in_lockstep(self, kind, key, spec, build, collective=collective)
            if collective and is_distributed():  # rank 0 alone, inside another stage's build
                build = refuse_collective_build(kind, key, build)
            return self.get_or_build_locally(kind, key, spec, build)

    def cached(self, kind: str, key: str) -> Artifact | None:
        """The complete, checked entry ``kind/key`` if there is one now (read without the lock)."""
        reading = self._read(kind, key)
        return reading.artifact if isinstance(reading, EntryCheck) else None

    def get_or_build_locally(
        self, kind: str, key: str, spec: Mapping, build: Callable[[Path], Mapping | None]
    ) -> Artifact:
        """`get_or_build` in this process alone (one process, or rank 0 while the other ranks wait)."""
        artifact = self.cached(kind, key)
        if artifact is not None:
            logger.info("reusing %s %s", kind, key)
            return artifact
        with self.locked(kind, key):
            # Another job may have finished (or moved aside) this artifact while we waited for the lock.
            settled = self.settle_locked(kind, key)
            if settled.artifact is not None:
                logger.info("reusing %s %s", kind, key)
                return settled.artifact
            return self.build_settled(kind, key, spec, build, settled)

    def build_settled(
        self, kind: str, key: str, spec: Mapping, build: Callable[[Path], Mapping | None], settled: EntryCheck
    ) -> Artifact:
        """Build an entry that `settle_locked` found missing; the caller holds the key's lock."""
        kind_dir = self._kind_dir(kind)
        self._remove_leftovers(kind_dir, key)
        if settled.quarantined_to is not None:
            logger.warning("rebuilding %s %s (the corrupt copy is in %s)", kind, key, settled.quarantined_to)
        else:
            logger.info("building %s %s", kind, key)
        current_progress().building(kind)
        try:
            return self._build(kind, key, spec, build)
        except Exception as error:
            if settled.quarantined_to is None:
                raise
            explanation = (
                f"cache entry {kind}/{key} was corrupt ({settled.problem}) and was moved to "
                f"{settled.quarantined_to}; rebuilding it failed: {error}. Fix that and run the same command "
                f"again to rebuild {kind}/{key} (the moved copy is kept for inspection; "
                "`msa-bench cache prune --quarantine` deletes it)"
            )
            if isinstance(error, MSABenchError):
                raise ArtifactError(explanation) from error
            error.add_note(explanation)
            raise

    @contextmanager
    def locked(self, kind: str, key: str) -> Iterator[None]:
        """The key's file lock, which makes concurrent jobs (a sweep) build each entry once."""
        kind_dir = self._kind_dir(kind)
        kind_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(kind_dir / f"{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("waiting for another job building %s %s", kind, key)
            lock.acquire()
        try:
            yield
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
            metadata = canonical(extra or {})
            clashes = sorted(RESERVED_META_KEYS & metadata.keys())
            if clashes:
                raise ValueError(f"build for {kind} returned reserved metadata keys {clashes}")
            files = record_files(tmp_dir)
            record = {
                **metadata,
                "kind": kind,
                "key": key,
                "spec": canonical(spec),
                "created_at": datetime.now(UTC).isoformat(),
                "build_seconds": build_seconds,
                "msa_bench_version": __version__,
                "files": files,
                "content": content_digest(files),
            }
            write_marker(tmp_dir / MARKER_NAME, record)
            final = kind_dir / key
            if final.exists():
                # Only reachable if something other than this store created it; we hold the lock.
                logger.warning("replacing incomplete artifact directory %s", final)
                shutil.rmtree(final)
            os.replace(tmp_dir, final)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        fsync_directory(kind_dir)
        _HASHED_THIS_PROCESS.add((str(final), record["content"]))
        return Artifact(kind=kind, key=key, path=final, meta=record, reused=False)

    # ------------------------------------------------------------------ housekeeping
    def kind_dirs(self) -> list[Path]:
        """The folders of every artifact kind (not the quarantine, the scratch folders or lock files)."""
        if not self.root.is_dir():
            return []
        return sorted(
            path for path in self.root.iterdir() if path.is_dir() and _KIND_PATTERN.match(path.name)
        )

    def entry_meta(self, kind: str, key: str) -> dict | None:
        """The marker of entry ``kind/key`` as recorded, without checking the files (None if unreadable)."""
        try:
            meta = json.loads((self._kind_dir(kind) / key / MARKER_NAME).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def entry_keys(self) -> list[tuple[str, str]]:
        """(kind, key) of every complete entry, checked or not."""
        return [
            (kind_dir.name, entry.name)
            for kind_dir in self.kind_dirs()
            for entry in sorted(kind_dir.iterdir())
            if not entry.name.startswith(".") and (entry / MARKER_NAME).is_file()
        ]

    @staticmethod
    def _remove_leftovers(kind_dir: Path, key: str) -> None:
        # The caller holds the key's lock, so any temporary directory for this key belongs to a
        # builder that died (lock released by the OS) and will never be finished.
        for leftover in kind_dir.glob(f"{_TMP_PREFIX}{key}-*"):
            logger.info("removing leftover %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def stale_folders(self, *, remove: bool = False, orphans: bool = False) -> list[Path]:
        """Temporary directories of dead builders (``.tmp-<key>-<pid>-<hex>``); with ``orphans``, also entry folders
        (named like a key) without a marker. With ``remove``, temporaries are deleted and orphans moved to the
        quarantine, under their key's lock so that no builder starts on them meanwhile. Returns what it found (or
        removed).

        Only names this store writes are considered, so a cache root shared with other tools loses nothing of
        theirs. A folder is stale when its key's lock can be taken right away: a live builder holds that lock for as
        long as its directory exists. Works across hosts sharing ``root``.
        """
        stale: list[Path] = []
        for kind_dir in self.kind_dirs():
            by_key: dict[str, list[Path]] = {}
            for path in sorted(kind_dir.iterdir()):
                temporary = _TEMPORARY_NAME.match(path.name)
                if temporary:
                    by_key.setdefault(temporary.group(1), []).append(path)
                elif (
                    orphans
                    and _KEY_NAME.match(path.name)
                    and path.is_dir()
                    and not (path / MARKER_NAME).exists()
                ):
                    by_key.setdefault(path.name, []).append(path)
            for key, paths in by_key.items():
                lock = FileLock(str(kind_dir / f"{key}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    for path in paths:
                        is_temporary = path.name.startswith(_TMP_PREFIX)
                        if not path.exists() or (not is_temporary and (path / MARKER_NAME).exists()):
                            continue  # finished or removed by another process between the listing and the lock
                        stale.append(path)
                        if remove and is_temporary:
                            logger.info("removing stale %s", path)
                            shutil.rmtree(path, ignore_errors=True)
                        elif (
                            remove
                        ):  # an entry that lost its marker may still hold hours of training: keep it
                            self._quarantine(kind_dir.name, key, f"no {MARKER_NAME}")
                finally:
                    lock.release()
        return stale

    def remove_stale_temporaries(self) -> int:
        """Delete temporary directories of dead builders; returns how many."""
        return len(self.stale_folders(remove=True))

    def sweep(self) -> tuple[int, int]:
        """Remove what killed processes left behind: stale temporaries, and scratch folders of dead processes on
        this host. Returns (temporaries, scratch folders) removed."""
        return self.remove_stale_temporaries(), len(remove_stale_scratch(self.root))
