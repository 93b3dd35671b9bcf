"""`msa-bench cache ls | verify | prune`: look into the artifact cache, check it, clean it.

The cache folder is --cache-dir, else $MSA_BENCH_CACHE, else the project's `.cache/msa_bench` (as in
conf/paths/default.yaml).
- ls: one row per entry (kind, key, size, age, build time) and the totals.
- verify: rehash every file of every entry; a corrupt entry is moved to `<cache>/.quarantine/` so that the next run
  rebuilds it. Exit code 1 when any entry was corrupt, else 0.
- prune: remove what killed runs left (temporaries of dead builders, entry folders without a marker, trainer scratch
  folders of dead processes) and, with --quarantine, the quarantined entries; --dry-run only lists them.
Exit code 2 for an unusable cache folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from msa_bench.errors import ArtifactError
from msa_bench.pipeline.artifacts import QUARANTINE_DIR, ArtifactStore
from msa_bench.training.scratch import remove_stale_scratch, stale_scratch_folders

PROG = "msa-bench cache"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the cache folder (default: $MSA_BENCH_CACHE, else <project>/.cache/msa_bench)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{ls,verify,prune}")
    commands.add_parser("ls", help="one row per entry: kind, key, size, age, build seconds; and the totals")
    commands.add_parser("verify", help="rehash every entry; move corrupt ones aside (exit 1 if any)")
    prune = commands.add_parser(
        "prune", help="remove stale temporaries, orphan folders and dead scratch folders"
    )
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    prune.add_argument(
        "--quarantine", action="store_true", help="also remove the quarantined (corrupt) entries"
    )
    for sub in commands.choices.values():
        # Also accepted after the subcommand: `msa-bench cache ls --cache-dir DIR`.
        sub.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def resolve_root(cache_dir: Path | None, default_root: Path) -> Path:
    """The cache folder to work on; it must exist (a typo must not look like an empty cache)."""
    if cache_dir is not None:
        root, origin = cache_dir, "--cache-dir"
    elif os.environ.get("MSA_BENCH_CACHE"):
        root, origin = Path(os.environ["MSA_BENCH_CACHE"]), "$MSA_BENCH_CACHE"
    else:
        root, origin = default_root, "the default cache folder"
    root = root.expanduser()
    if not root.is_dir():
        raise ArtifactError(
            f"{origin}={root} is not a folder: pass the cache folder a run used with --cache-dir DIR "
            "(runs use paths.cache_dir, by default $MSA_BENCH_CACHE or <project>/.cache/msa_bench)"
        )
    return root


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def folder_bytes(folder: Path) -> int:
    if folder.is_file():
        return folder.stat().st_size
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def _entry_row(store: ArtifactStore, kind: str, key: str, now: datetime) -> tuple[list[str], int]:
    folder = store.root / kind / key
    meta = store.entry_meta(kind, key) or {}
    files = meta.get("files")
    size = sum(entry["size"] for entry in files.values()) if isinstance(files, dict) else folder_bytes(folder)
    try:
        created = datetime.fromisoformat(meta["created_at"])
    except (KeyError, TypeError, ValueError):
        created = datetime.fromtimestamp(folder.stat().st_mtime, UTC)
    build = meta.get("build_seconds")
    row = [
        kind,
        key,
        human_bytes(size),
        human_age((now - created).total_seconds()),
        f"{build:.1f} s" if isinstance(build, int | float) else "-",
        "" if isinstance(files, dict) else "no file list (older msa_bench)",
    ]
    return row, size


def list_entries(store: ArtifactStore) -> int:
    now = datetime.now(UTC)
    rows, total = [], 0
    for kind, key in store.entry_keys():
        row, size = _entry_row(store, kind, key, now)
        rows.append(row)
        total += size
    header = ["kind", "key", "size", "age", "build", ""]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    quarantine = _quarantined(store)
    print(
        f"{len(rows)} entries, {human_bytes(total)} in {store.root}; "
        f"{len(quarantine)} quarantined ({human_bytes(sum(map(folder_bytes, quarantine)))})"
    )
    return 0


def verify_entries(store: ArtifactStore) -> int:
    keys = store.entry_keys()
    print(f"verifying {len(keys)} entries in {store.root}", file=sys.stderr)
    corrupt = adopted = 0
    for number, (kind, key) in enumerate(keys, start=1):
        check = store.check(kind, key)
        prefix = f"[{number}/{len(keys)}] {kind}/{key}"
        if check.quarantined_to is not None:
            corrupt += 1
            print(f"{prefix}: CORRUPT ({check.problem}); moved to {check.quarantined_to}")
        elif check.adopted:
            adopted += 1
            print(
                f"{prefix}: no file list (built by an older msa_bench): recorded it now, could not check it"
            )
        elif check.artifact is None:
            print(f"{prefix}: gone (removed or moved by another process meanwhile)")
        else:
            print(f"{prefix}: ok")
    summary = (
        f"{len(keys)} entries: {len(keys) - corrupt - adopted} ok, {corrupt} corrupt, {adopted} unchecked"
    )
    if corrupt:
        summary += f"; the corrupt ones are in {store.root / QUARANTINE_DIR} and the next run rebuilds them"
    print(summary)
    return 1 if corrupt else 0


def _quarantined(store: ArtifactStore) -> list[Path]:
    folder = store.root / QUARANTINE_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


def prune(store: ArtifactStore, *, dry_run: bool, quarantine: bool) -> int:
    """Remove what dead runs left (temporaries, trainer scratch), move orphan entry folders (no marker) to the
    quarantine, and with ``quarantine`` delete the quarantine. What is printed is what was found (dry run) or what
    was actually removed or moved, measured before it went."""
    found: list[tuple[Path, str]] = []
    sizes: dict[Path, int] = {}

    def note(paths: list[Path], why: str) -> None:
        for path in paths:
            found.append((path, why))

    def measured(paths: list[Path]) -> list[Path]:
        sizes.update({path: folder_bytes(path) for path in paths if path.exists()})
        return paths

    # Sizes first (the store removes under each key's lock, and a folder may change in between).
    measured(store.stale_folders(orphans=True))
    measured(stale_scratch_folders(store.root))
    if dry_run:
        note(
            store.stale_folders(orphans=True),
            "stale temporary, or orphan folder (would go to the quarantine)",
        )
        note(stale_scratch_folders(store.root), "scratch folder of a dead process")
        if quarantine:
            note(measured(_quarantined(store)), "quarantined entry")
    else:
        note(store.stale_folders(remove=True, orphans=True), "stale temporary removed, or orphan quarantined")
        note(remove_stale_scratch(store.root), "scratch folder of a dead process")
        if quarantine:
            entries = measured(_quarantined(store))
            for path in entries:
                shutil.rmtree(path, ignore_errors=True)
            note(entries, "quarantined entry")
    verb = "would clean" if dry_run else "cleaned"
    for path, why in found:
        print(f"{verb} {path} ({why}, {human_bytes(sizes.get(path, 0))})")
    total = sum(sizes.get(path, 0) for path, _ in found)
    dry = " (dry run: nothing was changed)" if dry_run else ""
    print(f"{verb} {len(found)} folders, {human_bytes(total)} in {store.root}{dry}")
    return 0


def main(argv: list[str], default_root: Path) -> int:
    args = build_parser().parse_args(argv)
    # This command prints what it finds itself; the store's own warnings would repeat it.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    logging.getLogger("msa_bench.artifacts").setLevel(logging.ERROR)
    try:
        root = resolve_root(args.cache_dir, default_root)
    except ArtifactError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if args.command == "ls":
        return list_entries(ArtifactStore(root))
    if args.command == "verify":
        return verify_entries(ArtifactStore(root, verify=True))
    return prune(ArtifactStore(root), dry_run=args.dry_run, quarantine=args.quarantine)
