"""Writing the result of weight arithmetic as a cached model artifact (shared by msa and task_vector)."""

from __future__ import annotations

from pathlib import Path


def combine_into_artifact(
    pipeline, method: str, target, terms, *, transforms=(), spec=None, stage="arithmetic"
):
    """target + Σ coefficient·(finetuned − base), each term a (coefficient, ModelRef, ModelRef).

    `transforms` (arithmetic/difference_transforms.py, applied in order) change the terms' differences before the sum,
    indexed by their position in `terms`; `spec` holds the settings they depend on, which join the cache key (none:
    the key plain arithmetic always had). `stage` names its cost in results.json (a sequential request's own name)."""
    from msa_bench.arithmetic import combine_checkpoints
    from msa_bench.arithmetic.difference_transforms import ChainedTransforms
    from msa_bench.arithmetic.low_rank import delta_between
    from msa_bench.arithmetic.state_arithmetic import arithmetic_dtype
    from msa_bench.pipeline.cost import CostMeter
    from msa_bench.pipeline.disk_space import require_space_for_state_like

    settings = dict(spec or {})
    spec = {
        "method": method,
        "target": target.key,
        "terms": [{"coefficient": c, "finetuned": ft.key, "base": b.key} for c, ft, b in terms],
    }
    compute_dtype = pipeline.cfg.model.arithmetic_dtype
    if compute_dtype != "float32":  # float32 keys stay as they were before the choice existed
        spec["arithmetic_dtype"] = compute_dtype
    spec.update(settings)

    def build(out: Path) -> dict:
        require_space_for_state_like(pipeline.store.root, f"the {method} arithmetic output", target.path)
        transform = ChainedTransforms(transforms) if transforms else None
        with CostMeter("arithmetic", device="cpu") as meter:
            try:
                report = combine_checkpoints(
                    target.path,
                    # A vector stored as LoRA factors (peft.vector_storage=factors) enters as a LowRankDelta.
                    [delta_between(c, ft.path, b.path) for c, ft, b in terms],
                    out,
                    compute_dtype=arithmetic_dtype(compute_dtype),
                    transform=transform,
                )
            finally:  # a transform may hold files open (msa_fisher's importances)
                if transform is not None:
                    transform.close()
        return {"cost": meter.cost.to_dict(), "report": report}

    return pipeline.cached_model(stage, "unlearned", spec, build, label=method)
