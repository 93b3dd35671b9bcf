"""Tests for the content-addressed artifact cache."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from msa_bench.pipeline.artifacts import ArtifactStore

SPEC = {"model": "tiny-llama", "lr": 1e-4, "steps": 10, "data": Path("/data/forget.jsonl")}


def _write_weights(directory: Path) -> dict:
    (directory / "weights.bin").write_text("weights")
    return {"tokens": 123}


def _build_then_die(root: str) -> None:
    def build(directory: Path) -> dict:
        (directory / "partial.bin").write_text("half written")
        os._exit(3)  # simulates a job killed mid-build: no cleanup, no exception handling

    ArtifactStore(Path(root)).get_or_build("target", SPEC, build)


def _build_concurrently(root: str, counter: str, barrier, results) -> None:
    def build(directory: Path) -> dict:
        with open(counter, "a") as file:
            file.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return _write_weights(directory)

    barrier.wait()
    artifact = ArtifactStore(Path(root)).get_or_build("target", SPEC, build)
    results.put((str(artifact.path), artifact.reused))


def test_build_once_then_reuse(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ArtifactStore(tmp_path)
    calls = []

    def build(directory: Path) -> dict:
        calls.append(directory)
        return _write_weights(directory)

    assert store.lookup("target", SPEC) is None
    with caplog.at_level(logging.INFO, logger="msa_bench.artifacts"):
        first = store.get_or_build("target", SPEC, build)
        second = store.get_or_build("target", dict(reversed(list(SPEC.items()))), build)

    assert len(calls) == 1 and calls[0] != first.path, "build writes into a temporary directory"
    assert not first.reused and second.reused
    assert first.path == second.path == store.path_for("target", SPEC) == tmp_path / "target" / first.key
    assert (first.path / "weights.bin").read_text() == "weights"
    meta = json.loads((first.path / "_artifact.json").read_text())
    assert (
        meta["tokens"] == 123
        and first.meta["tokens"] == 123
        and meta["kind"] == "target"
        and meta["key"] == first.key
    )
    assert meta["spec"]["data"] == "/data/forget.jsonl"
    assert {"created_at", "build_seconds", "msa_bench_version"} <= meta.keys()
    assert second.meta == meta
    assert store.lookup("target", SPEC) == second
    messages = [record.getMessage() for record in caplog.records]
    assert f"building target {first.key}" in messages and f"reusing target {first.key}" in messages
    assert not list((tmp_path / "target").glob(".tmp-*"))


def test_reserved_metadata_key_is_rejected(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        store.get_or_build("target", SPEC, lambda directory: {"spec": "mine"})
    assert store.lookup("target", SPEC) is None


def test_fingerprint() -> None:
    key = ArtifactStore.fingerprint(SPEC)
    assert len(key) == 16 and int(key, 16) >= 0
    assert (
        ArtifactStore.fingerprint(
            {"steps": 10, "lr": 1e-4, "data": "/data/forget.jsonl", "model": "tiny-llama"}
        )
        == key
    )
    assert ArtifactStore.fingerprint({"nested": {"a": 1, "b": [1, 2]}}) == ArtifactStore.fingerprint(
        {"nested": {"b": [1, 2], "a": 1}}
    )
    assert ArtifactStore.fingerprint({**SPEC, "lr": 2e-4}) != key
    assert ArtifactStore.fingerprint({**SPEC, "extra": None}) != key


def test_failed_build_leaves_nothing_and_can_be_retried(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)

    def failing(directory: Path) -> None:
        (directory / "partial.bin").write_text("half written")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        store.get_or_build("target", SPEC, failing)
    assert not store.path_for("target", SPEC).exists()
    assert not list((tmp_path / "target").glob(".tmp-*"))

    artifact = store.get_or_build("target", SPEC, _write_weights)
    assert not artifact.reused and (artifact.path / "weights.bin").exists()
    assert not (artifact.path / "partial.bin").exists()


def test_killed_build_is_not_complete_and_is_rebuilt(tmp_path: Path) -> None:
    process = multiprocessing.get_context("spawn").Process(target=_build_then_die, args=(str(tmp_path),))
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 3

    store = ArtifactStore(tmp_path)
    assert store.lookup("target", SPEC) is None
    assert not store.path_for("target", SPEC).exists()
    assert len(list((tmp_path / "target").glob(".tmp-*"))) == 1, "the killed build leaves its temporary dir"

    artifact = store.get_or_build("target", SPEC, _write_weights)
    assert not artifact.reused and not (artifact.path / "partial.bin").exists()
    assert not list((tmp_path / "target").glob(".tmp-*")), "leftovers are removed under the lock"


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / "oracle" / ".tmp-0123456789abcdef-999999-deadbeef"
    stale.mkdir(parents=True)
    assert ArtifactStore(tmp_path).remove_stale_temporaries() == 1
    assert not stale.exists()


def test_concurrent_jobs_build_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    counter = tmp_path / "builds.txt"
    processes = [
        context.Process(
            target=_build_concurrently, args=(str(tmp_path / "store"), str(counter), barrier, results)
        )
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert len(counter.read_text().splitlines()) == 1
    assert outcomes[0][0] == outcomes[1][0]
    assert sorted(reused for _, reused in outcomes) == [False, True]
