"""What results.json records about where its numbers come from (style.md Part B item 20): the msa_bench commit with
a -dirty flag, library versions and the device's name."""

from __future__ import annotations

import subprocess
from pathlib import Path

from msa_bench.results.provenance import device_name, git_commit
from msa_bench.runner import library_versions


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def test_the_commit_is_marked_dirty_only_for_changes_to_tracked_files(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    sha = git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == sha
    (tmp_path / "outputs.json").write_text("{}")  # untracked run output: the code is what it was
    assert git_commit(tmp_path) == sha
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{sha}-dirty"


def test_versions_name_the_libraries_that_compute_or_read_the_numbers() -> None:
    versions = library_versions()
    for key in ("msa_bench", "python", "torch", "transformers", "hydra", "peft", "lm_eval", "datasets"):
        assert versions[key], key
    assert versions["safetensors"] not in ("", "not installed")  # a dependency: always installed
    assert versions["git_commit"]


def test_the_device_name_is_the_cpu_model_on_cpu() -> None:
    name = device_name("cpu")
    assert name and name != "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        assert name in cpuinfo.read_text()
