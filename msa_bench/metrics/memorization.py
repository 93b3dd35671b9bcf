"""The memorisation metrics, from teacher-forced token statistics (`core/scoring.py`).

Extraction strength and exact memorisation follow open-unlearning: they read the answer tokens without the closing eos
(open-unlearning drops the last labelled token, the end-of-turn marker). Extraction strength is 1 - k/L with k the
smallest prefix length whose remaining suffix the argmax predictions reproduce; when even the last token is wrong the
only such suffix is the empty one, k = L and ES = 0 (open-unlearning's loop stops at k = L - 1, reporting 1/L there).
"""

from __future__ import annotations

import numpy as np

from msa_bench.metrics.core.scoring import AnswerTokenStatistics, without_eos


def extraction_strength(argmax_matches: np.ndarray) -> float:
    """1 - k/L, k the smallest prefix length such that the argmax predictions reproduce the rest of the answer.

    `argmax_matches` are one answer's per-token matches (eos excluded, see `without_eos`).
    """
    matches = np.asarray(argmax_matches, dtype=bool)
    if matches.ndim != 1 or matches.size == 0:
        raise ValueError(
            f"extraction strength needs a non-empty 1-D array of matches, got shape {matches.shape}"
        )
    n_tokens = matches.size
    mismatches = np.flatnonzero(~matches)
    # The matching suffix starts right after the last mismatch; with no mismatch the whole answer matches.
    prefix_length = 0 if mismatches.size == 0 else int(mismatches[-1]) + 1
    return 1.0 - prefix_length / n_tokens


def exact_memorization(argmax_matches: np.ndarray) -> float:
    """Share of one answer's tokens (eos excluded) whose teacher-forced argmax prediction is the label."""
    matches = np.asarray(argmax_matches, dtype=bool)
    if matches.ndim != 1 or matches.size == 0:
        raise ValueError(
            f"exact memorisation needs a non-empty 1-D array of matches, got shape {matches.shape}"
        )
    return float(matches.mean())


def extraction_strengths(statistics: AnswerTokenStatistics) -> np.ndarray:
    """Per item extraction strength over the answer tokens (eos excluded)."""
    return np.array(
        [extraction_strength(without_eos(m)) for m in statistics.argmax_matches], dtype=np.float64
    )


def exact_memorizations(statistics: AnswerTokenStatistics) -> np.ndarray:
    """Per item exact memorisation over the answer tokens (eos excluded)."""
    return np.array([exact_memorization(without_eos(m)) for m in statistics.argmax_matches], dtype=np.float64)
