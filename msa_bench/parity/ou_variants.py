"""open-unlearning's variants of our metric arithmetic, for `msa-bench parity --ou-compatible` only.

open-unlearning guards its divisions with `+ 1e-10` and derives some aggregates from the float32 `prob` it stored
rather than from the average loss. Our definitions (`msa_bench.metrics.tofu`, `msa_bench.metrics.privacy`) divide
exactly and work from NLLs. The two agree to ~1e-9 except where a probability is itself tiny (world-facts answers
of probability ~1e-6): there the guard moves a truth ratio by up to ~5e-4 relative, and `wf_Truth_Ratio` by ~1.5e-6.
These functions reproduce open-unlearning bit for bit, so that a difference in a parity check points at a real
disagreement rather than at the guard. See docs/parity.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from msa_bench.metrics.tofu import probabilities_from_nlls

OU_DIVISION_GUARD = 1e-10


def ou_truth_ratios(correct_nlls: Sequence[float], perturbed_nlls: Sequence[Sequence[float]]) -> np.ndarray:
    """exp(-mean_j NLL(perturbed_j)) / (exp(-NLL(correct)) + 1e-10), as open-unlearning's `truth_ratio`."""
    if len(correct_nlls) != len(perturbed_nlls):
        raise ValueError(
            f"{len(correct_nlls)} correct answers but {len(perturbed_nlls)} sets of perturbed answers"
        )
    correct_prob = probabilities_from_nlls(correct_nlls)
    wrong_prob = probabilities_from_nlls([float(np.mean(item)) for item in perturbed_nlls])
    return wrong_prob / (correct_prob + OU_DIVISION_GUARD)


def ou_truth_ratio_closer_to_1_better(ratios: Sequence[float]) -> float:
    """mean(min(tr, 1 / (tr + 1e-10))), as open-unlearning's `closer_to_1_better` aggregator."""
    tr = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(tr, 1.0 / (tr + OU_DIVISION_GUARD))))


def ou_normalised_probabilities(
    correct_probs: Sequence[float], perturbed_probs: Sequence[Sequence[float]]
) -> np.ndarray:
    """P(correct) / (P(correct) + sum_j P(perturbed_j) + 1e-10) from stored probabilities (`probability_w_options`)."""
    if len(correct_probs) != len(perturbed_probs):
        raise ValueError(
            f"{len(correct_probs)} correct answers but {len(perturbed_probs)} sets of perturbed answers"
        )
    correct = np.asarray(correct_probs, dtype=np.float64)
    wrong_sums = np.array([np.sum(item) for item in perturbed_probs], dtype=np.float64)
    return correct / (correct + wrong_sums + OU_DIVISION_GUARD)


def ou_privleak(auc: float, reference_auc: float) -> float:
    """((1 - auc) - (1 - ref)) / ((1 - ref) + 1e-10) * 100, as open-unlearning's `privleak`."""
    reference_gap = 1.0 - reference_auc
    return ((1.0 - auc) - reference_gap) / (reference_gap + OU_DIVISION_GUARD) * 100.0
