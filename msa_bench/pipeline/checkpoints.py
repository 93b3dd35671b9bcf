"""θ0 resolution: the model state the config's `checkpoint` names, and the checks of that choice that need data.

The rules that need no data are msa_bench/config/checkpoint_rules.py's, shared with validate_config; the checks here
run before anything is trained (Pipeline.preflight) and again when θ0 is built.
"""

from __future__ import annotations

from msa_bench.config.checkpoint_rules import checkpoint_problem, model_checkpoint_problem
from msa_bench.config.schema import CheckpointConfig
from msa_bench.errors import ConfigError, StageError
from msa_bench.pipeline.refs import ModelRef


class CheckpointResolution:
    """θ0 (a mixin of Pipeline)."""

    def check_checkpoint_choice(self, checkpoint: CheckpointConfig) -> None:
        """The rules that need no data (msa_bench/config/checkpoint_rules.py), for a checkpoint given in code too."""
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise ConfigError(problem)
        problem = model_checkpoint_problem(checkpoint, self.cfg.model)
        if problem is not None:
            raise StageError(problem)

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
