"""Model state arithmetic: combine checkpoints as ``target + Σ coefficient·(finetuned − base)``."""

from msa_bench.arithmetic.state_arithmetic import (
    CheckpointNotFoundError,
    StateArithmeticError,
    StateDelta,
    StateVector,
    apply_deltas_in_place,
    combine_checkpoints,
)

__all__ = [
    "CheckpointNotFoundError",
    "StateArithmeticError",
    "StateDelta",
    "StateVector",
    "apply_deltas_in_place",
    "combine_checkpoints",
]
