"""Tests for the content-addressed artifact cache."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msa_bench.errors import ArtifactError, StageError
from msa_bench.pipeline import artifacts, manifest
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.manifest import content_digest
from msa_bench.pipeline.refs import ModelRef
from msa_bench.training import scratch

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


# ---------------------------------------------------------------------- verified entries (issue 12, item 1)

PAYLOAD = bytes(range(256)) * 64  # 16 KiB: room for 4 KiB of 0xFF in the middle


def _write_model(directory: Path) -> dict:
    (directory / "model.safetensors").write_bytes(PAYLOAD)
    (directory / "sub").mkdir()
    (directory / "sub" / "config.json").write_text('{"layers": 2}')
    return {}


@pytest.fixture
def new_process(monkeypatch: pytest.MonkeyPatch):
    """Forget which entries this process has hashed, as a fresh process would (returns the forgetting call)."""
    monkeypatch.setattr(artifacts, "_HASHED_THIS_PROCESS", set())
    return lambda: artifacts._HASHED_THIS_PROCESS.clear()


def _truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:1000])
    return f"model.safetensors: size 1000 bytes vs {len(PAYLOAD)} recorded"


def _overwrite_middle(path: Path) -> str:
    with open(path, "r+b") as file:
        file.seek(len(PAYLOAD) // 2)
        file.write(b"\xff" * 4096)
    return "model.safetensors: sha256 "


def test_marker_records_every_file_with_size_and_hash(tmp_path: Path) -> None:
    artifact = ArtifactStore(tmp_path).get_or_build("target", SPEC, _write_model)
    files = json.loads((artifact.path / "_artifact.json").read_text())["files"]
    assert files == {
        "model.safetensors": {"size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()},
        "sub/config.json": {"size": 13, "sha256": hashlib.sha256(b'{"layers": 2}').hexdigest()},
    }
    assert artifact.content == content_digest(files) == artifact.meta["content"]
    assert artifact.content_key == f"{artifact.key}@{artifact.content[:16]}"


@pytest.mark.parametrize("corrupt", [_truncate, _overwrite_middle], ids=["truncated", "same-size"])
def test_corrupt_entry_is_quarantined_and_rebuilt(tmp_path: Path, caplog, new_process, corrupt) -> None:
    store = ArtifactStore(tmp_path)
    built = store.get_or_build("target", SPEC, _write_model)
    expected = corrupt(built.path / "model.safetensors")
    new_process()

    with caplog.at_level(logging.INFO, logger="msa_bench.artifacts"):
        rebuilt = store.get_or_build("target", SPEC, _write_model)

    assert not rebuilt.reused and (rebuilt.path / "model.safetensors").read_bytes() == PAYLOAD
    [moved] = list((tmp_path / ".quarantine").iterdir())
    assert moved.name.startswith(f"target-{built.key}-") and moved.name.endswith("Z")
    assert (moved / "model.safetensors").read_bytes() != PAYLOAD, "the corrupt copy is kept as it was"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"cache entry target/{built.key} is corrupt" in warnings[0] and expected in warnings[0]
    assert str(moved) in warnings[0]
    assert warnings[1] == f"rebuilding target {built.key} (the corrupt copy is in {moved})"


def test_lookup_moves_a_corrupt_entry_aside_and_returns_none(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    built = store.get_or_build("target", SPEC, _write_model)
    (built.path / "sub" / "config.json").unlink()
    assert store.lookup("target", SPEC) is None
    assert not built.path.exists() and len(list((tmp_path / ".quarantine").iterdir())) == 1


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = manifest.file_sha256

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(manifest, "file_sha256", counting)
    return hashed


def test_by_default_hashes_are_checked_on_first_use_in_a_process_only(
    tmp_path, monkeypatch, new_process
) -> None:
    store = ArtifactStore(tmp_path)
    built = store.get_or_build("target", SPEC, _write_model)
    hashed = _count_hashes(monkeypatch)
    assert store.lookup("target", SPEC) is not None and hashed == [], "just built: already hashed"

    new_process()
    for _ in range(3):
        assert store.lookup("target", SPEC) is not None
    assert len(hashed) == 2, "two files, hashed on the first read only"

    _overwrite_middle(built.path / "model.safetensors")
    assert store.lookup("target", SPEC) is not None, (
        "sizes match: a later read in this process trusts the hash"
    )
    new_process()
    assert store.lookup("target", SPEC) is None, "the next process finds it"


def test_verify_rehashes_on_every_read(tmp_path, monkeypatch) -> None:
    store = ArtifactStore(tmp_path, verify=True)
    built = store.get_or_build("target", SPEC, _write_model)
    hashed = _count_hashes(monkeypatch)
    for _ in range(3):
        assert store.lookup("target", SPEC) is not None
    assert len(hashed) == 6
    _overwrite_middle(built.path / "model.safetensors")
    assert store.lookup("target", SPEC) is None


def test_failed_rebuild_says_which_entry_was_corrupt_and_where_it_went(tmp_path, new_process) -> None:
    store = ArtifactStore(tmp_path)
    built = store.get_or_build("target", SPEC, _write_model)
    _truncate(built.path / "model.safetensors")

    def failing(directory: Path) -> None:
        raise StageError("benchmark.data_dir=/nowhere does not exist")

    with pytest.raises(ArtifactError) as raised:
        store.get_or_build("target", SPEC, failing)
    [moved] = list((tmp_path / ".quarantine").iterdir())
    message = str(raised.value)
    assert f"cache entry target/{built.key} was corrupt (model.safetensors: size 1000 bytes" in message
    assert f"moved to {moved}" in message and "benchmark.data_dir=/nowhere does not exist" in message
    assert "run the same command again to rebuild" in message
    assert isinstance(raised.value.__cause__, StageError)

    def crashing(directory: Path) -> None:
        raise KeyError("a bug")

    store.get_or_build("target", SPEC, _write_model)
    _truncate(built.path / "model.safetensors")
    with pytest.raises(KeyError) as bug:
        store.get_or_build("target", SPEC, crashing)
    assert any(f"cache entry target/{built.key} was corrupt" in note for note in bug.value.__notes__)


def _make_legacy(path: Path) -> None:
    marker = path / "_artifact.json"
    meta = json.loads(marker.read_text())
    del meta["files"], meta["content"]
    meta["msa_bench_version"] = "0.9.0"
    marker.write_text(json.dumps(meta))


def test_entry_of_an_older_msa_bench_gets_its_file_list_recorded_once(tmp_path, caplog, new_process) -> None:
    store = ArtifactStore(tmp_path)
    built = store.get_or_build("target", SPEC, _write_model)
    _make_legacy(built.path)
    new_process()

    with caplog.at_level(logging.WARNING, logger="msa_bench.artifacts"):
        adopted = store.lookup("target", SPEC)
        again = store.get_or_build("target", SPEC, _write_model)
    [warning] = [r.getMessage() for r in caplog.records]
    assert (
        f"cache entry target/{built.key} was built by msa_bench 0.9.0, which recorded no file list" in warning
    )
    assert "could not be checked against its build" in warning
    assert adopted is not None and again.reused and again.content == adopted.content
    assert json.loads((built.path / "_artifact.json").read_text())["files"].keys() == {
        "model.safetensors",
        "sub/config.json",
    }
    assert not list(built.path.glob("_artifact.json.tmp-*")), "the marker is replaced atomically"
    _truncate(built.path / "model.safetensors")
    assert store.lookup("target", SPEC) is None, "from then on it is checked like any entry"


def test_rebuilt_input_with_other_bytes_changes_downstream_keys(tmp_path, new_process) -> None:
    store = ArtifactStore(tmp_path)
    version = iter([b"first weights", b"other weights"])

    def nondeterministic(directory: Path) -> dict:
        (directory / "model.safetensors").write_bytes(next(version))
        return {}

    first = ModelRef.in_artifact(store.get_or_build("target", SPEC, nondeterministic), "target")
    (first.path / "model.safetensors").write_bytes(b"rotten weights")
    new_process()
    second = ModelRef.in_artifact(store.get_or_build("target", SPEC, nondeterministic), "target")

    assert first.path == second.path, "same store key"
    assert first.key != second.key and first.key.startswith(f"{store.fingerprint(SPEC)}@")
    downstream = [store.fingerprint({"base": ref.key, "alpha": 3}) for ref in (first, second)]
    assert downstream[0] != downstream[1]


def test_pipeline_keys_are_made_of_content_keys(tmp_path: Path) -> None:
    # Imported here: the spawned processes of the tests above import this module, and need none of this.
    from msa_bench.pipeline.stages import Pipeline
    from msa_bench.validation import validate_config
    from tests.conftest import compose_config

    config = validate_config(compose_config(["experiment=smoke", "logger=none"], tmp_path))
    pipeline = Pipeline(config, ArtifactStore(tmp_path / "cache"), "cpu")
    world = pipeline.world()
    assert pipeline.benchmark_source()[1] == world.content_key
    assert pipeline.tokenizer_spec()["world"] == world.content_key
    model = pipeline.cached_model("target", "finetune", {"base": "x"}, _write_model)
    artifact = pipeline.store.lookup("finetune", {"base": "x"})
    assert model.key == artifact.content_key and model.path == artifact.path


def test_an_entry_moved_aside_by_another_job_while_this_one_hashes_it_is_rebuilt(
    tmp_path, monkeypatch
) -> None:
    """Sweep jobs hash an entry on first use without the lock; when another job quarantines it meanwhile, this one
    must wait for the rebuilt entry, not fail on the file that just went away."""

    def build(directory: Path) -> None:
        (directory / "a.bin").write_bytes(b"a" * 10)
        (directory / "b.bin").write_bytes(b"b" * 10)

    store = ArtifactStore(tmp_path)
    first = store.get_or_build("history", SPEC, build)
    artifacts._HASHED_THIS_PROCESS.clear()  # a new process: the next read hashes every file
    original = manifest.file_sha256

    def hash_while_another_job_moves_the_entry(path: Path) -> str:
        digest = original(path)
        if path.name == "a.bin" and first.path.exists():
            first.path.rename(tmp_path / "moved-by-another-job")
        return digest

    monkeypatch.setattr(manifest, "file_sha256", hash_while_another_job_moves_the_entry)
    again = store.get_or_build("history", SPEC, build)
    assert again.reused is False and (again.path / "b.bin").read_bytes() == b"b" * 10


# ---------------------------------------------------------------------- what killed runs leave (Part B item 10)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_and_dead_scratch_are_swept_and_never_read(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    key = store.fingerprint(SPEC)
    stale = tmp_path / "target" / f".tmp-{key}-999999-deadbeef"
    stale.mkdir(parents=True)
    # Killed after writing the marker, before the rename: still a temporary, never an entry.
    (stale / "_artifact.json").write_text(json.dumps({"kind": "target", "key": key}))
    orphan = tmp_path / "target" / "0123456789abcdef"
    orphan.mkdir()
    dead_scratch = tmp_path / ".scratch" / f"{scratch._host()}-{_dead_pid()}-0badcafe"
    dead_scratch.mkdir(parents=True)
    live_scratch = tmp_path / ".scratch" / f"{scratch._host()}-{os.getpid()}-0000cafe"
    live_scratch.mkdir()
    other_host = tmp_path / ".scratch" / f"elsewhere-{_dead_pid()}-1111cafe"
    other_host.mkdir()

    # A cache root shared with other tools: folders of theirs are never touched, and get no lock files.
    foreign = tmp_path / "huggingface" / "hub" / "models--gpt2"
    foreign.mkdir(parents=True)
    (foreign / "model.safetensors").write_bytes(b"theirs")

    assert store.lookup("target", SPEC) is None and store.entry_keys() == []
    assert store.sweep() == (1, 1)
    assert not stale.exists() and not dead_scratch.exists()
    assert live_scratch.exists() and other_host.exists(), "a live process's or another host's folder stays"
    assert orphan.exists(), (
        "a folder that lost its marker is left to `msa-bench cache prune`, never removed at start"
    )
    assert (foreign / "model.safetensors").read_bytes() == b"theirs"
    assert sorted(p.name for p in (tmp_path / "huggingface").iterdir()) == ["hub"]
    assert store.get_or_build("target", SPEC, _write_model).reused is False


def test_runner_sweeps_the_cache_before_anything_else(tmp_path: Path, monkeypatch, caplog) -> None:
    import msa_bench.runner as runner
    from msa_bench.validation import validate_config
    from tests.conftest import compose_config

    cache = tmp_path / "cache"
    stale = cache / "finetune" / ".tmp-0123456789abcdef-999999-deadbeef"
    stale.mkdir(parents=True)
    dead_scratch = cache / ".scratch" / f"{scratch._host()}-{_dead_pid()}-0badcafe"
    dead_scratch.mkdir(parents=True)
    config = validate_config(
        compose_config(["experiment=smoke", "logger=none", f"paths.cache_dir={cache}", "cache.verify=true"])
    )

    class Stop(Exception):
        pass

    def first_stage(cfg, store, device):
        assert store.verify is True, "cache.verify reaches the store"
        raise Stop

    monkeypatch.setattr(runner, "Pipeline", first_stage)
    with caplog.at_level(logging.INFO, logger="msa_bench.runner"), pytest.raises(Stop):
        runner.run(config, {}, tmp_path / "run")
    assert not stale.exists() and not dead_scratch.exists()
    assert (
        f"cache sweep: removed 1 stale temporaries and 1 stale scratch folders from {cache}"
        in caplog.messages
    )


def test_trainer_scratch_lives_in_the_cache_and_is_removed(tmp_path: Path) -> None:
    from msa_bench.config.schema import TrainRecipe
    from msa_bench.training.trainer import run_training

    seen: list[Path] = []

    class RecordingTrainer:
        tokens_processed = 0
        # run_training reads TrainStats.epoch from the trainer's state, as a real Trainer has one.
        state = type("State", (), {"epoch": 1.0})()

        def __init__(self, *, args, **kwargs):
            seen.append(Path(args.output_dir))
            assert seen[0].is_dir()

        def train(self):
            return type("Result", (), {"training_loss": 1.0})()

    model = type("Model", (), {"eval": lambda self: self})()
    run_training(
        model,
        [{"input_ids": [1]}],
        TrainRecipe(),
        pad_token_id=0,
        seed=0,
        device="cpu",
        trainer_class=RecordingTrainer,
        scratch_root=tmp_path,
    )
    [folder] = seen
    assert folder.parent == tmp_path / ".scratch" and folder.name.startswith(
        f"{scratch._host()}-{os.getpid()}-"
    )
    assert not folder.exists()


@pytest.mark.parametrize("damage", ["truncated marker", "edited file list"])
def test_a_damaged_marker_is_a_corrupt_entry(tmp_path: Path, damage: str) -> None:
    store = ArtifactStore(tmp_path)
    built = store.get_or_build("target", SPEC, _write_model)
    marker = built.path / "_artifact.json"
    if damage == "truncated marker":
        marker.write_text(marker.read_text()[:50])
    else:
        meta = json.loads(marker.read_text())
        meta["files"]["model.safetensors"] = {"size": len(PAYLOAD)}
        marker.write_text(json.dumps(meta))
    check = store.check("target", built.key)
    assert check.artifact is None and check.problem.startswith("_artifact.json: ")
    assert check.quarantined_to is not None and (check.quarantined_to / "model.safetensors").is_file()
