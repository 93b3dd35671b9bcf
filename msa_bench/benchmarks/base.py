"""The interface every benchmark implements, and the registry of benchmark kinds.

Items are plain dicts: question-answer items ({"question", "answer", ...}) are trained on the answer only, text items
({"text"}) are packed into fixed-length blocks and trained on every token (see Pipeline.training_examples).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from msa_bench.errors import BenchmarkError  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from msa_bench.pipeline.stages import Pipeline


class Benchmark(ABC):
    """One benchmark's data, bound to a pipeline (which knows the config, the cache and the tokenizer)."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.cfg = pipeline.cfg.benchmark
        self.kind = self.cfg.kind

    @property
    @abstractmethod
    def forget_id(self) -> str:
        """A short name for the forget set (forget01, mix_a0, forget), used in cache keys and run names."""

    def data_id(self, role: str) -> str:
        """The name cache keys give the data of `role` (target, oracle, clean, retain)."""
        return f"{self.kind}:{role}:{self.forget_id}"

    @abstractmethod
    def source(self) -> tuple[Path, str]:
        """The folder the data is read from, and a fingerprint of its contents (part of every cache key)."""

    @abstractmethod
    def preflight(self) -> None:
        """Check that every file a run will read is there, before anything is trained."""

    @abstractmethod
    def tokenizer_texts(self) -> list[str]:
        """Benchmark text the embedded model's tokenizer is trained on, besides the generated world's corpus."""

    def clean_items(self) -> list[dict] | None:
        """What an embedded model must learn before the target is made, when the benchmark assumes knowledge a
        pretrained model already has (RESTOR's clean facts); None when nothing."""
        return None

    @abstractmethod
    def target_items(self) -> list[dict]:
        """What the target θ_D is fine-tuned on (the forget set and everything else it saw)."""

    @abstractmethod
    def oracle_items(self) -> list[dict] | None:
        """What the oracle is fine-tuned on; None when the oracle is the model the target started from."""

    @abstractmethod
    def forget_items(self) -> list[dict]:
        """The forget set D_f: the forget vector's data and the gradient methods' forget term."""

    @abstractmethod
    def retain_items(self) -> list[dict]:
        """The retain pool: the retain vector's data and the gradient methods' retain term."""

    @abstractmethod
    def eval_set_names(self) -> set[str]:
        """Every evaluation set this benchmark provides."""

    @abstractmethod
    def eval_sets(self, required: set[str]) -> dict[str, list[dict]]:
        """The `required` evaluation sets by name."""


BENCHMARKS: dict[str, Callable[[Pipeline], Benchmark]] = {}


def register_benchmark(*kinds: str):
    def decorator(cls):
        for kind in kinds:
            BENCHMARKS[kind] = cls
        return cls

    return decorator


def benchmark_kinds() -> list[str]:
    _import_all()
    return sorted(BENCHMARKS)


def make_benchmark(pipeline: Pipeline) -> Benchmark:
    _import_all()
    kind = pipeline.cfg.benchmark.kind
    if kind not in BENCHMARKS:
        raise BenchmarkError(f"benchmark.kind={kind!r} is not supported; use one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[kind](pipeline)


def _import_all() -> None:
    # Importing a module registers its kinds.
    from msa_bench.benchmarks import muse, restor, tofu  # noqa: F401
