"""The noise floor of the cross-model metrics (issue 16, point 3; docs/reporting.md).

Forget quality and privleak compare a model with the oracle. How far from "indistinguishable from retraining" does a
model land that *is* a retrained model, only trained with another seed? `benchmark.oracle_seeds=N` answers it: the
run's oracle and N - 1 more, trained from the same closest state on the same data and recipe with seeds
`seed + 1000·i` (i = 1 .. N - 1, far from the seeds of neighbouring runs), each a cached stage `oracle (seed s)`.
Every ordered pair (a, b) of distinct oracles gives the value of each of the run's cross-model metrics for oracle a
scored against oracle b as the reference. The floor of a metric is the least favourable of those values:

    higher is better (forget quality)      the lowest pair value: a method at or above it is inside the floor
    lower is better                        the highest pair value
    toward the oracle (privleak, ...)      the largest distance of a pair value from the oracle's value against itself
                                           (privleak 0, AUC 0.5): a method no farther than that is inside

results.json's `noise_floor` records the seeds, the oracles' cache folders, every pair value and each floor; the
report (msa_bench/reporting/noise_floor.py) marks the method values inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from msa_bench.config.schema import SEED_RANGE
from msa_bench.metrics.registry import CROSS_MODEL_METRICS, Direction, discover_suites

log = logging.getLogger("msa_bench.noise_floor")

SEED_STRIDE = 1000
MAX_SEED = SEED_RANGE[1]  # numpy's and torch's bound (validation.py checks the run's own seed against it)
SEED_RULE = f"seed + {SEED_STRIDE}·i for i = 0 .. oracle_seeds - 1 (i = 0: the run's oracle)"


def oracle_seeds(base_seed: int, count: int) -> list[int]:
    """The seeds of the noise floor's oracles, the run's own first."""
    return [base_seed + SEED_STRIDE * index for index in range(count)]


def floor_metrics(names) -> list[str]:
    """The cross-model metrics among `names` that read the reference's evaluation: a pair of oracles has a value
    of them (the memorization and utility aggregates, registered as cross-model for their null handling, read the
    model alone and have no floor)."""
    return [
        name for name in names if name in CROSS_MODEL_METRICS and CROSS_MODEL_METRICS[name].reads_reference
    ]


def is_enabled(config) -> bool:
    return (config.benchmark.oracle_seeds or 1) > 1


def stage_names(config) -> list[str]:
    """The console stages of the extra oracles and their evaluations (none when the option is off)."""
    if not is_enabled(config):
        return []
    seeds = oracle_seeds(config.seed, config.benchmark.oracle_seeds)[1:]
    return [f"oracle (seed {seed})" for seed in seeds] + ["evaluate the noise floor's oracles"]


def noise_floor_problems(config) -> list[str]:
    """The settings the noise floor cannot run with, one message each (validate_config)."""
    count = config.benchmark.oracle_seeds
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return [f"benchmark.oracle_seeds={count!r} must be an integer >= 1 (1: the run's oracle only)"]
    if count == 1:
        return []
    problems = []
    if (config.benchmark.requests or 1) > 1:
        problems.append(
            f"benchmark.oracle_seeds={count} with benchmark.requests={config.benchmark.requests}: each request "
            "has an oracle of its own, and the noise floor is the final oracle's; run the floor with "
            "benchmark.requests=null"
        )
    if config.benchmark.kind == "restor":
        problems.append(
            f"benchmark.oracle_seeds={count} with benchmark.kind=restor: RESTOR's oracle is the model the target "
            "started from, which no seed changes; run benchmark.oracle_seeds=1"
        )
    highest = oracle_seeds(config.seed, count)[-1] if isinstance(config.seed, int) else None
    if highest is not None and highest > MAX_SEED:
        problems.append(
            f"benchmark.oracle_seeds={count} with seed={config.seed}: the last oracle's seed, {highest}, is beyond "
            f"{MAX_SEED} (2**32 - 1), the largest numpy and torch take; lower seed or benchmark.oracle_seeds"
        )
    discover_suites()
    if not floor_metrics(config.metrics.names):
        problems.append(
            f"benchmark.oracle_seeds={count}: metrics={config.metrics.name} has no metric that compares a model "
            "with the oracle (forget quality, privleak, ...) to take the floor of; choose metrics that have one or run "
            "benchmark.oracle_seeds=1"
        )
    return problems


def floor_of(direction: Direction, values: Sequence[float], ideal: float | None) -> float | None:
    """The floor of one metric from its pair values (see the module docstring); None when no pair has a value."""
    if not values:
        return None
    if direction is Direction.HIGHER:
        return min(values)
    if direction is Direction.LOWER:
        return max(values)
    if ideal is None:
        return None
    return max(abs(value - ideal) for value in values)


def is_inside(value: float | None, entry: Mapping) -> bool | None:
    """Whether a value is inside a metric's floor (an entry of results.json's `noise_floor.floor`); None when either
    is undefined."""
    bound = entry.get("bound")
    if value is None or bound is None:
        return None
    direction = Direction(entry["direction"])
    if direction is Direction.HIGHER:
        return value >= bound
    if direction is Direction.LOWER:
        return value <= bound
    ideal = entry.get("ideal")
    return None if ideal is None else abs(value - ideal) <= bound


def measure(
    pipeline,
    oracle,
    oracle_evaluation: Mapping,
    oracle_self_metrics: Mapping[str, float | None],
    score: Callable[[Mapping, Mapping, Sequence[str], str], tuple[dict, dict]],
    progress,
) -> dict:
    """results.json's `noise_floor`: trains (or reuses) the extra oracles, evaluates them, and scores every ordered
    pair. `score(evaluation, reference_evaluation, names, label)` gives a model's cross-model metrics against a
    reference; `oracle_self_metrics` are the run's oracle against itself (the ideal of the toward-oracle metrics)."""
    from msa_bench.pipeline.evaluation import evaluate_model

    cfg = pipeline.cfg
    seeds = oracle_seeds(cfg.seed, cfg.benchmark.oracle_seeds)
    names = floor_metrics(cfg.metrics.names)
    oracles = {seeds[0]: oracle}
    for seed in seeds[1:]:
        with progress.stage():
            oracles[seed] = pipeline.oracle_with_seed(seed)
    with progress.stage():
        evaluations = {seeds[0]: oracle_evaluation} | {
            seed: evaluate_model(pipeline, oracles[seed]) for seed in seeds[1:]
        }
    pairs = []
    for seed in seeds:
        for reference in seeds:
            if seed == reference:
                continue
            label = f"oracle (seed {seed}) against oracle (seed {reference})"
            metrics, provenance = score(evaluations[seed], evaluations[reference], names, label)
            pair = {"oracle_seed": seed, "reference_seed": reference, "metrics": metrics}
            if provenance:
                pair["metric_provenance"] = provenance
            pairs.append(pair)
    floor = {}
    for name in names:
        direction = CROSS_MODEL_METRICS[name].info.direction
        values = [pair["metrics"][name] for pair in pairs if pair["metrics"].get(name) is not None]
        ideal = oracle_self_metrics.get(name) if direction is Direction.TOWARD_ORACLE else None
        floor[name] = {
            "direction": str(direction),
            "ideal": ideal,
            "bound": floor_of(direction, values, ideal),
            "n_pairs": len(values),
        }
    log.info(
        "noise floor over %d oracles (seeds %s): %s",
        len(seeds),
        ", ".join(map(str, seeds)),
        ", ".join(f"{name} {entry['bound']}" for name, entry in floor.items()),
    )
    return {
        "oracle_seeds": seeds,
        "seed_rule": SEED_RULE,
        "oracles": {str(seed): str(ref.path) for seed, ref in oracles.items()},
        "pairs": pairs,
        "floor": floor,
    }
