"""The artifact store's protocol when several ranks run one job (msa_bench/distributed.py): rank 0 decides, writes.

For each artifact, in the same order on every rank (the pipeline is deterministic):
1. every rank checks that it computed rank 0's key (a rank with another config, data or code would otherwise wait for
   an artifact nobody builds);
2. rank 0 looks the entry up, under the key's file lock if it is missing (the lock is for concurrent *jobs*, a
   sweep; ranks never touch it), and broadcasts what it found: cached, or to be built;
3. a collective build (training) runs on every rank; the other ranks build into a throwaway scratch folder and skip
   the save (msa_bench/models/build.py); a non-collective build runs on rank 0 alone while the others wait;
4. rank 0 broadcasts the outcome (done, or its error), and the other ranks read the entry rank 0 wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from msa_bench.distributed import (
    broadcast_object,
    is_main_process,
    main_process_alone,
    rank,
    require_same_on_all_ranks,
)
from msa_bench.errors import ArtifactError, DistributedError, RankZeroFailedError
from msa_bench.progress import current_progress
from msa_bench.training.scratch import scratch_folder

log = logging.getLogger("msa_bench.artifacts")

CACHED, BUILD_TOGETHER, BUILD_ON_MAIN = "cached", "build together", "build on rank 0"


def get_or_build_in_lockstep(store, kind: str, key: str, spec: Mapping, build, *, collective: bool):
    """`ArtifactStore.get_or_build` on one of several ranks (see the module docstring)."""
    require_same_on_all_ranks(key, f"the cache key of the {kind} artifact")
    if is_main_process():
        return _lead(store, kind, key, spec, build, collective)
    return _follow(store, kind, key, build)


def _lead(store, kind: str, key: str, spec: Mapping, build, collective: bool):
    artifact = store.cached(kind, key)
    if artifact is not None:
        broadcast_object(CACHED)
        log.info("reusing %s %s", kind, key)
        return artifact
    if not collective:
        broadcast_object(BUILD_ON_MAIN)
        try:
            with main_process_alone():
                artifact = store.get_or_build_locally(kind, key, spec, build)
        except BaseException as error:
            broadcast_object(f"{type(error).__name__}: {error}")
            raise
        broadcast_object(None)
        return artifact
    with store.locked(kind, key):
        settled = store.settle_locked(kind, key)
        if settled.artifact is not None:
            broadcast_object(CACHED)
            log.info("reusing %s %s", kind, key)
            return settled.artifact
        broadcast_object(BUILD_TOGETHER)
        try:
            artifact = store.build_settled(kind, key, spec, build, settled)
        except BaseException as error:
            broadcast_object(f"{type(error).__name__}: {error}")
            raise
    broadcast_object(None)
    return artifact


def _follow(store, kind: str, key: str, build: Callable[[Path], Mapping | None]):
    decision = broadcast_object(None)
    if decision == BUILD_TOGETHER:
        current_progress().building(kind)
        # This rank's share of the training; what it would write is discarded (rank 0 writes the entry).
        with scratch_folder(store.root) as throwaway:
            build(throwaway)
    if decision != CACHED:
        failure = broadcast_object(None)
        if failure is not None:
            raise RankZeroFailedError(
                f"rank 0 failed to build {kind}/{key} ({failure}); rank {rank()} stops too: see rank 0's message"
            )
    artifact = store.cached(kind, key)
    if artifact is None:
        raise ArtifactError(
            f"rank 0 reported {kind}/{key} complete in {store.root}, but rank {rank()} cannot read it there: every "
            "rank needs the same paths.cache_dir, on a filesystem they all share"
        )
    return artifact


def refuse_collective_build(kind: str, key: str, build):
    """A training build that would start while rank 0 runs another stage alone: it would wait forever for ranks
    that are waiting for rank 0. The pipeline builds training stages before the stages that read them, so this is
    a bug of the caller's order; the error names both."""

    def refused(folder: Path):
        raise DistributedError(
            f"{kind}/{key} trains on every rank, but it was first needed inside a stage that rank 0 builds alone; "
            "build it before that stage (e.g. ask the pipeline for it first) so that all ranks train it together"
        )

    return refused
