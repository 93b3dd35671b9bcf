"""The privacy and memorisation aggregates against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msa_bench.metrics import privacy


class TestMiaAuc:
    def test_forget_with_lower_loss_than_holdout_is_perfectly_exposed(self):
        # Members (forget) have the lower losses: every (forget, holdout) pair is ordered, AUC 1.
        assert privacy.mia_auc([0.1, 0.2], [1.0, 2.0]) == 1.0

    def test_labels_forget_0_and_holdout_1(self):
        # Reversed ordering gives 0, not 1: the convention is not symmetric.
        assert privacy.mia_auc([1.0, 2.0], [0.1, 0.2]) == 0.0

    def test_ties_count_half(self):
        # Pairs (f, h) with f < h: (1,2) (1,3) (2,3) count 1, the tie (2,2) counts 1/2 -> 3.5 / 4.
        assert privacy.mia_auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(0.875)

    def test_identical_distributions_give_chance(self):
        assert privacy.mia_auc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(0.5)

    def test_unequal_set_sizes(self):
        # 1 forget item below 2 of 3 holdout items and tied with the third: (2 + 0.5) / 3.
        assert privacy.mia_auc([1.0], [0.5, 2.0, 3.0]) == pytest.approx(2 / 3)
        assert privacy.mia_auc([1.0], [1.0, 2.0, 3.0]) == pytest.approx(2.5 / 3)

    @pytest.mark.parametrize(
        ("forget", "holdout", "message"),
        [
            ([], [1.0], "forget_scores must be a non-empty"),
            ([1.0], [[1.0]], "holdout_scores must be a non-empty"),
            ([1.0, math.nan], [1.0], "forget_scores must be finite"),
            ([1.0], [math.inf], "holdout_scores must be finite"),
        ],
    )
    def test_rejects_empty_and_non_finite_scores(self, forget, holdout, message):
        with pytest.raises(ValueError, match=message):
            privacy.mia_auc(forget, holdout)


class TestPrivleak:
    def test_hand_computed(self):
        # ((1 - 0.75) - (1 - 0.5)) / (1 - 0.5) * 100 = (0.25 - 0.5) / 0.5 * 100
        assert privacy.privleak(0.75, 0.5) == pytest.approx(-50.0)
        # A model less exposed than the reference leaks "positively".
        assert privacy.privleak(0.25, 0.5) == pytest.approx(50.0)

    def test_equal_to_reference_is_zero(self):
        assert privacy.privleak(0.61, 0.61) == 0.0

    def test_published_values(self):
        # MUSE-News target vs retrain min-k AUCs, and the retain90 model against chance (open-unlearning's logs).
        assert privacy.privleak(0.9991, 0.5236) == pytest.approx(-99.81108312342569, rel=1e-12)
        assert privacy.privleak(0.3826125, privacy.CHANCE_AUC) == pytest.approx(23.4775, rel=1e-12)

    def test_reference_auc_of_one_is_undefined(self):
        with pytest.raises(ValueError, match="reference AUC of 1"):
            privacy.privleak(0.9, 1.0)

    @pytest.mark.parametrize(("auc", "reference"), [(1.5, 0.5), (0.5, -0.1)])
    def test_rejects_values_that_are_not_aucs(self, auc, reference):
        with pytest.raises(ValueError, match="must be an AUC"):
            privacy.privleak(auc, reference)


class TestReferenceAttack:
    def test_model_loss_minus_reference_loss(self):
        scores = privacy.reference_attack_scores([2.0, 1.5, 0.25], [1.0, 2.0, 0.25])
        np.testing.assert_array_equal(scores, [1.0, -0.5, 0.0])

    def test_calibration_separates_what_raw_loss_cannot(self):
        # Raw losses tie across the sets; the reference model finds the forget items easy to begin with
        # (low reference loss) and the holdout items hard, so calibrated scores order them.
        model_forget, model_holdout = [1.0, 2.0], [1.0, 2.0]
        reference_forget, reference_holdout = [2.0, 3.0], [0.5, 1.5]
        assert privacy.mia_auc(model_forget, model_holdout) == pytest.approx(0.5)
        calibrated_auc = privacy.mia_auc(
            privacy.reference_attack_scores(model_forget, reference_forget),
            privacy.reference_attack_scores(model_holdout, reference_holdout),
        )
        assert calibrated_auc == 1.0

    def test_rejects_different_item_counts(self):
        with pytest.raises(ValueError, match="same items, got 2 and 3"):
            privacy.reference_attack_scores([1.0, 2.0], [1.0, 2.0, 3.0])


class TestMemorisation:
    def test_extraction_strength_is_the_mean(self):
        # Per item 1 - k/L: fully extractable (k=0), half (k=L/2), not at all (k=L).
        assert privacy.extraction_strength([1.0, 0.5, 0.0]) == pytest.approx(0.5)

    def test_exact_memorization_is_the_mean(self):
        assert privacy.exact_memorization([0.25, 0.75, 1.0, 0.0]) == pytest.approx(0.5)

    @pytest.mark.parametrize("function", [privacy.extraction_strength, privacy.exact_memorization])
    def test_rejects_scores_outside_unit_interval(self, function):
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
            function([0.5, 1.5])


class TestRelativeDifference:
    def test_hand_computed(self):
        assert privacy.relative_difference(110.0, 100.0) == pytest.approx(10.0)
        assert privacy.relative_difference(0.3, 0.4) == pytest.approx(-25.0)

    def test_zero_reference_is_undefined(self):
        with pytest.raises(ValueError, match="reference of 0"):
            privacy.relative_difference(1.0, 0.0)
