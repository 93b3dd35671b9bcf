"""Evaluation as a cached stage: a model's metrics and per-item values are computed once per configuration.

Forget quality compares a model's per-item forget truth ratios with the oracle's, so it is computed from two cached
evaluations instead of re-evaluating the oracle in every run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from msa_bench.metrics.suite import evaluate_tofu
from msa_bench.metrics.tofu import forget_quality
from msa_bench.models.build import count_parameters, load_model
from msa_bench.pipeline.cost import CostMeter

log = logging.getLogger("msa_bench.evaluation")

# Metrics computed from two evaluations (this model's and the oracle's) rather than from one model.
CROSS_MODEL_METRICS = {"forget_quality": "forget_truth_ratio"}


def per_model_metric_names(requested: list[str]) -> list[str]:
    names = [n for n in requested if n not in CROSS_MODEL_METRICS]
    for metric, needs in CROSS_MODEL_METRICS.items():
        if metric in requested and needs not in names:
            names.append(needs)
    return names


def evaluate_model(pipeline, model_ref) -> dict:
    """Metrics, per-item values and generations of one model, from the cache when already computed."""
    cfg = pipeline.cfg.metrics
    names = per_model_metric_names(list(cfg.names))
    spec = {
        "model": model_ref.key,
        "metrics": names,
        "max_new_tokens": cfg.max_new_tokens,
        "world": pipeline.world().key,
        "forget_split": pipeline.forget_split,
        "retain_eval_size": pipeline.cfg.benchmark.retain_eval_size,
    }
    if pipeline.store.lookup("eval", spec) is None:
        log.info("evaluating %s", model_ref.label)

    def build(out: Path) -> dict:
        model = load_model(model_ref.path, pipeline.device, pipeline.cfg.model.dtype)
        with CostMeter(f"eval:{model_ref.label}", device=pipeline.device) as meter:
            result = evaluate_tofu(
                model,
                pipeline.tokenizer(),
                pipeline.eval_sets(),
                names,
                batch_size=cfg.batch_size,
                max_new_tokens=cfg.max_new_tokens,
                progress=pipeline.cfg.progress,
            )
            meter.add_tokens(result.tokens_processed, count_parameters(model), training=False)
        (out / "eval.json").write_text(json.dumps(result.to_dict(), indent=1))
        return {"cost": meter.cost.to_dict()}

    artifact = pipeline.store.get_or_build("eval", spec, build)
    pipeline.record_stage(f"eval:{model_ref.label}", artifact)
    return json.loads((artifact.path / "eval.json").read_text())


def final_metrics(evaluation: dict, oracle_evaluation: dict, requested: list[str]) -> dict[str, float]:
    """The requested metrics of one model, with the cross-model ones computed against the oracle."""
    metrics = {}
    for name in requested:
        if name == "forget_quality":
            metrics[name] = float(
                forget_quality(
                    evaluation["per_item"]["forget_truth_ratio"],
                    oracle_evaluation["per_item"]["forget_truth_ratio"],
                )
            )
        else:
            metrics[name] = float(evaluation["metrics"][name])
    return metrics
