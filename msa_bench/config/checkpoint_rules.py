"""θ0's rules that need no data: what a `checkpoint` choice must hold, and which model's states it can name.

Written once: validate_config asks `checkpoint_problem`, and the pipeline's θ0 resolution
(msa_bench/pipeline/checkpoints.py) asks both functions, before training and again when θ0 is built. The checks that
need data (a saved pretraining step, a hub revision's files) are the pipeline's.
"""

from __future__ import annotations

from msa_bench.config.schema import CHECKPOINT_STAGES, EMBEDDED_STAGES, CheckpointConfig, ModelConfig


def checkpoint_problem(checkpoint: CheckpointConfig) -> str | None:
    """What the `checkpoint` group lacks on its own (a message naming the keys), or None."""
    stage = checkpoint.stage
    if stage not in CHECKPOINT_STAGES:
        return f"checkpoint.stage={stage!r} is not valid; choose one of {list(CHECKPOINT_STAGES)}"
    if stage == "pretrain" and checkpoint.step is None:
        return "checkpoint.step is required when checkpoint.stage=pretrain (e.g. checkpoint.step=200)"
    if stage == "revision" and not checkpoint.revision:
        return "checkpoint.revision is required when checkpoint.stage=revision (a hub branch, tag or commit)"
    return None


def model_checkpoint_problem(checkpoint: CheckpointConfig, model: ModelConfig) -> str | None:
    """Why `checkpoint` names no state of `model` (embedded stages of a pretrained model, or the reverse), or None.

    Checked when a run starts rather than when a config is validated, so that every option of the checkpoint group
    validates with the default model (a checkpoint option belongs to the model family it names)."""
    stage = checkpoint.stage
    embedded = model.source == "embedded"
    if stage in EMBEDDED_STAGES and not embedded:
        return (
            f"checkpoint.stage={stage!r} names a stage of the embedded model's own history; with "
            "model.source=pretrained use checkpoint.stage=revision (a hub revision), closest or target"
        )
    if stage == "revision" and embedded:
        return (
            "checkpoint.stage=revision names a hub revision, which needs model.source=pretrained; the embedded "
            "model's states are pretrain (with checkpoint.step), base, instruct, closest and target"
        )
    return None
