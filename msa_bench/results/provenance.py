"""What a results file records about where its numbers come from: the msa_bench commit, library versions and the
device's name (style.md Part B item 20; lm-eval's results and TRL's invariant snapshots record the same)."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

_REPOSITORY = Path(__file__).resolve().parent.parent.parent


def git_commit(root: Path = _REPOSITORY) -> str:
    """The checked-out commit of msa_bench, "<sha>-dirty" when tracked files have uncommitted changes (untracked
    files, such as run outputs beside the code, do not change a computation); "unknown" outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(commit) and bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def distribution_versions(distributions: Mapping[str, str]) -> dict[str, str]:
    """{key: installed version of the distribution} for {key: distribution name}; "not installed" when absent."""
    versions = {}
    for key, distribution in distributions.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[key] = "not installed"
    return versions


def device_name(device: str) -> str:
    """The GPU's name for a CUDA device, else the CPU model as the OS reports it."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
