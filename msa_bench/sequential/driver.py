"""The sequential protocol: for k = 1..K, the method's model after requests 1..k (its `produce_after_requests`), the
oracle retrained without requests 1..k, and their evaluations, under `request/<k>/...` keys.

- forget: the forget metrics on request k's items, against oracle k on the same items;
- persistence (k ≥ 2): the same metrics on the union of requests 1..k-1's items, against oracle k (which never saw
  them either); a mean-over-items metric on the union is the item-weighted average over those requests;
- utility: the run's other metrics (retain and utility sets, unchanged by the requests), from the same evaluation;
- cost: the wall seconds and FLOPs of the method's stages first recorded for request k (as built: a stage reused
  from the cache counts its recorded build cost, as results.json's `cost` does), and of oracle k's retraining.

The target is the same for every k; its values on each step's items are the target's reference metrics under the
same keys. Every model and evaluation is a cached stage, so a rerun with another α trains only what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from msa_bench.errors import BenchmarkError, StageError
from msa_bench.metrics.registry import CROSS_MODEL_METRICS, REQUEST_PREFIX, suite_of
from msa_bench.pipeline.evaluation import (
    EvalView,
    evaluate_model,
    evaluation_plan,
    final_metrics,
    required_eval_sets,
)
from msa_bench.pipeline.refs import ModelRef

log = logging.getLogger("msa_bench.sequential")

ROLES = ("method", "target", "oracle")
SECTIONS = ("forget", "persistence", "utility", "cost")


def request_key(k: int, section: str, name: str) -> str:
    """results.json's key of `name` in `section` after request `k` (counted from 1)."""
    return f"{REQUEST_PREFIX}{k}/{section}/{name}"


def request_stage_names(cfg) -> list[str]:
    """The console's stage lines of a sequential run, one per request."""
    count = cfg.benchmark.requests
    return [
        f"request {k} of {count} ({cfg.method.name}, oracle without requests 1..{k}, evaluations)"
        for k in range(1, count + 1)
    ]


@dataclass
class SequentialResults:
    """What the requests add to results.json: metrics and provenance per role, and the model after the last one."""

    final: ModelRef | None = None
    metrics: dict[str, dict] = field(default_factory=lambda: {role: {} for role in ROLES})
    provenance: dict[str, dict] = field(default_factory=lambda: {role: {} for role in ROLES})
    requests: list[dict] = field(default_factory=list)  # what each request deletes: results.json's `requests`


def is_forget_eval_set(name: str) -> bool:
    """Whether eval set `name` holds the forget items a request narrows: TOFU's "forget", MUSE's
    muse_verbmem_forget, muse_knowmem_forget(_icl) and muse_privleak_forget."""
    return "forget" in name.split("_")


def _reads_forget_set(name: str, seen: frozenset = frozenset()) -> bool:
    """Whether metric `name` is read on a forget set: a suite's metric by the eval sets its suite says it reads, a
    cross-model metric through the per-model metrics it needs."""
    metric = CROSS_MODEL_METRICS.get(name)
    if metric is not None:
        return any(_reads_forget_set(need, seen | {name}) for need in metric.needs if need not in seen)
    try:
        suite = suite_of(name)
    except KeyError:
        return False
    return any(is_forget_eval_set(eval_set) for eval_set in suite.required_sets([name]))


def forget_metric_names(names, benchmark) -> list[str]:
    """The run's metrics that the forget items determine: the benchmark's forget metrics, every metric its suite reads
    on a forget set (e.g. extraction strength, the membership attacks), and the cross-model metrics computed from
    one of them (forget quality from the truth ratio, privleak and mia_reference from an attack's AUC)."""
    return [n for n in names if n in benchmark.forget_metrics or _reads_forget_set(n)]


def _view(pipeline, requests, label: str) -> EvalView:
    """The run's metrics on the eval sets with the forget items narrowed to those of `requests`."""
    cfg = pipeline.cfg
    kept = [item for request in requests for item in request.items]
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
    return EvalView(
        names=tuple(cfg.metrics.names),
        settings=cfg.metrics,
        key={
            "forget_items": label,
            "items": len(kept),
            "digest": digest,
            **pipeline.benchmark.request_view_key(),
        },
        narrow=lambda sets: pipeline.benchmark.request_eval_sets(sets, kept),
    )


def _relabelled(model: ModelRef, label: str) -> ModelRef:
    return ModelRef(model.path, model.key, label)


def _stage_cost(costs: dict, stages) -> tuple[float, float]:
    wall = sum(float(costs[s].get("wall_seconds") or 0.0) for s in stages)
    flops = sum(float(costs[s].get("flops") or 0.0) for s in stages)
    return wall, flops


def checked_requests(pipeline) -> tuple[list, list[str]]:
    """The run's deletion requests and forget metrics, or the error of a bad setting (more requests than units, a
    benchmark without request units, no forget metric, a request that would be evaluated on no item of a forget set
    the metrics read); the runner calls it after Pipeline.preflight, before anything trains."""
    cfg = pipeline.cfg
    benchmark = pipeline.benchmark
    requests = benchmark.deletion_requests(cfg.benchmark.requests)
    names = list(cfg.metrics.names)
    forget_names = forget_metric_names(names, benchmark)
    if not forget_names:
        raise StageError(
            f"benchmark.requests={cfg.benchmark.requests}: metrics.names={names} holds no forget metric of benchmark "
            f"kind {benchmark.kind} ({list(benchmark.forget_metrics)}), so no request's forgetting would be measured"
        )
    _check_request_eval_items(benchmark, requests, names)
    return requests, forget_names


def _check_request_eval_items(benchmark, requests, names) -> None:
    """Every request evaluates at least one item of each forget eval set the run's metrics read (where the benchmark
    attributes its eval items to requests: a metric cannot be read on no item)."""
    counts = benchmark.request_eval_items(requests)
    if counts is None:
        return
    read = required_eval_sets(evaluation_plan(names))
    for request, count in zip(requests, counts, strict=True):
        empty = sorted(name for name, n in count.items() if n == 0 and name in read)
        if empty:
            left_out = benchmark.request_eval_left_out(requests)
            reasons = "; ".join(f"{name}: {left_out.get(name, {})}" for name in empty)
            raise BenchmarkError(
                f"benchmark.requests={len(requests)}: request {request.index} ({request.units[0]} to "
                f"{request.units[-1]}) holds no item of {empty}, which metrics.names reads, so its forgetting cannot "
                f"be measured there (the items no request holds, by reason: {reasons}); use fewer requests or more "
                "documents (benchmark.max_documents)"
            )


def request_records(benchmark, requests) -> list[dict]:
    """results.json's `requests`: what each request deletes and, where the benchmark attributes its eval items to
    requests, how many of each forget eval set it is evaluated on and how many no request is (the same in each)."""
    records = [
        {"index": r.index, "units": list(r.units), "n_items": len(r.items), "data_id": r.data_id}
        for r in requests
    ]
    counts = benchmark.request_eval_items(requests)
    if counts is not None:
        left_out = benchmark.request_eval_left_out(requests)
        for record, count in zip(records, counts, strict=True):
            record |= {"eval_items": count, "eval_items_left_out": left_out}
    return records


def run_requests(pipeline, method, progress, target: ModelRef) -> SequentialResults:
    """Every request in order, one console stage each; the final model is the method's after the last request."""
    cfg = pipeline.cfg
    requests, forget_names = checked_requests(pipeline)
    names = list(cfg.metrics.names)
    results = SequentialResults(requests=request_records(pipeline.benchmark, requests))
    previous = None
    for k in range(1, len(requests) + 1):
        with progress.stage():
            before = set(pipeline.costs)
            model = method.produce_after_requests(pipeline, requests[:k], previous)
            method_stages = [s for s in pipeline.costs if s not in before]
            before = set(pipeline.costs)
            oracle = pipeline.oracle_after_requests(requests, k)
            oracle_stages = [s for s in pipeline.costs if s not in before]
            models = {
                "method": _relabelled(model, f"{cfg.method.name} (request {k})"),
                "target": _relabelled(target, f"target (request {k})"),
                "oracle": _relabelled(oracle, f"oracle (request {k})"),
            }
            own = _view(pipeline, requests[k - 1 : k], f"request {k} of {len(requests)}")
            _add(results, pipeline, models, own, k, {"forget": forget_names, "utility": None}, names)
            if k > 1:
                earlier = _view(pipeline, requests[: k - 1], f"requests 1-{k - 1} of {len(requests)}")
                earlier_models = {
                    role: _relabelled(ref, f"{ref.label}, requests 1-{k - 1}") for role, ref in models.items()
                }
                _add(results, pipeline, earlier_models, earlier, k, {"persistence": forget_names}, names)
            wall, flops = _stage_cost(pipeline.costs, method_stages)
            oracle_wall, oracle_flops = _stage_cost(pipeline.costs, oracle_stages)
            results.metrics["method"] |= {
                request_key(k, "cost", "wall_seconds"): wall,
                request_key(k, "cost", "flops"): flops,
                request_key(k, "cost", "oracle_wall_seconds"): oracle_wall,
                request_key(k, "cost", "oracle_flops"): oracle_flops,
            }
            previous = model
    results.final = previous
    return results


def _add(
    results: SequentialResults, pipeline, models: dict, view: EvalView, k: int, sections: dict, names
) -> None:
    """Evaluate the three models on `view` and file each section's metrics (None: every metric not a forget one)."""
    evaluations = {role: evaluate_model(pipeline, ref, view) for role, ref in models.items()}
    forget = set(sections.get("forget") or sections.get("persistence") or ())
    for role in ROLES:
        values, provenance = final_metrics(
            evaluations[role],
            evaluations["oracle"],
            names,
            pipeline.cfg.metrics,
            lambda: view.eval_sets(pipeline),
            model=models[role].label,
        )
        for section, chosen in sections.items():
            for name, value in values.items():
                base = name.split("/", 1)[0]  # a suite's breakdown follows its metric
                if (base in forget) != (chosen is not None):
                    continue
                results.metrics[role][request_key(k, section, name)] = value
                if name in provenance:
                    results.provenance[role][request_key(k, section, name)] = provenance[name]
