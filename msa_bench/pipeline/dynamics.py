"""Unlearning dynamics (docs/unlearning_dynamics.md): one training run of a loss-based method evaluated at every
`method.eval_every_epochs` epochs (or `method.eval_every_steps` optimizer steps), not only at its end.

The unlearning stage saves each intermediate state into its own cache entry, beside the final model, as
`dynamics/step-<step>/`, and lists the points in `dynamics.json`; the entry is written atomically, as every entry is.
After training, the runner evaluates each intermediate state through `evaluate_model`, the final model's own path,
and writes results.json's `dynamics`: one entry per point (epoch, step, metrics), the last one the run's model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from msa_bench.errors import StageError
from msa_bench.pipeline.refs import ModelRef

POINTS_FILE = "dynamics.json"
OPTION_KEYS = ("eval_every_epochs", "eval_every_steps")
# Learning-rate schedules under which the state after e epochs of a long run is the state of an e-epoch run (the
# same data order; docs/unlearning_dynamics.md): the rate does not depend on the run's length.
LENGTH_INDEPENDENT_SCHEDULERS = ("constant",)


@dataclass(frozen=True)
class DynamicsPoint:
    """One evaluation point of a training run: `folder` is where its state lies in the unlearned model's cache
    entry, None for the final point (the entry's own model)."""

    epoch: float
    step: int
    folder: str | None = None


def point_folder(step: int) -> str:
    return f"dynamics/step-{step:06d}"


def is_enabled(method_config) -> bool:
    return any(getattr(method_config, key, None) is not None for key in OPTION_KEYS)


def option_text(method_config) -> str:
    """`method.eval_every_epochs=2` (or _steps): the option as the user set it, for messages."""
    return " ".join(
        f"method.{key}={getattr(method_config, key)}"
        for key in OPTION_KEYS
        if getattr(method_config, key, None) is not None
    )


def expected_point_count(method_config, n_steps: int, steps_per_epoch: int) -> int:
    """About how many intermediate states a run of `n_steps` saves (for the disk-space check before it trains)."""
    if getattr(method_config, "eval_every_steps", None):
        every = method_config.eval_every_steps
    elif getattr(method_config, "eval_every_epochs", None):
        every = method_config.eval_every_epochs * steps_per_epoch
    else:
        return 0
    return max(0, math.ceil(n_steps / every) - 1)


def schedule_matches_shorter_runs(recipe: Mapping | object) -> bool:
    """Whether the point at epoch e of a run with this recipe is the model an e-epoch run would give (same seed):
    a learning rate that does not depend on the run's length (a constant schedule, no warm-up, which is a fraction
    of the run's steps). The data order matches either way (tests/test_unlearning_dynamics.py)."""

    def value(key: str, default):
        return recipe.get(key, default) if isinstance(recipe, Mapping) else getattr(recipe, key, default)

    return value("lr_scheduler", "linear") in LENGTH_INDEPENDENT_SCHEDULERS and not value("warmup_ratio", 0.1)


def write_points(out: Path, intermediate: list[DynamicsPoint], final: DynamicsPoint) -> None:
    payload = {"points": [asdict(p) for p in intermediate] + [asdict(final)]}
    (out / POINTS_FILE).write_text(json.dumps(payload, indent=1))


def read_points(model_dir: Path) -> list[DynamicsPoint]:
    """The points the unlearning stage saved, in training order, the final one last."""
    path = Path(model_dir) / POINTS_FILE
    if not path.is_file():
        raise StageError(
            f"{model_dir} holds no {POINTS_FILE}: the unlearned model was saved without its intermediate states; "
            "remove that cache entry (msa-bench cache) and run again"
        )
    return [DynamicsPoint(**entry) for entry in json.loads(path.read_text())["points"]]


def dynamics_problems(config) -> list[str]:
    """The settings the dynamics cannot run with, one message each (validate_config)."""
    method = config.method
    if not is_enabled(method):
        return []
    option = option_text(method)
    problems = []
    if (config.benchmark.requests or 1) > 1:
        problems.append(
            f"{option} with benchmark.requests={config.benchmark.requests}: the dynamics evaluate one training run, "
            "and sequential requests train one per request; drop the option or run benchmark.requests=null"
        )
    if config.peft.name != "none":
        problems.append(
            f"{option} with peft={config.peft.name}: saving a LoRA model mid-training would merge its adapters into "
            "the weights being trained; drop the option or run peft=none"
        )
    return problems


def evaluate_dynamics(
    pipeline,
    unlearned: ModelRef,
    final_metrics: Mapping[str, float | None],
    against_oracle: Callable[[dict, str], tuple[dict, dict]],
) -> list[dict]:
    """results.json's `dynamics`: each intermediate state evaluated as the run's model is (`evaluate_model`, then
    `against_oracle`), and the final point with the run's own metrics (`final_metrics`: it is that model).

    Each intermediate evaluation is a cached stage of its own, recorded in results.json's `cost` as
    `eval:<method> (epoch e, step s)`, and its wall seconds and FLOPs are repeated in its entry; the method's
    unlearning cost does not include them."""
    from msa_bench.pipeline.evaluation import evaluate_model

    entries = []
    for point in read_points(unlearned.path):
        entry: dict = {"epoch": point.epoch, "step": point.step}
        if point.folder is None:
            entries.append(entry | {"final": True, "metrics": dict(final_metrics)})
            continue
        label = f"{unlearned.label} (epoch {point.epoch:g}, step {point.step})"
        state = ModelRef(unlearned.path / point.folder, f"{unlearned.key}/{point.folder}", label)
        evaluation = evaluate_model(pipeline, state)
        metrics, provenance = against_oracle(evaluation, label)
        cost = pipeline.costs[f"eval:{label}"]
        entry |= {
            "final": False,
            "metrics": metrics,
            "eval_wall_seconds": cost.get("wall_seconds"),
            "eval_flops": cost.get("flops"),
        }
        if provenance:
            entry["metric_provenance"] = provenance
        entries.append(entry)
    return entries
