"""θ0 resolution: which model state the config's `checkpoint` names, and every check of that choice.

The same checks run before anything is trained (Pipeline.preflight) and when θ0 is built, so a mistake is reported
the same way whichever comes first.
"""

from __future__ import annotations

from msa_bench.config.schema import CHECKPOINT_STAGES, EMBEDDED_STAGES, CheckpointConfig
from msa_bench.errors import StageError
from msa_bench.pipeline.refs import ModelRef


class CheckpointResolution:
    """θ0 (a mixin of Pipeline)."""

    def check_checkpoint_choice(self, checkpoint: CheckpointConfig) -> None:
        """The checks that need no data: the stage exists for this model and has what it needs."""
        stage = checkpoint.stage
        if stage not in CHECKPOINT_STAGES:
            raise StageError(
                f"checkpoint.stage={stage!r} is not valid; choose one of {list(CHECKPOINT_STAGES)}"
            )
        if stage in EMBEDDED_STAGES and not self.embedded:
            raise StageError(
                f"checkpoint.stage={stage!r} names a stage of the embedded model's own history; with "
                f"model.source=pretrained use checkpoint.stage=revision (a hub revision), closest or target"
            )
        if stage == "revision" and self.embedded:
            raise StageError(
                "checkpoint.stage=revision names a hub revision, which needs model.source=pretrained; the embedded "
                "model's states are pretrain (with checkpoint.step), base, instruct, closest and target"
            )
        if stage == "pretrain" and checkpoint.step is None:
            raise StageError("checkpoint.stage=pretrain needs checkpoint.step (a saved pretraining step)")
        if stage == "revision" and not (checkpoint.revision and (checkpoint.hub_id or self.cfg.model.hub_id)):
            raise StageError(
                "checkpoint.stage=revision needs checkpoint.revision (a hub branch, tag or commit) and a hub id "
                "(checkpoint.hub_id or model.hub_id)"
            )

    def preflight_checkpoint(self) -> None:
        """Every check of θ0 that can run before training: the choice, the saved step, the hub revision's files."""
        checkpoint = self.cfg.checkpoint
        self.check_checkpoint_choice(checkpoint)
        if checkpoint.stage == "pretrain":
            self.check_saved_step(checkpoint.step)
        elif checkpoint.stage == "revision":
            self.checkpoint()

    def checkpoint(self, checkpoint: CheckpointConfig | None = None) -> ModelRef:
        """θ0: the model state the config's `checkpoint` names."""
        checkpoint = checkpoint or self.cfg.checkpoint
        self.check_checkpoint_choice(checkpoint)
        stage = checkpoint.stage
        if stage == "pretrain":
            return self.pretrain_checkpoint(checkpoint.step)
        if stage == "revision":
            return self.hub_model(checkpoint.hub_id or self.cfg.model.hub_id, checkpoint.revision)
        return {
            "base": self.base,
            "instruct": self.instruct,
            "closest": self.closest,
            "target": self.target,
        }[stage]()
