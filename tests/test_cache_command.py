"""`msa-bench cache ls | verify | prune` on a small cache of tiny files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msa_bench.pipeline import artifacts
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.cache_command import main
from msa_bench.training import scratch

PAYLOAD = b"\x01" * 8192


def _write(directory: Path) -> dict:
    (directory / "model.safetensors").write_bytes(PAYLOAD)
    return {}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache with two entries, hashed in no process yet (as the command finds a cache a run left)."""
    root = tmp_path / "cache"
    store = ArtifactStore(root)
    store.get_or_build("finetune", {"data": "full"}, _write)
    store.get_or_build("eval", {"model": "x"}, _write)
    monkeypatch.setattr(artifacts, "_HASHED_THIS_PROCESS", set())
    monkeypatch.delenv("MSA_BENCH_CACHE", raising=False)
    return root


def _run(capsys, *argv: str, default_root: Path = Path("/nonexistent")) -> tuple[int, str, str]:
    code = main(list(argv), default_root=default_root)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_ls_lists_every_entry_and_the_totals(cache: Path, capsys) -> None:
    code, out, _ = _run(capsys, "ls", "--cache-dir", str(cache))
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["kind", "key", "size", "age", "build"]
    finetune_key = ArtifactStore.fingerprint({"data": "full"})
    [row] = [line for line in lines if line.startswith("finetune")]
    assert row.split()[:4] == ["finetune", finetune_key, "8.0", "KiB"] and row.rstrip().endswith(" s")
    assert lines[-1] == f"2 entries, 16.0 KiB in {cache}; 0 quarantined (0 B)"


def test_root_comes_from_the_environment_then_the_default(cache: Path, capsys, monkeypatch) -> None:
    assert _run(capsys, "ls", default_root=cache)[0] == 0
    monkeypatch.setenv("MSA_BENCH_CACHE", str(cache))
    code, out, _ = _run(capsys, "ls")
    assert code == 0 and out.splitlines()[-1].startswith("2 entries")


def test_a_missing_cache_folder_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    code, out, err = _run(capsys, "--cache-dir", str(tmp_path / "typo"), "verify")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and f"--cache-dir={tmp_path / 'typo'} is not a folder" in err


def test_verify_moves_a_corrupt_entry_aside_and_exits_1(cache: Path, capsys) -> None:
    assert _run(capsys, "verify", "--cache-dir", str(cache))[:2] == (
        0,
        "[1/2] eval/{}: ok\n[2/2] finetune/{}: ok\n2 entries: 2 ok, 0 corrupt, 0 unchecked\n".format(
            ArtifactStore.fingerprint({"model": "x"}), ArtifactStore.fingerprint({"data": "full"})
        ),
    )
    key = ArtifactStore.fingerprint({"data": "full"})
    weights = cache / "finetune" / key / "model.safetensors"
    with open(weights, "r+b") as file:  # same size, other bytes: only the hash can tell
        file.seek(2048)
        file.write(b"\xff" * 4096)

    code, out, _ = _run(capsys, "verify", "--cache-dir", str(cache))
    [moved] = list((cache / ".quarantine").iterdir())
    assert code == 1
    assert f"finetune/{key}: CORRUPT (model.safetensors: sha256 " in out and f"moved to {moved}" in out
    assert "2 entries: 1 ok, 1 corrupt, 0 unchecked; the corrupt ones are in" in out
    assert not weights.exists(), "the next run rebuilds it"
    assert _run(capsys, "verify", "--cache-dir", str(cache))[0] == 0


def _leftovers(cache: Path) -> dict[str, Path]:
    paths = {
        "temporary": cache / "finetune" / ".tmp-0123456789abcdef-999999-deadbeef",
        "orphan": cache / "finetune" / "fedcba9876543210",
        "dead scratch": cache / ".scratch" / f"{scratch._host()}-{_dead_pid()}-0badcafe",
        "live scratch": cache / ".scratch" / f"{scratch._host()}-{os.getpid()}-0000cafe",
        "quarantined": cache / ".quarantine" / "finetune-0123456789abcdef-20260101T000000Z",
    }
    for path in paths.values():
        path.mkdir(parents=True)
        (path / "partial.bin").write_bytes(b"x" * 100)
    return paths


def test_prune_dry_run_lists_and_leaves_everything(cache: Path, capsys) -> None:
    paths = _leftovers(cache)
    code, out, _ = _run(capsys, "prune", "--dry-run", "--quarantine", "--cache-dir", str(cache))
    assert code == 0 and all(path.exists() for path in paths.values())
    for name in ("temporary", "orphan", "dead scratch", "quarantined"):
        assert f"would clean {paths[name]} (" in out
    assert str(paths["live scratch"]) not in out
    assert out.splitlines()[-1] == f"would clean 4 folders, 400 B in {cache} (dry run: nothing was changed)"


def test_prune_removes_leftovers_and_the_quarantine_only_when_asked(cache: Path, capsys) -> None:
    paths = _leftovers(cache)
    code, out, _ = _run(capsys, "prune", "--cache-dir", str(cache))
    assert code == 0 and out.splitlines()[-1] == f"cleaned 3 folders, 300 B in {cache}"
    assert [name for name, path in paths.items() if path.exists()] == ["live scratch", "quarantined"]
    # The orphan (an entry folder without its marker) may hold hours of training: it is moved aside, not deleted.
    moved = [
        p.name for p in (cache / ".quarantine").iterdir() if p.name.startswith("finetune-fedcba9876543210-")
    ]
    assert len(moved) == 1

    assert _run(capsys, "prune", "--quarantine", "--cache-dir", str(cache))[0] == 0
    assert not paths["quarantined"].exists() and paths["live scratch"].exists()
    assert not (cache / ".quarantine").exists() or not any((cache / ".quarantine").iterdir())
    assert len(ArtifactStore(cache).entry_keys()) == 2, "complete entries are never pruned"


def test_msa_bench_dispatches_the_cache_subcommand(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "msa_bench.cli", "cache", "ls", "--cache-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("msa-bench cache: error: --cache-dir=") and result.stderr.count("\n") == 1


def test_an_entry_of_an_older_msa_bench_is_recorded_not_counted_corrupt(cache: Path, capsys) -> None:
    key = ArtifactStore.fingerprint({"data": "full"})
    marker = cache / "finetune" / key / "_artifact.json"
    meta = json.loads(marker.read_text())
    del meta["files"], meta["content"]
    marker.write_text(json.dumps(meta))
    [row] = [line for line in _run(capsys, "ls", "--cache-dir", str(cache))[1].splitlines() if key in line]
    assert row.endswith("no file list (older msa_bench)")

    code, out, _ = _run(capsys, "verify", "--cache-dir", str(cache))
    assert code == 0 and f"finetune/{key}: no file list (built by an older msa_bench): recorded it now" in out
    assert out.splitlines()[-1] == "2 entries: 1 ok, 0 corrupt, 1 unchecked"
    assert "files" in json.loads(marker.read_text())
