"""Registry of unlearning methods.

A method is one module in this package plus one YAML in conf/method/. Registering it with `@register_method` makes
it selectable as `method=<name>`; the runner never changes when a method is added.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from omegaconf import MISSING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from msa_bench.benchmarks.base import DeletionRequest
    from msa_bench.pipeline.stages import ModelRef, Pipeline

# How a method unlearns sequential deletion requests (benchmark.requests > 1, docs/sequential_requests.md).
CONTINUES = (
    "continues"  # request k is unlearnt from the method's model after request k-1 (loss-based methods)
)
SUMS = "sums"  # request k's forget vector joins those of requests 1..k-1, all from the same θ0 (arithmetic)


@dataclass
class MethodConfig:
    """Fields every method config has. Each method extends this with its own hyperparameters."""

    name: str = MISSING


class UnlearningMethod(ABC):
    """Turns the pipeline's models into the one model this method evaluates."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    # Whether `produce` fine-tunes a model (so that peft=lora changes what it does); validate_config refuses a
    # LoRA setting on a method that does not.
    fine_tunes: ClassVar[bool] = True
    # CONTINUES, SUMS, or None: the method cannot run benchmark.requests > 1, and `sequential_refusal` says why
    # (validate_config names it before anything is trained).
    sequential: ClassVar[str | None] = None
    sequential_refusal: ClassVar[str] = "it defines no way to unlearn one request after another"

    def __init__(self, config: MethodConfig):
        self.config = config

    @abstractmethod
    def produce(self, pipeline: Pipeline) -> ModelRef:
        """Build (or fetch from the cache) the model this method evaluates."""

    def produce_after_requests(
        self, pipeline: Pipeline, requests: Sequence[DeletionRequest], previous: ModelRef | None
    ) -> ModelRef:
        """The model after `requests` (requests 1..k, in order), given this method's model after requests 1..k-1
        (`previous`, None for the first); only methods with `sequential` set implement it."""
        from msa_bench.errors import StageError

        raise StageError(
            f"method={self.name} cannot unlearn sequential deletion requests: {self.sequential_refusal}"
        )

    def preflight(self, pipeline: Pipeline) -> None:
        """Checks of the method's own data, run with the pipeline's preflight, before anything is trained (the
        held-out QA msa_projected's format vector needs); none by default."""
        return None

    def planned_stages(self) -> list[str]:
        """Titles of the stages `produce` runs, one per model it builds, for the console's "stage k of N".

        The default is one stage: the method builds one model. Override it when `produce` builds several (a
        fine-tuned vector, then the arithmetic) or none (it evaluates a model the runner built anyway).
        """
        return [f"unlearning ({self.name})"]


METHODS: dict[str, type[UnlearningMethod]] = {}


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are registered as {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def discover_methods() -> dict[str, type[UnlearningMethod]]:
    """Import every module of msa_bench.methods so that their @register_method decorators run."""
    import msa_bench.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in {"registry"}:
            importlib.import_module(f"msa_bench.methods.{module.name}")
    return METHODS


def get_method(name: str) -> type[UnlearningMethod]:
    methods = discover_methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(methods))}")
    return methods[name]


def register_method_schemas(store) -> None:
    """Each method's schema becomes /schema/method/<name>, which conf/method/<name>.yaml extends."""
    for name, cls in discover_methods().items():
        store.store(group="schema/method", name=name, node=cls.config_class)
