"""Where a real benchmark's files come from: a local folder laid out like the hub, or the Hugging Face hub.

A local folder holds one `<config>.jsonl` per hub config name (as ../shared/data/tofu does). From the hub, the
configs are fetched once with `datasets` and kept as the same JSONL files in the artifact cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class DataSourceError(FileNotFoundError):
    """Benchmark data could not be found or fetched; the message names what was looked for and where."""


def local_data_source(folder: Path, key: str) -> tuple[Path, str]:
    """The folder (checked) and a fingerprint of its data files, so caches follow the data's content."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise DataSourceError(
            f"{key}={folder} does not exist; point it at a folder of benchmark files, or set MSA_BENCH_DATA to a "
            "folder laid out like ../shared/data (tofu/, restor/, muse-news/)"
        )
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".jsonl"})
    if not files:
        raise DataSourceError(f"{key}={folder} holds no .json or .jsonl files")
    for path in files:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return folder.resolve(), digest.hexdigest()[:16]


def tofu_hub_configs(forget_split: str) -> list[str]:
    """The TOFU configs one run on `forget_split` reads (hub config names)."""
    percent = forget_split.removeprefix("forget")
    retain = f"retain{100 - int(percent):02d}"
    return [
        "full",
        forget_split,
        retain,
        f"{forget_split}_perturbed",
        "retain_perturbed",
        f"holdout{percent}",
        "real_authors_perturbed",
        "world_facts_perturbed",
    ]


def download_tofu(hub_id: str, configs: list[str], out: Path) -> dict:
    """Fetch each config's train split from the hub and write it as <config>.jsonl into `out`."""
    try:
        from datasets import load_dataset
    except ImportError as error:  # pragma: no cover - datasets is a declared dependency
        raise DataSourceError("loading from the hub needs the `datasets` package") from error
    counts = {}
    for config in configs:
        try:
            dataset = load_dataset(hub_id, config, split="train")
        except Exception as error:  # datasets raises many types for "offline", "not found", "gated"
            raise DataSourceError(
                f"could not load {hub_id!r} config {config!r} from the Hugging Face hub ({type(error).__name__}: "
                f"{error}); without network, set benchmark.data_dir (or MSA_BENCH_DATA) to a local copy"
            ) from error
        with (out / f"{config}.jsonl").open("w") as handle:
            for record in dataset:
                handle.write(json.dumps(record) + "\n")
        counts[config] = len(dataset)
    return {"counts": counts}
