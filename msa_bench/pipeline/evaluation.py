"""Evaluation as a cached stage: a model's metrics, per-item values and generations are computed once per
configuration, by whichever suites the requested metric names belong to (msa_bench/metrics/registry.py); this module
names none of them.

Cross-model metrics (forget quality, privleak, the reference-model attack, the judged accuracies) compare a model's
cached evaluation with the oracle's, so the oracle is evaluated once and reused by every later run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msa_bench.config.cache_keys import without_default_options
from msa_bench.errors import (
    MetricUnavailableError,
    MetricUndefinedError,
    NonFiniteMetricError,
)
from msa_bench.metrics.registry import CROSS_MODEL_METRICS, SUITES, discover_suites, suite_of
from msa_bench.models.build import count_parameters, load_model, trusts_remote_code
from msa_bench.pipeline.cost import CostMeter
from msa_bench.pipeline.stage_memory import check_evaluation

log = logging.getLogger("msa_bench.evaluation")


def evaluation_plan(requested: Sequence[str]) -> dict[str, list[str]]:
    """Suite name -> the per-model metrics to compute, including what the requested cross-model metrics read."""
    discover_suites()
    names: list[str] = [n for n in requested if n not in CROSS_MODEL_METRICS]
    for name in requested:
        if name in CROSS_MODEL_METRICS:
            names += [n for n in CROSS_MODEL_METRICS[name].needs if n not in names]
    plan: dict[str, list[str]] = {}
    for name in names:
        plan.setdefault(suite_of(name).name, []).append(name)
    return plan


def required_eval_sets(plan: Mapping[str, Sequence[str]]) -> set[str]:
    return (
        set().union(*(SUITES[suite].required_sets(names) for suite, names in plan.items())) if plan else set()
    )


def _settings_spec(settings) -> dict:
    # Options marked OMIT_AT_DEFAULT (metrics.sampling) are left out at their defaults, so the keys made before
    # they existed still hold.
    spec = without_default_options(settings, asdict(settings))
    spec.pop("names", None)
    spec.pop("name", None)
    # The judge enters cross-model metrics, which are never cached, and the fluency classifier only the evaluations
    # that compute fluency; a suite whose own numbers depend on either says so in its cache_spec.
    for name in ("judge", "fluency_classifier", "fluency_label"):
        spec.pop(name, None)
    # Greedy batching does not change the values; sampled values depend on the batch composition (each step draws
    # the tokens of a whole batch at once: core/decoding.sampled_decode), so with sampling batch_size stays.
    if "sampling" not in spec:
        spec.pop("batch_size", None)
    return spec


def _suite_cache_specs(plan: Mapping[str, Sequence[str]], settings) -> dict:
    """What each planned suite adds to the cache key beyond the settings (`Suite.cache_spec`)."""
    spec: dict = {}
    for suite_name, names in plan.items():
        spec.update(SUITES[suite_name].cache_spec(names, settings))
    return spec


@dataclass(frozen=True)
class EvalView:
    """Another way to evaluate a model than the run's plain evaluation (an attack's): other metric names or settings,
    and eval sets narrowed by `narrow` (e.g. without the forget items a relearning attack trained on). `key` says what
    `narrow` does, for the cache key; it is {} when `narrow` is None."""

    names: tuple[str, ...]
    settings: Any
    key: dict = field(default_factory=dict)
    narrow: Callable[[dict[str, list[dict]]], dict[str, list[dict]]] | None = None

    def eval_sets(self, pipeline) -> dict[str, list[dict]]:
        eval_sets = pipeline.eval_sets(required_eval_sets(evaluation_plan(list(self.names))))
        return eval_sets if self.narrow is None else self.narrow(eval_sets)


def evaluate_model(pipeline, model_ref, view: EvalView | None = None) -> dict:
    """The evaluation of one model (metrics, per_item, generations), from the cache when already computed; `view`
    evaluates it another way than the run's metrics config does."""
    settings = pipeline.cfg.metrics if view is None else view.settings
    plan = evaluation_plan(list(settings.names if view is None else view.names))
    spec = {
        "model": model_ref.key,
        "plan": plan,
        "settings": _settings_spec(settings),
        **_suite_cache_specs(plan, settings),
        "benchmark": pipeline.benchmark_source()[1],
        "forget_split": pipeline.forget_split,
        "retain_eval_size": pipeline.cfg.benchmark.retain_eval_size,
    }
    if view is not None and view.key:
        spec["eval_sets"] = view.key  # absent from plain evaluations, whose keys stay as they were
    if not pipeline.store.contains("eval", spec):
        log.info("evaluating %s (%s)", model_ref.label, ", ".join(plan))

    def build(out: Path) -> dict:
        eval_sets = pipeline.eval_sets(required_eval_sets(plan)) if view is None else view.eval_sets(pipeline)
        # Memory preflight, before loading; the batch shape comes from the eval sets' longest sequence.
        estimated_mb = check_evaluation(pipeline, model_ref.label, model_ref.path, plan, eval_sets)
        model = load_model(
            model_ref.path,
            pipeline.device,
            pipeline.cfg.model.dtype,
            trust_remote_code=trusts_remote_code(pipeline.cfg.model),
        )
        merged: dict = {
            "metrics": {},
            "per_item": {},
            "generations": {},
            "skipped": {},
            "tokens_processed": 0,
        }
        with CostMeter(
            f"eval:{model_ref.label}", device=pipeline.device, estimated_peak_memory_mb=estimated_mb
        ) as meter:
            for suite_name, names in plan.items():
                result = (
                    SUITES[suite_name]
                    .evaluate(
                        model,
                        pipeline.tokenizer(),
                        eval_sets,
                        names,
                        settings,
                        progress=pipeline.cfg.progress.library_bars,
                    )
                    .to_dict()
                )
                for key in ("metrics", "per_item", "generations", "skipped"):
                    merged[key].update(result.get(key) or {})
                merged["tokens_processed"] += int(result.get("tokens_processed") or 0)
            meter.add_tokens(merged["tokens_processed"], count_parameters(model), training=False)
        refuse_non_finite_evaluation(merged, model_ref.label)
        (out / "eval.json").write_text(json.dumps(merged, indent=1, allow_nan=False))
        return {"cost": meter.cost.to_dict()}

    artifact = pipeline.store.get_or_build("eval", spec, build)
    pipeline.record_stage(f"eval:{model_ref.label}", artifact)
    return json.loads((artifact.path / "eval.json").read_text())


def _first_non_finite(value, path: str) -> tuple[str, float] | None:
    """The dotted path and value of the first NaN or inf number in a JSON-like value, None when there is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    items = (
        value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, item in items:
        found = _first_non_finite(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}")
        if found is not None:
            return found
    return None


def refuse_non_finite_evaluation(evaluation: Mapping, model: str) -> None:
    """A NonFiniteMetricError for the first NaN or inf among an evaluation's metrics and per-item values, before it
    is cached: every metric the suites compute gives a number for finite inputs (one that can be undefined says so
    in `skipped` instead), so a non-finite value means the model's outputs are not finite."""
    for section in ("metrics", "per_item"):
        found = _first_non_finite(dict(evaluation.get(section) or {}), section)
        if found is not None:
            path, value = found
            raise NonFiniteMetricError(
                f"the evaluation of {model} gives {value} for {path}; nothing was cached. The model's outputs "
                "are not finite: its weights are too large (lower method.alpha or method.beta, or the learning "
                "rate that trained it) or the evaluation has a bug"
            )


def final_metrics(
    evaluation: Mapping,
    oracle_evaluation: Mapping,
    requested: Sequence[str],
    settings,
    eval_sets_for=None,
    *,
    model: str = "the model",
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The requested metrics of one model (`model` names it in errors; cross-model metrics against the oracle), and
    what produced each number where that is a choice (e.g. the judge).

    A metric that is undefined by its definition for these inputs (MetricUndefinedError, e.g. privleak against an
    oracle AUC of 1; a suite's breakdown part it lists in `skipped`, e.g. lm-eval's standard error of one
    document) is None, with "undefined: <reason>" as its provenance.

    Raises:
        MetricUnavailableError: a requested metric was not computed.
        NonFiniteMetricError: a metric is NaN or inf where its definition gives a number.
    """
    metrics: dict[str, float | None] = {}
    provenance: dict[str, str] = {}
    skipped = evaluation.get("skipped") or {}
    for name in requested:
        if name in CROSS_MODEL_METRICS:
            metric = CROSS_MODEL_METRICS[name]
            kwargs = {"eval_sets": eval_sets_for()} if metric.needs_eval_sets else {}
            try:
                metrics[name] = float(metric.compute(evaluation, oracle_evaluation, settings, **kwargs))
            except MetricUndefinedError as undefined:
                metrics[name], provenance[name] = None, f"undefined: {undefined}"
            if metric.provenance is not None and metrics[name] is not None:
                provenance[name] = metric.provenance(settings)
        elif name in evaluation["metrics"]:
            metrics[name] = float(evaluation["metrics"][name])
            # A suite may break a requested metric down (e.g. lm_eval -> lm_eval/<task>/<metric>); keep the parts.
            for key, value in evaluation["metrics"].items():
                if key.startswith(f"{name}/"):
                    metrics[key] = float(value)
            for key, reason in skipped.items():
                if key.startswith(f"{name}/") and key not in metrics:
                    metrics[key], provenance[key] = None, f"undefined: {reason}"
        else:
            reason = skipped.get(name, "the evaluation did not produce it")
            raise MetricUnavailableError(f"metric {name!r} is unavailable: {reason}")
    for name, value in metrics.items():
        if value is not None and not math.isfinite(value):
            raise NonFiniteMetricError(
                f"metric {name!r} of {model} is {value}, where its definition gives a number; nothing was written. "
                "An input is not finite: the model's weights may be too large (lower method.alpha or method.beta, "
                "or the learning rate that trained it), or the metric has a bug"
            )
    return metrics, provenance


def undefined_reference_reasons(provenance_by_model: Mapping[str, tuple[Mapping, Mapping]]) -> dict[str, str]:
    """For results.json's metric_provenance: why each undefined (None) metric of a reference model (target, oracle)
    is undefined, keyed by the value's place: "reference_metrics.<model>.<metric>"."""
    return {
        f"reference_metrics.{model}.{name}": provenance[name]
        for model, (metrics, provenance) in provenance_by_model.items()
        for name, value in metrics.items()
        if value is None
    }
