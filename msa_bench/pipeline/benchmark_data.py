"""The benchmark's side of the pipeline: its data, its eval sets, and the training examples made from its items.

The benchmark (msa_bench/benchmarks) sees the run only through a `BenchmarkContext`; `RunContext` is the one the
pipeline gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from msa_bench.benchmarks import Benchmark, make_benchmark
from msa_bench.data.retain_draw import draw_retain_indices, retain_subset_size
from msa_bench.data.synthetic import load_benchmark_split
from msa_bench.errors import StageError
from msa_bench.training.data import packed_text_blocks, qa_examples

# Splits that always come from the generated world: the embedded model's pretraining and instruct data.
WORLD_SPLITS = ("pretraining", "instruct")


class RunContext:
    """The BenchmarkContext of one pipeline: its config, its artifact cache, its world and its splits."""

    def __init__(self, pipeline):
        self._pipeline = pipeline

    @property
    def cfg(self):
        return self._pipeline.cfg

    def cached_artifact(self, kind: str, spec: dict, build: Callable[[Path], dict | None]):
        return self._pipeline.store.get_or_build(kind, spec, build)

    def world_data(self):
        return self._pipeline.world()

    def source_folder(self) -> Path:
        return self._pipeline.benchmark_source()[0]

    def split(self, name: str) -> list[dict]:
        return self._pipeline.split(name)


class BenchmarkData:
    """Pipeline stages that read the benchmark (a mixin of Pipeline)."""

    @property
    def benchmark(self) -> Benchmark:
        if self._benchmark is None:
            self._benchmark = make_benchmark(RunContext(self))
        return self._benchmark

    def benchmark_source(self) -> tuple[Path, str]:
        """The folder the benchmark's data is read from, and a fingerprint of its contents."""
        if self._benchmark_source is None:
            self._benchmark_source = self.benchmark.source()
        return self._benchmark_source

    def split(self, name: str) -> list[dict]:
        """A TOFU-layout split: the embedded model's pretraining and instruct data always come from the generated
        world; the others from the benchmark's folder."""
        if name not in self._split_cache:
            folder = self.world().path / "data" if name in WORLD_SPLITS else self.benchmark_source()[0]
            self._split_cache[name] = load_benchmark_split(folder, name)
        return self._split_cache[name]

    @property
    def forget_split(self) -> str:
        """The forget set's name in cache keys (forget01, mix_a0, forget; a validation forget set's own id)."""
        return self.benchmark.forget_data_id

    def forget_items(self) -> list[dict]:
        return self.benchmark.forget_items()

    def retain_items(self) -> list[dict]:
        return self.benchmark.retain_items()

    def eval_sets(self, required: set[str] | None = None) -> dict[str, list[dict]]:
        """The evaluation sets by name, loading only those `required` (the benchmark's defaults when None)."""
        if required is None:
            required = set(self.benchmark.default_eval_sets)
        self.check_eval_sets(set(required))
        return self.benchmark.eval_sets(set(required))

    def preflight_eval_sets(self, required: set[str]) -> None:
        """Before any training: the benchmark has the `required` eval sets, and (for data not generated here) every
        file they come from is parsed in full, so a malformed eval file fails now rather than after training."""
        self.check_eval_sets(required)
        if not self.benchmark.uses_generated_world:
            self.benchmark.eval_sets(set(required))

    def check_eval_sets(self, required: set[str]) -> None:
        benchmark = self.benchmark
        unknown = required - benchmark.eval_set_names()
        if unknown:
            advice = (
                f"use its metrics (`metrics={benchmark.default_metrics}`)"
                if benchmark.default_metrics
                else f"choose metrics that read its eval sets {sorted(benchmark.eval_set_names())}"
            )
            raise StageError(
                f"metrics.names={list(self.cfg.metrics.names)} need the eval set(s) {sorted(unknown)}, which "
                f"benchmark {self.cfg.benchmark.name!r} (kind {benchmark.kind}) does not have; {advice}"
            )

    def training_examples(self, items: list[dict], what: str = "training data") -> list[dict]:
        """Question-answer items train on the answer; text items are packed into benchmark.block_size blocks."""
        tokenizer = self.tokenizer()
        qa = [item for item in items if "question" in item]
        texts = [item["text"] for item in items if "question" not in item]
        examples = qa_examples(tokenizer, qa, self.cfg.model.max_position_embeddings) if qa else []
        if texts:
            block_size = min(self.cfg.benchmark.block_size, self.cfg.model.max_position_embeddings)
            blocks = packed_text_blocks(tokenizer, texts, block_size)
            if not blocks:
                raise StageError(
                    f"{what}: {len(texts)} text(s) hold fewer tokens than one block of benchmark.block_size="
                    f"{block_size}; lower it or add data"
                )
            examples += blocks
        if not examples:
            raise StageError(f"{what} is empty")
        return examples

    def data_spec(self) -> dict:
        """What identifies the benchmark data a fine-tune reads, beyond its data id."""
        if self.embedded and self.benchmark.tokenizer_key_identifies_training_data:
            return {}  # the embedded tokenizer's key already covers the data (and keeps old caches valid)
        b = self.cfg.benchmark
        return {
            "source": self.benchmark_source()[1],
            "max_documents": b.max_documents,
            "block_size": b.block_size,
        }

    def retain_subset(
        self,
        size: int | None,
        seed: int,
        *,
        fraction: float | None = None,
        split: str | None = None,
        draw: str = "sample",
    ) -> tuple[list[dict], str]:
        """A seeded retain subset and the data id cache keys give it.

        The pool is the benchmark's retain pool, or the named `split` of its data folder. Its size: `size` items,
        or int(len(pool) * fraction), or by default the size of the forget set (as in the paper), capped at the
        pool's size. `draw` says how the items are picked (see msa_bench/data/retain_draw.py)."""
        pool = self.split(split) if split is not None else self.retain_items()
        pool_name = split if split is not None else self.benchmark.data_id("retain")
        if split is not None:  # a validation run's retain terms never see its forget set
            kept = self.benchmark.leave_out_validation(pool)
            if len(kept) != len(pool):
                pool, pool_name = kept, f"{split}-minus-{self.forget_split}"
        size = retain_subset_size(size, fraction, len(pool), len(self.forget_items()))
        indices = draw_retain_indices(draw, len(pool), size, seed)
        if draw == "sample" and split is None:
            data_id = (
                f"{pool_name}[{size} seed {seed}]"  # the id this subset has always had (keeps caches valid)
            )
        else:
            data_id = f"{pool_name}[{size} of {len(pool)}, {draw} seed {seed}]"
        return [pool[i] for i in indices], data_id

    def heldout_subset(self, size: int, seed: int, draw: str = "sample") -> tuple[list[dict], str]:
        """`size` items of the benchmark's held-out QA (Benchmark.heldout_qa), drawn as a retain subset is, and
        the data id cache keys give them: msa_projected's format vector trains on them."""
        if self._heldout_qa is None:
            self._heldout_qa = self.benchmark.heldout_qa()
        pool, pool_id = self._heldout_qa
        if not 1 <= size <= len(pool):
            raise StageError(
                f"method.project_off=heldout: the format vector trains on as many items as the retain vector "
                f"({size}), and the held-out QA {pool_id} holds {len(pool)}; lower method.retain_size or "
                "method.retain_fraction"
            )
        indices = draw_retain_indices(draw, len(pool), size, seed)
        return [pool[i] for i in indices], f"{pool_id}[{size} of {len(pool)}, {draw} seed {seed}]"
