"""Parity with open-unlearning: recompute its published eval logs' metrics with msa_bench's metric code.

`recompute(load_eval_log(path, "eval log"), retain_log)` gives {open-unlearning key: our value}; the command line is
`msa-bench parity` (`msa_bench.parity.command.main`). See docs/parity.md for the parity tables and every place where
our definitions differ from open-unlearning's on purpose.
"""

from msa_bench.parity.logs import MUSE, TOFU, EvalLog, ParityError, load_eval_log
from msa_bench.parity.recompute import ParityResult, check_same_split, recompute

__all__ = [
    "MUSE",
    "TOFU",
    "EvalLog",
    "ParityError",
    "ParityResult",
    "check_same_split",
    "load_eval_log",
    "recompute",
]
