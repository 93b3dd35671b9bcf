"""TOFU (Maini et al. 2024): fictitious authors' QA; the forget set is some authors, the oracle never saw them.

Two kinds share this class: `synthetic_tofu` reads the TOFU-layout files the generated world wrote, and `tofu` reads
real TOFU from a local folder of <hub config>.jsonl files or from the hub (`locuslab/TOFU`), fetched once and kept
in the cache.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

from msa_bench.benchmarks import tofu_authors
from msa_bench.benchmarks import tofu_validation as validation
from msa_bench.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    ForgetSplits,
    RelearningData,
    items_digest,
    register_benchmark,
    relearned_count,
)
from msa_bench.benchmarks.tofu_authors import TOFU_QA_PER_AUTHOR
from msa_bench.config.schema import BenchmarkConfig
from msa_bench.data.formatting import format_answer, format_prompt
from msa_bench.data.muse import MUSE_EVAL_SET_NAMES, load_muse_eval_sets, muse_sets_from_tofu_items
from msa_bench.data.records import RESTORE_HINT
from msa_bench.data.sources import download_tofu, local_data_source, tofu_hub_configs
from msa_bench.data.tofu_splits import load_benchmark_split
from msa_bench.errors import MalformedDataError

FORGET_TO_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
TOFU_EVAL_SETS = ("forget", "retain", "real_authors", "world_facts")
# TOFU's never-trained authors; holdout01 and holdout05 are its first 40 and 200 rows.
ALL_HOLDOUT = "holdout10"


@dataclass
class TofuConfig(BenchmarkConfig):
    # Train on this many of TOFU's 200 authors (tofu_authors.py: the forget, validation and retain-eval authors,
    # then the first others); null: all of them. The CPU tier's model cannot learn all 4,000 answers in minutes.
    authors: int | None = None


@register_benchmark
class TofuBenchmark(Benchmark):
    """Real TOFU, read from benchmark.data_dir or the hub."""

    kinds = ("tofu",)
    config_class = TofuConfig
    forget_splits = ForgetSplits(names=tuple(FORGET_TO_RETAIN))
    family = "tofu"
    default_metrics = "tofu"
    default_eval_sets = TOFU_EVAL_SETS
    # The holdout authors feed only the MUSE-style privleak sets; the MUSE-format sets are built on request.
    optional_eval_sets = ("holdout", *MUSE_EVAL_SET_NAMES)
    tokenizer_key_identifies_training_data = True
    # TOFU's own, then those of the MUSE-format sets built from its QA (metrics=muse).
    forget_metrics = (
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
        "forget_truth_ratio",
        "muse_mia_min_k",
        "forget_verbmem_ROUGE",
        "forget_knowmem_ROUGE",
    )
    generation_forget_metrics = ("forget_Q_A_ROUGE", "forget_verbmem_ROUGE", "forget_knowmem_ROUGE")
    supports_validation = True  # benchmark.forget_set=validation (tofu_validation.py)

    @property
    def retain_split(self) -> str:
        return FORGET_TO_RETAIN[self.forget_id]

    @property
    def holdout_split(self) -> str:
        return self.forget_id.replace("forget", "holdout")

    def data_id(self, role: str) -> str:
        # TOFU's hub config names (the names these keys had before other benchmarks existed).
        if self.validating:  # what the validation oracle and retain pool leave out joins their names
            vid = self.forget_data_id
            return {
                "target": "full",
                "oracle": f"full-minus-{vid}",
                "retain": f"{self.retain_split}-minus-{vid}",
            }[role]
        return {"target": "full", "oracle": self.retain_split, "retain": self.retain_split}[role]

    @property
    def validating(self) -> bool:
        return self.cfg.forget_set == "validation"

    @cached_property
    def _validation(self) -> tuple[list[dict], list[dict], str]:
        """The validation forget set: its training items, its eval records (with perturbed answers) and its id."""
        split = self.context.split
        full = split("full")
        block, rows = validation.validation_block(full, split(self.forget_id), self.forget_id)
        pool = (
            full
            if all("perturbed_answer" in item for item in block)
            else self._extra_split(
                validation.PERTURBED_SOURCE,
                "benchmark.forget_set=validation",
                "use benchmark.forget_set=test",
            )
        )
        records = validation.with_perturbed_answers(block, pool, self.forget_id, rows)
        validation.check_disjoint(
            block,
            {
                f"the retain eval set (retain_perturbed[:{self.cfg.retain_eval_size}])": self._tofu_sets()[
                    "retain"
                ](),
                f"the test forget set {self.forget_id}": split(self.forget_id),
            },
            self.forget_id,
        )
        return block, records, validation.validation_id(self.forget_id, block, rows)

    @property
    def forget_data_id(self) -> str:
        return self._validation[2] if self.validating else self.forget_id

    def leave_out_validation(self, pool: list[dict]) -> list[dict]:
        return validation.without(pool, self._validation[0]) if self.validating else pool

    def source(self) -> tuple[Path, str]:
        folder, key = self._whole_source()
        if self.cfg.authors is None:
            return folder, key
        full = load_benchmark_split(folder, "full")
        authors = tofu_authors.kept_authors(
            full,
            load_benchmark_split(folder, self.forget_id),
            load_benchmark_split(folder, "retain_perturbed")[: self.cfg.retain_eval_size],
            self.cfg.authors,
            self.forget_id,
        )
        subset = self.context.cached_artifact(
            "tofu_authors",
            {"source": key, "authors": authors},
            lambda out: tofu_authors.write_subset(folder, out, full, authors),
        )
        return subset.path, subset.content_key

    def _whole_source(self) -> tuple[Path, str]:
        """All of TOFU: benchmark.data_dir, or the hub download."""
        if self.cfg.data_dir:
            return local_data_source(Path(self.cfg.data_dir), "benchmark.data_dir")
        if not self.cfg.hub_id:
            raise BenchmarkError(
                f"benchmark {self.cfg.name!r} has neither data_dir nor hub_id; set benchmark.data_dir "
                "(or MSA_BENCH_DATA to a folder laid out like ../shared/data)"
            )
        # Every retain split, not only the forget split's own: the MSA code draws the retain vector's data from
        # another one (1% of retain90 for forget01: method.retain_split).
        needed = tofu_hub_configs(self.forget_id)
        configs = needed + [split for split in ("retain90", "retain95", "retain99") if split not in needed]
        hub = self.context.cached_artifact(
            "hub_data",
            {"hub_id": self.cfg.hub_id, "configs": configs},
            lambda out: download_tofu(self.cfg.hub_id, configs, out),
        )
        return hub.path, hub.content_key

    def preflight(self) -> None:
        """Every split the run reads is there and parsed in full (records, fields, answer lists), and the forget
        and retain splits add up to `full` as in TOFU (a file cut at a line boundary still parses)."""
        folder = self.context.source_folder()
        splits = tofu_hub_configs(self.forget_id)
        missing = [name for name in splits if not (folder / f"{name}.jsonl").is_file()]
        if missing:
            raise BenchmarkError(
                f"TOFU split(s) {missing} not found in {folder} (benchmark.data_dir): the folder must hold one "
                f"<hub config>.jsonl per split, e.g. {folder / f'{missing[0]}.jsonl'}"
            )
        counts = {name: len(self.context.split(name)) for name in splits}
        forget, retain = self.forget_id, self.retain_split
        checks = [
            (
                counts[forget] + counts[retain] == counts["full"],
                f"{forget} + {retain} must hold the rows of full",
            ),
            (
                counts[f"{forget}_perturbed"] == counts[forget],
                f"{forget}_perturbed must hold one row per {forget} row",
            ),
        ]
        for holds, rule in checks:
            if not holds:
                sizes = ", ".join(
                    f"{name}.jsonl {counts[name]}" for name in (forget, retain, "full", f"{forget}_perturbed")
                )
                raise MalformedDataError(
                    f"TOFU files in {folder} do not fit together: {rule} (records: {sizes}); one of them is "
                    f"probably truncated or from another copy: {RESTORE_HINT}"
                )
        muse_dir = self.context.cfg.metrics.muse.data_dir
        if muse_dir:
            load_muse_eval_sets(Path(muse_dir))
        if self.validating:
            self._validation  # noqa: B018  (the validation set's errors, before any training)

    def tokenizer_texts(self) -> list[str]:
        return [
            f"{format_prompt(x['question'])}{format_answer(x['answer'])}" for x in self.context.split("full")
        ]

    def target_items(self) -> list[dict]:
        return self.context.split("full")

    def oracle_items(self) -> list[dict]:
        if self.validating:  # never saw the validation authors
            return self.leave_out_validation(self.context.split("full"))
        return self.context.split(self.retain_split)

    def forget_items(self) -> list[dict]:
        return self._validation[0] if self.validating else self.context.split(self.forget_id)

    def retain_items(self) -> list[dict]:
        return self.leave_out_validation(self.context.split(self.retain_split))

    request_unit = "author"

    def request_units(self) -> list[tuple[str, list[dict]]]:
        """The forget authors in order. The generated world's items name their author (`subject`); real TOFU's do
        not, and its forget splits are blocks of TOFU_QA_PER_AUTHOR items per author."""
        items = self.forget_items()
        if items and all("subject" in item for item in items):
            authors: dict[str, list[dict]] = {}
            for item in items:
                authors.setdefault(item["subject"], []).append(item)
            return list(authors.items())
        if len(items) % TOFU_QA_PER_AUTHOR:
            raise BenchmarkError(
                f"{self.forget_id} has {len(items)} items, not a multiple of TOFU's {TOFU_QA_PER_AUTHOR} QA per "
                "author, and they name no author (`subject`): its authors, and so benchmark.requests, are unknown"
            )
        return [
            (f"author {start // TOFU_QA_PER_AUTHOR + 1}", items[start : start + TOFU_QA_PER_AUTHOR])
            for start in range(0, len(items), TOFU_QA_PER_AUTHOR)
        ]

    def heldout_qa(self) -> tuple[list[dict], str]:
        """TOFU's never-trained authors (holdout10) less the run's own holdout split, the membership attacks'
        non-members (and the MUSE-format privleak holdout): authors of the same GPT-4-written format that the target
        never saw and that no eval set of this run reads. forget01 leaves 360 items (18 authors), forget05 200
        (10); forget10's non-members are all of holdout10, so forget10 refuses."""
        if self.holdout_split == ALL_HOLDOUT:
            raise BenchmarkError(
                f"method.project_off=heldout trains on TOFU's never-trained authors outside this run's membership "
                f"non-members, and {self.forget_id}'s non-members ({self.holdout_split}) are all of them; use "
                "benchmark.forget_split=forget01 or forget05, or method.project_off=retain"
            )
        evaluated = {item["question"] for item in self.context.split(self.holdout_split)}
        pool = [item for item in self._all_holdout() if item["question"] not in evaluated]
        pool_id = f"{ALL_HOLDOUT}-minus-{self.holdout_split}[{len(pool)} items, sha256 {items_digest(pool)}]"
        return pool, pool_id

    def _all_holdout(self) -> list[dict]:
        return self._extra_split(ALL_HOLDOUT, "method.project_off=heldout", "use method.project_off=retain")

    def _extra_split(self, name: str, reader: str, fix: str) -> list[dict]:
        """A split only some runs read (holdout10, forget10_perturbed): from benchmark.data_dir, or fetched from
        the hub as an artifact of its own. The run's own download holds the configs every run reads, and its content
        key enters every model's cache key, so adding a split there would retrain the target."""
        if self.cfg.data_dir:
            folder = self.context.source_folder()
            if not (folder / f"{name}.jsonl").is_file():
                raise BenchmarkError(
                    f"{reader} reads TOFU's {name} split, and {folder} (benchmark.data_dir) has no {name}.jsonl; "
                    f"add it, or {fix}"
                )
            return self.context.split(name)
        hub = self.context.cached_artifact(
            "hub_data",
            {"hub_id": self.cfg.hub_id, "configs": [name]},
            lambda out: download_tofu(self.cfg.hub_id, [name], out),
        )
        return load_benchmark_split(hub.path, name)

    def _tofu_sets(self) -> dict:
        split = self.context.split
        return {
            "forget": lambda: (
                self._validation[1] if self.validating else split(f"{self.forget_id}_perturbed")
            ),
            "retain": lambda: split("retain_perturbed")[: self.cfg.retain_eval_size],
            "real_authors": lambda: split("real_authors_perturbed"),
            "world_facts": lambda: split("world_facts_perturbed"),
            "holdout": lambda: split(self.holdout_split),
        }

    def relearning_data(self, data: str, fraction: float, seed: int) -> RelearningData:
        """Forget data: a seeded `fraction` of the forget authors' QA, whose questions then leave every eval set.
        Retain data: as many retain items, drawn from those the retain eval set does not hold."""
        forget = self.forget_items()
        count = relearned_count(len(forget), fraction)
        rng = random.Random(seed)
        relearned = [forget[i] for i in sorted(rng.sample(range(len(forget)), count))]
        excluded = frozenset(item["question"] for item in relearned)
        evaluated = f"the {len(forget) - count} of {len(forget)} {self.forget_data_id} items not relearned"
        if data == "forget":
            name = f"{self.forget_data_id}[relearn {count} seed {seed}]"
            what = f"{count} {self.forget_id} items" + (" (its validation set)" if self.validating else "")
            return RelearningData(relearned, name, excluded, what, evaluated)
        retain_evaluated = {item["question"] for item in self._tofu_sets()["retain"]()}
        pool = [item for item in self.retain_items() if item["question"] not in retain_evaluated]
        if len(pool) < count:
            raise BenchmarkError(
                f"benign relearning needs {count} retain items outside the retain eval set, and "
                f"{self.retain_split} has {len(pool)}; lower the attack's fraction"
            )
        items = [pool[i] for i in sorted(random.Random(seed + 1).sample(range(len(pool)), count))]
        return RelearningData(
            items,
            f"{self.data_id('retain')}[relearn {count} of {len(pool)} not evaluated, seed {seed}]",
            excluded,
            f"{count} {self.retain_split} items outside the retain eval set",
            f"{evaluated} (those a forget-set attack with this fraction relearns are left out)",
        )

    def eval_sets(self, required: set[str]) -> dict[str, list[dict]]:
        tofu_sets = self._tofu_sets()
        sets = {name: tofu_sets[name]() for name in required if name in tofu_sets}
        muse_names = {name for name in required if name in MUSE_EVAL_SET_NAMES}
        if muse_names:
            muse_sets = self._muse_sets()
            missing = muse_names - set(muse_sets)
            if missing:
                raise BenchmarkError(f"the MUSE eval sets {sorted(missing)} are not available")
            sets.update({name: muse_sets[name] for name in muse_names})
        return sets

    def _muse_sets(self) -> dict[str, list[dict]]:
        """MUSE-format sets: from `metrics.muse.data_dir` when set, else built from this benchmark's QA."""
        data_dir = self.context.cfg.metrics.muse.data_dir
        if data_dir:
            return load_muse_eval_sets(Path(data_dir))
        split = self.context.split
        return muse_sets_from_tofu_items(
            forget_items=self.forget_items(),
            retain_items=split("retain_perturbed")[: self.cfg.retain_eval_size],
            holdout_items=split(self.holdout_split),
            icl_items=split("instruct"),
        )


@register_benchmark
class SyntheticTofuBenchmark(TofuBenchmark):
    """The TOFU-layout benchmark the generated world wrote (the world behind the embedded model's history)."""

    kinds = ("synthetic_tofu",)
    # The generated world is sized by benchmark.world (its n_benchmark_authors), not by an author subset.
    config_class = BenchmarkConfig
    uses_generated_world = True

    def source(self) -> tuple[Path, str]:
        world = self.context.world_data()
        return world.path / "data", world.content_key

    def preflight(self) -> None:
        self.forget_id  # noqa: B018  (validates the split name; the world writes every split)

    def heldout_qa(self) -> tuple[list[dict], str]:
        """Format-only authors generated for the purpose (synthetic.format_only_authors_qa), as many as the
        benchmark authors, so that any retain subset's size fits. Not the world's holdout authors: at the default
        forget10 every one of them is a membership non-member. Not the instruct authors: the instruct model (θ0
        by default) and the target's replay were trained on their QA, so a fine-tune of θ0 on it learns next to
        nothing new, and the MUSE-format knowmem prompts read it."""
        from msa_bench.data.synthetic import SyntheticWorldSpec, format_only_authors_qa, generate_world

        world = self.cfg.world
        spec = SyntheticWorldSpec(**{f.name: getattr(world, f.name) for f in fields(SyntheticWorldSpec)})
        authors = spec.n_benchmark_authors
        items = format_only_authors_qa(generate_world(spec), authors)
        pool_id = f"format-only authors[{authors} authors, {len(items)} items, sha256 {items_digest(items)}]"
        return items, pool_id
