"""Where a real benchmark's files come from: a local folder laid out like the hub, or the Hugging Face hub.

A local folder holds one `<config>.jsonl` per hub config name (as ../shared/data/tofu does). From the hub, the
configs are fetched once with `datasets` and kept as the same JSONL files in the artifact cache. A MUSE dataset is
kept as one JSON file per (config, split), in the folder layout `msa_bench.data.muse` reads (`download_muse`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from msa_bench.errors import DataSourceError  # noqa: F401  (re-exported)


def local_data_source(folder: Path, key: str, *, recursive: bool = False) -> tuple[Path, str]:
    """The folder (checked) and a fingerprint of its data files, so caches follow the data's content.

    `recursive` also covers the files in subfolders (MUSE's raw/, knowmem/, ...; parquet shards included)."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise DataSourceError(
            f"{key}={folder} does not exist; point it at a folder of benchmark files, or set MSA_BENCH_DATA to a "
            "folder laid out like ../shared/data (tofu/, restor/, muse-news/)"
        )
    digest = hashlib.sha256()
    suffixes = {".json", ".jsonl", ".parquet"} if recursive else {".json", ".jsonl"}
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in candidates if p.is_file() and p.suffix in suffixes)
    if not files:
        raise DataSourceError(f"{key}={folder} holds no {' or '.join(sorted(suffixes))} files")
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
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


def download_muse(hub_id: str, out: Path, *, files: Iterable[str] | None = None) -> dict:
    """Fetch a MUSE hub dataset (muse-bench/MUSE-News or MUSE-Books) into `out`, laid out as the local loaders read.

    Each hub (config, split) of `msa_bench.data.muse.MUSE_HUB_FILES` is written as one JSON list: raw/, train/ and
    privleak/ splits as lists of strings, verbmem as {prompt, gt} and knowmem as {question, answer} records. The
    hub's knowmem retain_qa(_icl) and privleak retain splits become knowmem/retain2_qa(_icl).json and
    privleak/retain2.json (they are about the retain2 corpus). `files` (relative paths such as those of
    `muse_required_files`) fetches only those splits; None fetches all of them.
    """
    from msa_bench.data.muse import MUSE_HUB_FILES, muse_hub_file

    if files is None:
        entries = list(MUSE_HUB_FILES)
    else:
        entries = []
        for relative_path in files:
            entry = muse_hub_file(relative_path)
            if entry is None:
                known = ", ".join(e.path for e in MUSE_HUB_FILES)
                raise DataSourceError(
                    f"{relative_path!r} is not a split of the MUSE hub dataset {hub_id!r}, so it cannot be fetched; "
                    f"the hub splits are kept as {known}. Set benchmark.data_dir (or MSA_BENCH_DATA) to a local "
                    "folder that holds it"
                )
            if entry not in entries:
                entries.append(entry)
    try:
        from datasets import load_dataset
    except ImportError as error:  # pragma: no cover - datasets is a declared dependency
        raise DataSourceError("loading from the hub needs the `datasets` package") from error
    out = Path(out)
    counts = {}
    for entry in entries:
        where = f"{hub_id!r} config {entry.config!r} split {entry.split!r}"
        try:
            dataset = load_dataset(hub_id, entry.config, split=entry.split)
        except Exception as error:  # datasets raises many types for "offline", "not found", "gated"
            raise DataSourceError(
                f"could not load {where} from the Hugging Face hub ({type(error).__name__}: {error}); without "
                "network, set benchmark.data_dir (or MSA_BENCH_DATA) to a local copy laid out like the hub dataset "
                "(raw/, verbmem/, knowmem/, privleak/)"
            ) from error
        records = []
        for index, record in enumerate(dataset):
            values = {name: record.get(name) if hasattr(record, "get") else None for name in entry.fields}
            bad = [name for name, value in values.items() if not isinstance(value, str)]
            if bad:
                raise DataSourceError(
                    f"{where} from the Hugging Face hub: record {index} has no string field(s) {bad} (got "
                    f"{record!r:.120}); expected {list(entry.fields)}"
                )
            records.append(values["text"] if entry.fields == ("text",) else values)
        if not records:
            raise DataSourceError(f"{where} from the Hugging Face hub holds no records")
        path = out / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        counts[entry.path] = len(records)
    return {"hub_id": hub_id, "counts": counts}
