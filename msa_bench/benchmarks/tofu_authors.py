"""A subset of real TOFU's authors (benchmark.authors; docs/benchmarks.md#the-cpu-tier-of-real-tofu).

A model of ~1.4M parameters cannot memorise TOFU's 4,000 answers on two CPU cores in minutes: after 20 epochs of
the full set its forget01 answer probability is about 0.5. With fewer authors to learn it can, so the CPU tier
trains on N of TOFU's 200 authors. The kept authors are, in this order of priority:
1. the forget split's authors (forget01: 198-199);
2. as many authors just before them, the validation forget set of benchmark.forget_set=validation
   (forget01: 196-197), so that a validation run and a test run share their target;
3. the authors of the retain eval set, retain_perturbed[:benchmark.retain_eval_size] (its 400 rows are authors
   0-19), so that the retain metrics read items the model was trained on;
4. then the lowest-numbered other authors, until there are N.

Every split of the source folder whose records are items of `full` (full, forget*, retain*, their perturbed sets)
loses the items of the other authors; records that are not items of `full` (holdout, real_authors, world_facts)
are kept whole. Items are matched by (question, answer): TOFU's `full` has one question twice, asked of two
authors. Real TOFU's items name no author: `full` is 20 QA per author, in order. Forget and retain splits still add
up to `full`, so everything downstream (the target, the oracle, the retain pools, MSA's retain split) reads the
subset without knowing of it, and the subset's own fingerprint enters every cache key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from msa_bench.benchmarks.base import BenchmarkError

TOFU_QA_PER_AUTHOR = 20


def item_identity(item: dict) -> tuple[str, str]:
    return item["question"], item["answer"]


def author_rows(full: list[dict]) -> dict[tuple[str, str], int]:
    """Each item of `full` and its author (row // 20); a BenchmarkError when `full` is not whole authors."""
    if not full or len(full) % TOFU_QA_PER_AUTHOR:
        raise BenchmarkError(
            f"benchmark.authors needs full to be blocks of {TOFU_QA_PER_AUTHOR} QA per author, as in TOFU, and it "
            f"has {len(full)} items; set benchmark.authors=null to train on the whole of it"
        )
    return {item_identity(item): row // TOFU_QA_PER_AUTHOR for row, item in enumerate(full)}


def kept_authors(
    full: list[dict], forget: list[dict], retain_eval: list[dict], count: int, forget_id: str
) -> list[int]:
    """The `count` authors the subset keeps (the module docstring's rule), in order."""
    authors_of = author_rows(full)
    total = len(full) // TOFU_QA_PER_AUTHOR
    forget_authors = sorted(
        {authors_of[item_identity(item)] for item in forget if item_identity(item) in authors_of}
    )
    if len(forget_authors) * TOFU_QA_PER_AUTHOR != len(forget):
        raise BenchmarkError(
            f"benchmark.authors: {forget_id} is not whole authors of full ({len(forget)} items over "
            f"{len(forget_authors)} authors); set benchmark.authors=null"
        )
    validation = [author - len(forget_authors) for author in forget_authors]
    validation = [author for author in validation if author >= 0]
    retain = sorted(
        {authors_of[item_identity(item)] for item in retain_eval if item_identity(item) in authors_of}
    )
    required = list(dict.fromkeys(forget_authors + validation + retain))
    if not 0 < count <= total:
        raise BenchmarkError(
            f"benchmark.authors={count} must be between {len(required)} and {total} (or null: all)"
        )
    if count < len(required):
        raise BenchmarkError(
            f"benchmark.authors={count} is fewer than the {len(required)} authors a {forget_id} run needs: "
            f"{len(forget_authors)} forget, {len(validation)} validation and {len(retain)} retain-eval authors "
            f"(retain_perturbed[:{len(retain_eval)}]); raise it to at least {len(required)}, or lower "
            "benchmark.retain_eval_size"
        )
    needed = set(required)
    others = [author for author in range(total) if author not in needed]
    return sorted(required + others[: count - len(required)])


def write_subset(source: Path, out: Path, full: list[dict], authors: list[int]) -> dict:
    """Every <split>.jsonl of `source` into `out`, without the items of `full` whose author is not kept. Returns
    each split's item count, for the artifact's metadata."""
    authors_of = author_rows(full)
    kept_marker = -1  # stands for "not an item of full": always kept
    kept = set(authors) | {kept_marker}
    counts = {}
    for path in sorted(source.glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        # A record that is not an item of `full` (holdout, real authors, world facts) has no author and stays.
        keep = [
            record
            for record in records
            if authors_of.get((record.get("question"), record.get("answer")), kept_marker) in kept
        ]
        if len(keep) == len(records):
            shutil.copyfile(path, out / path.name)
        else:
            text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in keep)
            (out / path.name).write_text(text, encoding="utf-8")
        counts[path.stem] = len(keep)
    return {"authors": authors, "items": counts}
