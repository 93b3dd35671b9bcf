"""MUSE (Shi et al. 2024): News (BBC articles) or Books (Harry Potter) corpora, unlearned at the document level.

- The target learns the forget corpus and the retain corpus; the oracle learns the retain corpus only. Both corpora
  are packed into `benchmark.block_size`-token chunks.
- The retain vector and the gradient methods' retain term use the retain corpus.
- Evaluation: verbmem, knowmem (forget and retain) and privleak, read from the same folder (msa_bench/data/muse.py).
- Sequential deletion requests (benchmark.requests) delete contiguous blocks of forget articles; each forget eval
  item is evaluated in the request of the articles it comes from (msa_bench/data/muse_attribution.py).
- The validation forget set (benchmark.forget_set=validation) is a block of retain texts, with eval sets made from
  them and a validation oracle that never saw them (muse_validation.py).

The data comes from `benchmark.data_dir` (a folder in MUSE's layout, e.g. ../shared/data/muse-news) or, when it is
null, from the hub (`benchmark.hub_id`), fetched once into the cache. MUSE-Books is not distributed with the project:
without network it needs a user's copy (MSA_BENCH_DATA/muse-books).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from msa_bench.benchmarks import muse_validation as validation
from msa_bench.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    DeletionRequest,
    ForgetSplits,
    RelearningData,
    register_benchmark,
    relearned_count,
)
from msa_bench.config.schema import BenchmarkConfig
from msa_bench.data.muse import (
    KNOWMEM_FORGET,
    KNOWMEM_RETAIN,
    MUSE_EVAL_SET_NAMES,
    PRIVLEAK_FORGET,
    PRIVLEAK_HOLDOUT,
    VERBMEM_FORGET,
    check_muse_folder,
    load_muse_corpus,
    load_muse_eval_sets,
    muse_required_files,
)
from msa_bench.data.muse_attribution import (
    RELATED_SHARE,
    SIMILARITY_FLOOR,
    RequestAttribution,
    attribute_to_requests,
    eval_item_sources,
    item_key,
)
from msa_bench.data.overlap import boilerplate, content_shingles, shares_content
from msa_bench.data.sources import download_muse, local_data_source

FORGET_ID = "forget"
# The fields of an eval item that hold passages of text a relearned article could contain.
PASSAGE_FIELDS = ("prompt", "gt", "text")


def evaluated_passages(eval_sets: dict[str, list[dict]]) -> list[str]:
    """Every verbmem prompt and continuation and every privleak text that is evaluated."""
    return [
        value
        for items in eval_sets.values()
        for item in items
        for field_name in PASSAGE_FIELDS
        if isinstance(value := item.get(field_name), str) and value.strip()
    ]


@dataclass(frozen=True)
class MuseValidation:
    """The validation forget set: its texts, its id, and every eval set as a validation run reads it."""

    block: list[dict]
    id: str
    eval_sets: dict[str, list[dict]]


@dataclass
class MuseConfig(BenchmarkConfig):
    # The raw corpora, relative to data_dir. The retain corpus is what the target and the oracle learn besides the
    # forget corpus, and what the retain vector is fine-tuned on.
    forget_corpus: str = "raw/forget.json"
    retain_corpus: str = "raw/retain1.json"
    # benchmark.forget_set=validation: how many texts at the end of the retain corpus form the validation forget set
    # (muse_validation.py); null: as many as the forget corpus has documents, which needs a retain corpus twice that.
    validation_documents: int | None = None


@register_benchmark
class MuseBenchmark(Benchmark):
    kinds = ("muse",)
    config_class = MuseConfig
    forget_splits = ForgetSplits(names=(FORGET_ID,), hint="(choose the corpus with benchmark.forget_corpus)")
    family = "muse"
    default_metrics = "muse"
    default_eval_sets = MUSE_EVAL_SET_NAMES
    # The min-k% membership AUC first: at CPU scale it is the forget metric that separates target from oracle.
    forget_metrics = ("muse_mia_min_k", "forget_verbmem_ROUGE", "forget_knowmem_ROUGE")
    generation_forget_metrics = ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE")
    supports_validation = True  # benchmark.forget_set=validation (muse_validation.py)

    def source(self) -> tuple[Path, str]:
        if self.cfg.data_dir:
            folder = Path(self.cfg.data_dir).expanduser()
            if not folder.is_dir():
                raise BenchmarkError(
                    f"benchmark.data_dir={folder} does not exist: MUSE needs a folder in the layout of "
                    f"{self.cfg.hub_id or 'muse-bench/MUSE-News'} (raw/, verbmem/, knowmem/, privleak/). MUSE-Books is "
                    "not distributed with msa_bench: set benchmark.data_dir=null to fetch it from the hub (needs "
                    "network), or point MSA_BENCH_DATA at a folder with a muse-books/ copy"
                )
            return local_data_source(folder, "benchmark.data_dir", recursive=True)
        if not self.cfg.hub_id:
            raise BenchmarkError(f"benchmark {self.cfg.name!r} has neither data_dir nor hub_id")
        hub_id = self.cfg.hub_id
        files = muse_required_files(self.cfg.forget_corpus, self.cfg.retain_corpus)
        hub = self.context.cached_artifact(
            "hub_data",
            {"hub_id": hub_id, "layout": "muse", "files": files},
            lambda out: download_muse(hub_id, out, files=files),
        )
        return hub.path, hub.content_key

    def preflight(self) -> None:
        self.forget_id  # noqa: B018  (validates the split name)
        folder = self.context.source_folder()
        key = "benchmark.data_dir" if self.cfg.data_dir else f"the hub download of {self.cfg.hub_id}"
        check_muse_folder(folder, self.cfg.forget_corpus, self.cfg.retain_corpus, key=key)
        # Every file parsed in full and every record checked, before any training (the loads are kept).
        self._forget, self._retain, self._eval_sets  # noqa: B018
        if self.validating:
            self._validation  # noqa: B018  (the validation set's errors, before any training)

    def _corpus(self, relative_path: str, key: str) -> list[dict]:
        folder = self.context.source_folder()
        texts = load_muse_corpus(folder, relative_path, max_documents=self.cfg.max_documents, key=key)
        return [{"text": text} for text in texts]

    @cached_property
    def _forget(self) -> list[dict]:
        return self._corpus(self.cfg.forget_corpus, "benchmark.forget_corpus")

    @cached_property
    def _retain(self) -> list[dict]:
        return self._corpus(self.cfg.retain_corpus, "benchmark.retain_corpus")

    def tokenizer_texts(self) -> list[str]:
        texts = [item["text"] for item in self._forget + self._retain]
        for records in self.eval_sets(set(MUSE_EVAL_SET_NAMES)).values():
            for record in records:
                texts.extend(str(value) for value in record.values() if isinstance(value, str))
        return texts

    def target_items(self) -> list[dict]:
        return self._forget + self._retain

    def oracle_items(self) -> list[dict]:
        if self.validating:  # never saw the validation texts
            return self._forget + self.retain_items()
        return self._retain

    def forget_items(self) -> list[dict]:
        return self._validation.block if self.validating else self._forget

    def retain_items(self) -> list[dict]:
        return self.leave_out_validation(self._retain)

    @property
    def validating(self) -> bool:
        return self.cfg.forget_set == "validation"

    def data_id(self, role: str) -> str:
        if self.validating and role in ("oracle", "retain"):  # what they leave out joins their names
            return f"{self.kind}:{role}:{self.forget_data_id}"
        return super().data_id(role)

    @property
    def forget_data_id(self) -> str:
        return self._validation.id if self.validating else self.forget_id

    def leave_out_validation(self, pool: list[dict]) -> list[dict]:
        if not self.validating:
            return pool
        block = {item["text"] for item in self._validation.block}
        return [item for item in pool if item.get("text") not in block]

    @cached_property
    def _validation(self) -> MuseValidation:
        block, start = validation.validation_block(
            self._retain, len(self._forget), self.cfg.validation_documents
        )
        texts = [item["text"] for item in block]
        validation.check_disjoint(
            texts,
            [item["text"] for item in self._forget],
            [item["text"] for item in self._eval_sets.get(PRIVLEAK_HOLDOUT, [])],
        )
        taught, kept = validation.split_retain_qa(
            self._eval_sets.get(KNOWMEM_RETAIN, []),
            [item["text"] for item in self._retain],
            start,
            [item["text"] for item in self._forget],
        )
        eval_sets = dict(self._eval_sets)
        eval_sets[VERBMEM_FORGET] = validation.verbmem_items(texts, self._eval_sets.get(VERBMEM_FORGET, []))
        eval_sets[PRIVLEAK_FORGET] = [{"text": text} for text in texts]
        eval_sets[KNOWMEM_FORGET] = taught
        eval_sets[KNOWMEM_RETAIN] = kept
        return MuseValidation(
            block, validation.validation_id(self.cfg.retain_corpus, block, start), eval_sets
        )

    def relearning_data(self, data: str, fraction: float, seed: int) -> RelearningData:
        """Forget data: a seeded `fraction` of the forget articles, among those that share no passage (a run of 12
        words that is not boilerplate, msa_bench/data/overlap.py) with any evaluated verbmem or privleak text, so every
        eval item stays evaluated. Retain data: as many retain articles, with the same rule (all of them that pass it
        when the corpus is smaller). knowmem's questions name no source article, so a relearned article may hold the
        answer to one: that is relearning on related data, not on an evaluated item. A validation run relearns retain
        articles only: each validation text is one of its privleak members, so none can be relearnt and stay out of
        the eval."""
        if self.validating and data == "forget":
            raise BenchmarkError(
                "a relearning attack on forget data with benchmark.forget_set=validation: every text of MUSE's "
                "validation forget set is evaluated (it is a privleak member), so none can be relearnt without "
                "being read; run the attack on the test forget set (benchmark.forget_set=test) or on retain data"
            )
        # A fraction of the forget set being unlearned: on validation, of the block.
        count = relearned_count(len(self.forget_items()), fraction)
        ignored = self._boilerplate
        eval_sets = self._validation.eval_sets if self.validating else self._eval_sets
        evaluated = content_shingles(evaluated_passages(eval_sets), ignored)
        corpus, name = (
            (self._forget, "forget articles")
            if data == "forget"
            else (self.retain_items(), "retain articles")
        )
        pool = [item for item in corpus if not shares_content(item["text"], evaluated, ignored)]
        if data == "retain":
            count = min(count, len(pool))
        if len(pool) < count or not pool:
            raise BenchmarkError(
                f"relearning needs {max(count, 1)} {name} sharing no passage with the evaluated items, and "
                f"{len(pool)} of the {len(corpus)} do; lower the attack's fraction"
            )
        items = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), count))]
        return RelearningData(
            items,
            f"muse:{data}{'@' + self.forget_data_id if self.validating else ''}[relearn {count} of {len(pool)}, "
            f"seed {seed}]",
            frozenset(),
            f"{count} of the {len(pool)} {name} sharing no passage with an evaluated verbmem or privleak text",
            "every eval item",
            ignored,
        )

    @cached_property
    def _boilerplate(self) -> frozenset:
        """The runs of words the news corpora repeat (e.g. a video player's notice): not shared content."""
        return boilerplate([item["text"] for item in self._forget + self._retain])

    @cached_property
    def _eval_sets(self) -> dict[str, list[dict]]:
        return load_muse_eval_sets(self.context.source_folder())

    def eval_sets(self, required: set[str]) -> dict[str, list[dict]]:
        if not self.validating:
            return {name: self._eval_sets[name] for name in required if name in self._eval_sets}
        sets = self._validation.eval_sets
        chosen = {name: sets[name] for name in required if name in sets}
        validation.required_nonempty(chosen, required, self.forget_data_id)
        return chosen

    request_unit = "document"

    def request_units(self) -> list[tuple[str, list[dict]]]:
        """The forget articles in corpus order, one unit each (named by their position, from 1)."""
        return [(f"document {position}", [item]) for position, item in enumerate(self._forget, start=1)]

    def request_eval_sets(self, eval_sets: dict[str, list[dict]], kept: list[dict]) -> dict:
        """The forget eval sets narrowed to the items attributed to the requests whose articles `kept` holds (whole
        requests of benchmark.requests); the retain, holdout and in-context sets keep all their items."""
        requests = self.deletion_requests(self.cfg.requests or 1)
        kept_texts = {item["text"] for item in kept}
        kept_requests = {r.index for r in requests if all(item["text"] in kept_texts for item in r.items)}
        attribution = self._attribution(requests)
        narrowed = dict(eval_sets)
        for name, request_of in attribution.request_of.items():
            if name in eval_sets:
                narrowed[name] = [
                    item for item in eval_sets[name] if request_of.get(item_key(name, item)) in kept_requests
                ]
        return narrowed

    def request_eval_items(self, requests: list[DeletionRequest]) -> list[dict[str, int]]:
        attribution = self._attribution(requests)
        return [attribution.counts(request.index) for request in requests]

    def request_eval_left_out(self, requests: list[DeletionRequest]) -> dict[str, dict[str, int]]:
        return self._attribution(requests).left_out

    def request_view_key(self) -> dict:
        return {"attribution": {"similarity_floor": SIMILARITY_FLOOR, "related_share": RELATED_SHARE}}

    def _attribution(self, requests: list[DeletionRequest]) -> RequestAttribution:
        """The eval items' requests under this split (the forget articles are the requests' items, in order)."""
        return attribute_to_requests(
            self._sources, [request.index for request in requests for _ in request.items]
        )

    @cached_property
    def _sources(self) -> dict:
        """The articles each forget eval item comes from, found in the whole forget corpus (benchmark.max_documents
        aside), so that an item of a dropped article is known as such rather than matched to a kept one."""
        corpus = load_muse_corpus(
            self.context.source_folder(), self.cfg.forget_corpus, key="benchmark.forget_corpus"
        )
        return eval_item_sources(self._eval_sets, corpus)
