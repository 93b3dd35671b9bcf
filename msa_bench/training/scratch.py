"""Scratch folders for the trainer, inside the artifact cache rather than /tmp.

Each folder is `<cache>/.scratch/<host>-<pid>-<random>/`, removed when training ends. A process killed meanwhile
cannot remove its own: a folder whose process id is dead on this host is stale, and the cache sweep at the start of
every run (and `msa-bench cache prune`) removes it. Folders of other hosts sharing the cache are left to those hosts,
since a process id says nothing about another machine.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("msa_bench.training")

SCRATCH_DIR = ".scratch"


def _host() -> str:
    # The host name is the first part of a folder name: no separators, and no '-' so that it splits back.
    return socket.gethostname().replace(os.sep, "_").replace("-", "_") or "localhost"


@contextmanager
def scratch_folder(cache_root: Path | None) -> Iterator[Path]:
    """A fresh folder under `<cache_root>/.scratch/`, removed on exit; a system temporary one without a cache."""
    if cache_root is None:
        with tempfile.TemporaryDirectory(prefix="msa-bench-trainer-") as folder:
            yield Path(folder)
        return
    folder = Path(cache_root) / SCRATCH_DIR / f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def stale_scratch_folders(cache_root: Path) -> list[Path]:
    """Scratch folders under `cache_root` left by processes of this host that are no longer running."""
    scratch = Path(cache_root) / SCRATCH_DIR
    if not scratch.is_dir():
        return []
    stale = []
    for folder in sorted(scratch.iterdir()):
        host, _, rest = folder.name.partition("-")
        pid = rest.partition("-")[0]
        if host == _host() and pid.isdigit() and not _process_is_alive(int(pid)):
            stale.append(folder)
    return stale


def remove_stale_scratch(cache_root: Path) -> list[Path]:
    """Delete the stale scratch folders under `cache_root`; returns them."""
    stale = stale_scratch_folders(cache_root)
    for folder in stale:
        log.info("removing stale trainer scratch folder %s", folder)
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            folder.unlink(missing_ok=True)
    return stale
