"""The target θ_D and the oracle (retrained without the forget set), evaluated through the same code path as every
method, so the comparison table's reference rows come from identical evaluation code."""

from __future__ import annotations

from dataclasses import dataclass

from msa_bench.methods.registry import MethodConfig, UnlearningMethod, register_method


@dataclass
class TargetConfig(MethodConfig):
    name: str = "target"


@dataclass
class OracleConfig(MethodConfig):
    name: str = "oracle"


@register_method
class Target(UnlearningMethod):
    """No unlearning: the model trained on the full benchmark."""

    name = "target"
    config_class = TargetConfig
    fine_tunes = False

    def planned_stages(self) -> list[str]:
        return []  # the runner builds the target anyway

    def produce(self, pipeline):
        return pipeline.target()


@register_method
class Oracle(UnlearningMethod):
    """The ideal: the same recipe as the target, on the retain split only."""

    name = "oracle"
    config_class = OracleConfig
    fine_tunes = False

    def planned_stages(self) -> list[str]:
        return []  # the runner builds the oracle anyway

    def produce(self, pipeline):
        return pipeline.oracle()
