"""The interface every benchmark implements, what a benchmark receives from the pipeline, and the registry.

A benchmark is one module in this package: a `Benchmark` subclass decorated with `@register_benchmark`, which
declares what it is (its kinds, forget splits, report family, default metrics and eval sets) as class attributes.
Validation, the pipeline and reporting ask the registry; none of them names a benchmark kind.

Items are plain dicts: question-answer items ({"question", "answer", ...}) are trained on the answer only, text items
({"text"}) are packed into fixed-length blocks and trained on every token (see Pipeline.training_examples).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from msa_bench.config.schema import BenchmarkConfig
from msa_bench.data.overlap import collapsed
from msa_bench.errors import BenchmarkError, ConfigError

# Modules of this package that hold no benchmark.
_NOT_BENCHMARKS = {"base"}


@dataclass(frozen=True)
class ForgetSplits:
    """The forget-set names a benchmark accepts: a fixed list (`names`) or, when the names come from the data
    (RESTOR's mix_a<k>.json files), a `pattern` with `examples` for error messages."""

    names: tuple[str, ...] = ()
    pattern: str | None = None
    examples: tuple[str, ...] = ()
    hint: str = ""

    def accepts(self, name: str) -> bool:
        if self.pattern is not None:
            return re.fullmatch(self.pattern, name) is not None
        return name in self.names

    def describe(self) -> str:
        """The valid names as an error message lists them."""
        if self.pattern is None:
            text = f"choose one of {list(self.names)}"
        else:
            text = f"use {', '.join(self.examples)}, ..."
        return f"{text} {self.hint}".rstrip()


class CachedArtifact(Protocol):
    """A folder in the artifact cache and the key it is stored under."""

    path: Path
    key: str
    # The key plus a digest of the folder's bytes: what a key made from this folder must include.
    content_key: str


class BenchmarkContext(Protocol):
    """What a benchmark may ask of the run it belongs to (the pipeline provides it)."""

    @property
    def cfg(self) -> Any:
        """The whole run config (MSABenchConfig); a benchmark reads `cfg.benchmark` and its own metric settings."""

    def cached_artifact(self, kind: str, spec: dict, build: Callable[[Path], dict | None]) -> CachedArtifact:
        """The artifact of `kind` keyed by `spec`, made by `build(folder)` the first time (e.g. a hub download)."""

    def world_data(self) -> CachedArtifact:
        """The generated world (built on first use): `path / "data"` holds its TOFU-layout files."""

    def source_folder(self) -> Path:
        """The folder this benchmark's `source()` returned (computed once per run)."""

    def split(self, name: str) -> list[dict]:
        """A TOFU-layout split by name, from the benchmark's folder (pretraining and instruct: the world's)."""


@dataclass(frozen=True)
class RelearningData:
    """What a relearning attack fine-tunes on, and which forget items it leaves out of the evaluation.

    `excluded_questions`: the questions of the forget items the forget-set attack trains on. Both relearning attacks
    (forget and retain data) leave them out of every eval set, so that both are read on the same items; empty when
    the evaluated items are kept whole (MUSE: the relearned articles are chosen to contain none of them)."""

    items: list[dict]
    data_id: str  # names the items in cache keys
    excluded_questions: frozenset[str]
    relearned: str  # for results.json: what the attack trains on ("10 forget10 items")
    evaluated: str  # ... and which items it is read on
    # Text items: the shingles that are the corpus's boilerplate, not shared content (msa_bench/data/overlap.py).
    ignored_shingles: frozenset = frozenset()


@dataclass(frozen=True)
class DeletionRequest:
    """One of the sequential deletion requests the forget set is split into (benchmark.requests).

    `index` counts from 1; `units` names the authors or documents it deletes; `data_id` names its items in cache
    keys (the forget vector's, the unlearned model's)."""

    index: int
    items: list[dict]
    units: tuple[str, ...]
    data_id: str


def split_into_requests(units: list[tuple[str, list[dict]]], count: int, forget_id: str, unit: str):
    """`units` (name, items), in order, cut into `count` contiguous requests whose sizes (in units) differ by at most
    one, the larger first; a BenchmarkError giving the maximum when there are fewer units than requests."""
    if count > len(units):
        raise BenchmarkError(
            f"benchmark.requests={count} is larger than the {len(units)} {unit}s of {forget_id}: each request "
            f"deletes at least one {unit}, so the maximum is benchmark.requests={len(units)}"
        )
    base, extra = divmod(len(units), count)
    requests, start = [], 0
    for index in range(1, count + 1):
        size = base + (1 if index <= extra else 0)
        chosen = units[start : start + size]
        start += size
        names = tuple(name for name, _ in chosen)
        requests.append(
            DeletionRequest(
                index=index,
                items=[item for _, items in chosen for item in items],
                units=names,
                # The unit range identifies the items: the forget set itself is keyed by its fingerprint already.
                data_id=f"{forget_id}[request {index} of {count}: {unit}s {start - size + 1}-{start}]",
            )
        )
    return requests


def items_digest(items: list[dict]) -> str:
    """The first 16 hex digits of the sha256 of `items` as canonical JSON: a data id that follows their content."""
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def relearned_count(n_forget: int, fraction: float) -> int:
    """How many forget items a relearning attack trains on: round(fraction * n), at least 1, leaving at least 1."""
    if n_forget < 2:
        raise BenchmarkError(
            f"the forget set has {n_forget} item(s): a relearning attack needs at least 2, one to relearn and one "
            "to evaluate"
        )
    return min(n_forget - 1, max(1, round(fraction * n_forget)))


class Benchmark(ABC):
    """One benchmark's data, bound to the context of a run (which knows the config, the cache and the splits)."""

    # The values of benchmark.kind this class implements.
    kinds: ClassVar[tuple[str, ...]]
    # Its config schema, /schema/benchmark/<kind>, which conf/benchmark/<name>.yaml extends.
    config_class: ClassVar[type[BenchmarkConfig]] = BenchmarkConfig
    # The forget sets benchmark.forget_split may name.
    forget_splits: ClassVar[ForgetSplits]
    # The paper's table family its results are reported in (tofu, restor, muse).
    family: ClassVar[str]
    # The conf/metrics option made for it, named in errors when other metrics are asked for (None: none is).
    default_metrics: ClassVar[str | None] = None
    # The eval sets evaluated when no metric asks for specific ones, and those that exist but only on request.
    default_eval_sets: ClassVar[tuple[str, ...]]
    optional_eval_sets: ClassVar[tuple[str, ...]] = ()
    # The forget metrics a robustness attack's recovery is reported for, the most telling first (docs/attacks.md),
    # and those among them computed from generated text, which leak@k samples; () where none is defined.
    forget_metrics: ClassVar[tuple[str, ...]] = ()
    generation_forget_metrics: ClassVar[tuple[str, ...]] = ()
    # True when the benchmark *is* the generated world behind the embedded model (its files are the world's, and the
    # embedded tokenizer is trained on the world's corpus alone).
    uses_generated_world: ClassVar[bool] = False
    # True when the embedded tokenizer's key (which includes the data's fingerprint) already identifies all the
    # training data a fine-tune reads, so fine-tune keys need not repeat it (QA items: no packing, no truncation).
    tokenizer_key_identifies_training_data: ClassVar[bool] = False

    def __init__(self, context: BenchmarkContext):
        self.context = context
        self.cfg = context.cfg.benchmark
        self.kind = self.cfg.kind

    @classmethod
    def check_forget_split(cls, name: str) -> str:
        """`name` when this benchmark accepts it as a forget set, else a BenchmarkError naming the valid ones."""
        if not cls.forget_splits.accepts(name):
            raise BenchmarkError(forget_split_error(cls, name))
        return name

    @classmethod
    def eval_set_names(cls) -> set[str]:
        """Every evaluation set this benchmark provides."""
        return set(cls.default_eval_sets) | set(cls.optional_eval_sets)

    @property
    def forget_id(self) -> str:
        """A short name for the forget set (forget01, mix_a0, forget), used in cache keys and run names."""
        return self.check_forget_split(self.cfg.forget_split)

    def data_id(self, role: str) -> str:
        """The name cache keys give the data of `role` (target, oracle, clean, retain)."""
        return f"{self.kind}:{role}:{self.forget_id}"

    # Whether it offers a validation forget set (benchmark.forget_set=validation, docs/validation_protocol.md).
    supports_validation: ClassVar[bool] = False

    @property
    def forget_data_id(self) -> str:
        """The forget set's name in cache keys: `forget_id`, or the validation forget set's own id with
        benchmark.forget_set=validation."""
        return self.forget_id

    def leave_out_validation(self, pool: list[dict]) -> list[dict]:
        """A retain pool less the validation forget set's items (the pool itself when the run is not a
        validation run)."""
        return pool

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
    def eval_sets(self, required: set[str]) -> dict[str, list[dict]]:
        """The `required` evaluation sets by name."""

    def relearning_data(self, data: str, fraction: float, seed: int) -> RelearningData | None:
        """The data of a relearning attack: a seeded `fraction` of the forget set (data="forget") or as many retain
        items that no eval set holds (data="retain"). None when the benchmark defines no relearning attack (the
        attack is then recorded as skipped, with the reason)."""
        return None

    def heldout_qa(self) -> tuple[list[dict], str]:
        """QA in the format of the forget set about entities that are neither forgotten nor read by any eval set,
        and the data id cache keys give it: msa_projected's format vector (method.project_off=heldout) is θ0
        fine-tuned on some of it. An item of it that an eval set also read would be scored by a model built to
        spare it, so it must hold none. A benchmark without such data refuses (this default)."""
        raise BenchmarkError(
            f"method.project_off=heldout needs held-out QA of the forget set's format, and benchmark.kind="
            f"{self.kind} has none (Benchmark.heldout_qa, docs/arithmetic_methods.md); use method.project_off=retain"
        )

    # What one deletion request deletes: "author" (TOFU), "document" (MUSE).
    request_unit: ClassVar[str] = "unit"

    def request_units(self) -> list[tuple[str, list[dict]]]:
        """The forget set as the units a deletion request deletes, in order: (name, items), covering every forget
        item once. A benchmark without such units refuses benchmark.requests > 1."""
        raise BenchmarkError(
            f"benchmark.requests={self.cfg.requests} is not supported for benchmark.kind={self.kind}: it does not "
            "say how its forget set splits into deletion requests (Benchmark.request_units); use benchmark.requests=null"
        )

    def deletion_requests(self, count: int) -> list[DeletionRequest]:
        """The forget set split into `count` disjoint requests along unit boundaries (docs/sequential_requests.md)."""
        return split_into_requests(self.request_units(), count, self.forget_id, self.request_unit)

    def request_eval_items(self, requests: list[DeletionRequest]) -> list[dict[str, int]] | None:
        """How many items of each forget eval set each request's evaluation holds, where the benchmark attributes
        its eval items to requests (MUSE: results.json's requests record them, and a request left without items of
        a set its metrics read is refused); None where a request's own forget items are its evaluation (TOFU)."""
        return None

    def request_eval_left_out(self, requests: list[DeletionRequest]) -> dict[str, dict[str, int]]:
        """How many items of each forget eval set no request's evaluation holds, by reason ({}: none)."""
        return {}

    def request_view_key(self) -> dict:
        """What, besides the kept items, decides request_eval_sets' narrowing (for the evaluations' cache keys)."""
        return {}

    def request_eval_sets(self, eval_sets: dict[str, list[dict]], kept: list[dict]) -> dict:
        """The eval sets with the forget items narrowed to those of `kept` (some requests' items): every other forget
        item's question leaves every set, the retain and utility sets keep all theirs. QA benchmarks; a benchmark of
        text items overrides it."""
        kept_questions = {item["question"] for item in kept}
        others = frozenset(item["question"] for item in self.forget_items()) - kept_questions
        return self.without_relearned(eval_sets, others)

    def without_relearned(self, eval_sets: dict[str, list[dict]], excluded: frozenset[str]) -> dict:
        """The eval sets without the items that ask an `excluded` question (the relearned forget items): by their
        question, or inside their prompt or text (the MUSE-format sets built from QA items)."""
        questions = [collapsed(question) for question in excluded]

        def asks_excluded(item: dict) -> bool:
            if item.get("question") in excluded:
                return True
            texts = [collapsed(item[key]) for key in ("prompt", "text") if isinstance(item.get(key), str)]
            return any(question in text for question in questions for text in texts)

        return {
            name: [item for item in items if not asks_excluded(item)] for name, items in eval_sets.items()
        }


def forget_split_error(cls: type[Benchmark], name: str) -> str:
    return (
        f"benchmark.forget_split={name!r} is not valid for benchmark.kind={'/'.join(cls.kinds)}; "
        f"{cls.forget_splits.describe()}"
    )


BENCHMARKS: dict[str, type[Benchmark]] = {}


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Make `cls` selectable as benchmark.kind=<each of cls.kinds>."""
    for kind in cls.kinds:
        if kind in BENCHMARKS and BENCHMARKS[kind] is not cls:
            raise ValueError(f"two benchmarks are registered as kind {kind!r}")
        BENCHMARKS[kind] = cls
    return cls


def discover_benchmarks() -> dict[str, type[Benchmark]]:
    """Import every module of msa_bench.benchmarks so that their @register_benchmark decorators run."""
    import msa_bench.benchmarks as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_BENCHMARKS:
            importlib.import_module(f"msa_bench.benchmarks.{module.name}")
    return BENCHMARKS


def benchmark_kinds() -> list[str]:
    return sorted(discover_benchmarks())


def benchmark_class(kind: str) -> type[Benchmark]:
    """The class registered for benchmark.kind=`kind`; a ConfigError naming the registered kinds otherwise."""
    benchmarks = discover_benchmarks()
    if kind not in benchmarks:
        raise ConfigError(f"benchmark.kind={kind!r} is not supported; valid kinds: {sorted(benchmarks)}")
    return benchmarks[kind]


def report_families() -> dict[str, str]:
    """benchmark.kind -> the report family its results are tabled in."""
    return {kind: cls.family for kind, cls in discover_benchmarks().items()}


def register_benchmark_schemas(store) -> None:
    """Each kind's schema becomes /schema/benchmark/<kind>, which the benchmark YAMLs extend."""
    for kind, cls in discover_benchmarks().items():
        store.store(group="schema/benchmark", name=kind, node=cls.config_class)


def make_benchmark(context: BenchmarkContext) -> Benchmark:
    return benchmark_class(context.cfg.benchmark.kind)(context)
