"""Run a guide's worked example in a temporary copy of the repository.

A guide under `docs/` marks the files of its example with a `path=` info string on the code fence, e.g.
```` ```python path=msa_bench/methods/rewind.py ````. `run_guide_example` copies the repository's tracked files,
writes every such block into the copy, and runs the example's own tests (its `path=tests/...` blocks) there. A block
whose path already exists in the repository fails the check: a guide claims its example only adds files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GUIDE_TIMEOUT_S = 1800

# An opening fence with an info string naming a path, its body, and the closing fence of the same length or longer.
_FENCED_BLOCK = re.compile(
    r"^(?P<fence>`{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)`*[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_PATH_ATTRIBUTE = re.compile(r"(?:^|\s)path=(?P<path>\S+)")

# The example runs as CI does: offline, W&B off (tests/conftest.py sets the same defaults).
_OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
}


@dataclass(frozen=True)
class GuideFile:
    """One file of a guide's example: where it goes in the repository and what it holds."""

    path: PurePosixPath
    text: str


def guide_files(guide_text: str) -> list[GuideFile]:
    """The code blocks of a guide whose info string has `path=<relative path>`, in the order they appear."""
    files = []
    for block in _FENCED_BLOCK.finditer(guide_text):
        attribute = _PATH_ATTRIBUTE.search(block["info"])
        if attribute is None:
            continue
        path = PurePosixPath(attribute["path"])
        if path.is_absolute() or ".." in path.parts:
            pytest.fail(f"guide block path={path} must be relative to the repository root and stay inside it")
        files.append(GuideFile(path=path, text=block["body"]))
    return files


def tracked_files(repo_root: Path = REPO_ROOT) -> list[Path]:
    """The repository's files as git sees them: committed or new, not ignored (so no .venv, caches or outputs)."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo_root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    # `--cached` still lists a file deleted in the work tree until the deletion is staged
    return [Path(name) for name in listing.split("\0") if name and (repo_root / name).is_file()]


def copy_repository(destination: Path, repo_root: Path = REPO_ROOT) -> None:
    for relative in tracked_files(repo_root):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / relative, target)


def run_guide_example(guide: str, tmp_path: Path) -> None:
    """Write the example of `docs/<guide>` into a copy of the repository and run its tests there.

    `guide` is a path relative to the repository root (`docs/adding_a_method.md`) or an absolute one. Fails if the guide marks no file,
    marks no test, marks a file the repository already has, or if the example's tests fail (with their output).
    """
    guide_path = REPO_ROOT / guide
    files = guide_files(guide_path.read_text(encoding="utf-8"))
    if not files:
        pytest.fail(f"{guide} marks no code block with a path= info string")
    existing = sorted(str(file.path) for file in files if (REPO_ROOT / file.path).exists())
    if existing:
        pytest.fail(f"{guide}'s example must only add files, but these already exist: {', '.join(existing)}")
    test_paths = [str(file.path) for file in files if file.path.parts[0] == "tests"]
    if not test_paths:
        pytest.fail(f"{guide} marks no test file (a block with path=tests/...)")

    copy = tmp_path / "repository"
    copy_repository(copy)
    for file in files:
        destination = copy / file.path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(file.text, encoding="utf-8")

    environment = {
        **os.environ,
        **_OFFLINE_ENVIRONMENT,
        "PYTHONPATH": str(copy),
        "MSA_BENCH_CACHE": str(tmp_path / "cache"),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *test_paths],
        cwd=copy,
        env=environment,
        capture_output=True,
        text=True,
        timeout=GUIDE_TIMEOUT_S,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"{guide}'s example tests failed (exit {completed.returncode}) in {copy}:\n"
            f"{completed.stdout}\n{completed.stderr}",
            pytrace=False,
        )
