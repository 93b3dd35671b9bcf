"""One registry over every metric suite (TOFU, MUSE, RESTOR, lm-eval) and every cross-model metric, with the
metadata of each metric.

A *suite* computes metrics of one model from its eval sets (`evaluate`). A *cross-model* metric is computed afterwards
from two cached evaluations, the model's and the oracle's (forget quality, privleak, the reference-model attack, the
judged accuracies), so that the oracle is evaluated once and reused by every later run.

Every metric a suite or a cross-model metric provides comes with a `MetricInfo`: which way is better, and how a table
labels it. Reporting reads nothing else, so a metric without metadata is an error, not a guess.

Suites register themselves with `register_suite` when their module is imported; `discover_suites` imports every
module of msa_bench.metrics (the way `msa_bench.methods.registry.discover_methods` finds methods), so a new suite is
one module there and a YAML in conf/metrics/.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from msa_bench.errors import ConfigError, MetricError


class Direction(enum.StrEnum):
    """Which values of a metric are better, for tables scored relative to the ideal (oracle) model."""

    HIGHER = "higher"  # higher is better
    LOWER = "lower"  # lower is better
    TOWARD_ORACLE = (
        "toward_oracle"  # the oracle's value is the goal, overshooting it in either direction is not
    )


# results.json keys of a metric under a robustness attack: attack/<attack>/<metric>, and the metric before the attack
# on the attack's items: attack/<attack>/unattacked/<metric> (issue 14).
ATTACK_PREFIX = "attack/"
UNATTACKED_PREFIX = "unattacked/"
# Sequential deletion requests (msa_bench/sequential): request/<k>/<section>/<metric>.
REQUEST_PREFIX = "request/"


@dataclass(frozen=True)
class MetricInfo:
    name: str
    direction: Direction
    label: str  # a table's column header
    latex: str | None = None  # the LaTeX column header; None: the label, escaped


@dataclass(frozen=True)
class Suite:
    """metrics: what it provides. evaluate(model, tokenizer, eval_sets, names, settings, progress=) -> EvalResult,
    where settings is the MetricsConfig. required_sets(names) -> the eval set names it needs.
    cache_spec(names, settings) -> what else, beyond the MetricsConfig's values that every evaluation's cache key
    holds, changes this suite's numbers (e.g. a judge that is only read in some configurations); {} when nothing.
    item_eval_set(key) -> the eval set whose items a per-item value list `key` of this suite's results follows, in
    order, or None when it follows none (per_item.json then keeps it apart instead of guessing).
    preflight(names, settings) -> None, raising what the evaluation would fail on (e.g. a model a metric reads
    that cannot be loaded), checked before anything is trained."""

    name: str
    metrics: tuple[MetricInfo, ...]
    evaluate: Callable
    required_sets: Callable[[Sequence[str]], set[str]]
    cache_spec: Callable[[Sequence[str], object], dict] = lambda names, settings: {}
    item_eval_set: Callable[[str], str | None] = lambda key: None
    preflight: Callable[[Sequence[str], object], None] = lambda names, settings: None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.metrics)


@dataclass(frozen=True)
class CrossModelMetric:
    """compute(evaluation, oracle_evaluation, settings) -> float, from two eval dicts (EvalResult.to_dict()).
    needs: the per-model metrics whose per-item values it reads (they are computed even if not requested).
    needs_eval_sets: compute also receives `eval_sets=` (the items), e.g. for judges that need the candidates.
    provenance: optional settings -> str saying what produced the number (e.g. which judge), kept in results.json.
    reads_reference: False for a score registered here for its null handling that never reads the oracle's
    evaluation (the memorization and utility aggregates); the noise floor leaves those out."""

    info: MetricInfo
    needs: tuple[str, ...]
    compute: Callable[..., float]
    needs_eval_sets: bool = False
    provenance: Callable[[object], str] | None = None
    reads_reference: bool = True

    @property
    def name(self) -> str:
        return self.info.name


SUITES: dict[str, Suite] = {}
CROSS_MODEL_METRICS: dict[str, CrossModelMetric] = {}
# Modules of msa_bench.metrics that cannot hold a suite.
_NOT_SUITES = frozenset({"registry"})


def register_suite(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


def register_cross_model_metric(metric: CrossModelMetric) -> CrossModelMetric:
    CROSS_MODEL_METRICS[metric.name] = metric
    return metric


def discover_suites() -> dict[str, Suite]:
    """Import every module of msa_bench.metrics, so that their `register_suite` calls run."""
    import msa_bench.metrics as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_SUITES:
            importlib.import_module(f"msa_bench.metrics.{module.name}")
    return SUITES


def all_metric_names() -> list[str]:
    discover_suites()
    names = [n for suite in SUITES.values() for n in suite.metric_names]
    return names + [n for n in CROSS_MODEL_METRICS if n not in names]


def validate_metric_names(names: Sequence[str], suite: str | None = None) -> None:
    """Raise ConfigError naming every name that is not a metric: of any suite or cross-model metric, or with `suite`,
    a per-model metric of that suite (a cross-model metric is then named as such: it is computed from two
    evaluations, not by the suite)."""
    if isinstance(names, str):
        raise TypeError(f"metric names must be a sequence of names, not the string {names!r}")
    valid = all_metric_names() if suite is None else list(discover_suites()[suite].metric_names)
    cross_model = [name for name in names if suite is not None and name in CROSS_MODEL_METRICS]
    if cross_model:
        needs = sorted({need for name in cross_model for need in CROSS_MODEL_METRICS[name].needs})
        raise ConfigError(
            f"{cross_model} compare this model with the oracle: they are cross-model metrics, computed from both "
            f"evaluations with msa_bench.metrics.registry.CROSS_MODEL_METRICS, evaluating {needs} here"
        )
    unknown = [name for name in names if name not in valid]
    if unknown:
        whose = "" if suite is None else f"{suite} "
        raise ConfigError(f"unknown {whose}metric(s) {unknown}; valid names are: {', '.join(valid)}")


def suite_of(name: str) -> Suite:
    discover_suites()
    for suite in SUITES.values():
        if name in suite.metric_names:
            return suite
    raise KeyError(name)


def _registered_info() -> Mapping[str, MetricInfo]:
    discover_suites()
    infos = {info.name: info for suite in SUITES.values() for info in suite.metrics}
    infos.update({name: metric.info for name, metric in CROSS_MODEL_METRICS.items()})
    return infos


def metric_info(name: str) -> MetricInfo:
    """The metadata of a metric. A suite's breakdown of one of its metrics, "<metric>/<part>" (lm-eval's
    lm_eval/<task>/<metric>), takes that metric's direction and is labelled by its full name. A metric under a
    robustness attack, "attack/<attack>/<metric>" (and its value before the attack on the same items,
    "attack/<attack>/unattacked/<metric>"), takes the underlying metric's direction."""
    infos = _registered_info()
    if name in infos:
        return infos[name]
    # --- robustness attacks (issue 14) ---
    if name.startswith(ATTACK_PREFIX) and name.count("/") >= 2:
        attack, metric = name.removeprefix(ATTACK_PREFIX).split("/", 1)
        before = metric.startswith(UNATTACKED_PREFIX)
        metric = metric.removeprefix(UNATTACKED_PREFIX)
        try:
            underlying = metric_info(metric)
        except MetricError as error:
            raise MetricError(
                f"{name!r} is attack {attack!r} on a metric without metadata: {error}"
            ) from error
        label = f"{metric} [{attack}{', unattacked' if before else ''}]"
        return MetricInfo(name=name, direction=underlying.direction, label=label)
    # --- end robustness attacks ---
    if name.startswith(REQUEST_PREFIX) and name.count("/") >= 3:
        index, section, metric = name.removeprefix(REQUEST_PREFIX).split("/", 2)
        if section == "cost":  # request/<k>/cost/<wall_seconds|flops|...>: a cost, lower is better
            return MetricInfo(name=name, direction=Direction.LOWER, label=f"{metric} [request {index}]")
        underlying = metric_info(metric)
        return MetricInfo(
            name=name, direction=underlying.direction, label=f"{metric} [request {index}, {section}]"
        )
    family = name.split("/", 1)[0]
    if "/" in name and family in infos:
        return MetricInfo(name=name, direction=infos[family].direction, label=name)
    raise MetricError(
        f"metric {name!r} has no metadata: the suite that computes it must list a MetricInfo for it "
        "(msa_bench/metrics/registry.py)"
    )
