"""Recompute every aggregate of an open-unlearning eval log from its per-item values, with msa_bench's metric code.

Which per-item values feed which metric follows open-unlearning's TOFU and MUSE eval configs (their `pre_compute`
graph), written out below as tables. Everything is derived from raw per-item material: average losses for
probabilities and truth ratios, generation and ground-truth text for ROUGE, attack scores for the MIAs. The stored
aggregates, and the stored per-item truth ratios and ROUGE scores, are never used as results; the per-item ones are
only compared with ours, and a disagreement is reported as a note.

Two modes:
* default: our definitions (`msa_bench.metrics.tofu`, `msa_bench.metrics.privacy`): exact divisions, every
  probability from the average loss, and no privleak without a retain model's log.
* ou_compatible: open-unlearning's arithmetic (`ou_variants`): its 1e-10 division guards, its stored float32
  probabilities, and its privleak fallback to a reference AUC of 0.5 when no retain log is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from msa_bench.metrics import privacy, tofu
from msa_bench.parity import ou_variants
from msa_bench.parity.logs import MUSE, TOFU, EvalLog, ParityError

# The attack whose AUC privleak compares (MUSE's choice, kept by open-unlearning).
PRIVLEAK_ATTACK = "mia_min_k"

# Truth-ratio entry -> (entry of the answer in its denominator, entry of the perturbed answers). TOFU uses the
# paraphrased answer where the split has one (forget, retain) and the original answer otherwise.
TRUTH_RATIO_INPUTS: Mapping[str, tuple[str, str]] = {
    "forget_truth_ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob"),
    "retain_Truth_Ratio": ("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob"),
    "ra_Truth_Ratio": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob"),
    "wf_Truth_Ratio": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob"),
}
# The one truth ratio aggregated as "closer to 1 is better" (forgotten: true and false answers look alike); the
# others are aggregated as "true better".
FORGET_TRUTH_RATIO = "forget_truth_ratio"

NORMALISED_PROBABILITY_INPUTS: Mapping[str, tuple[str, str]] = {
    "ra_Q_A_Prob_normalised": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob"),
    "wf_Q_A_Prob_normalised": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob"),
}

# The ROUGE score each benchmark reports: TOFU ROUGE-L recall, MUSE ROUGE-L F1.
ROUGE_SCORE_BY_BENCHMARK: Mapping[str, str] = {TOFU: "rougeL_recall", MUSE: "rougeL_f1"}

# Entries open-unlearning computes from other entries of the same log (its pre_compute graph). A log holding a
# metric without its parents is incomplete or hand-edited, so it is rejected rather than half-checked.
LOG_DEPENDENCIES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    TOFU: {
        **TRUTH_RATIO_INPUTS,
        **NORMALISED_PROBABILITY_INPUTS,
        "model_utility": tofu.MODEL_UTILITY_COMPONENTS,
        "forget_quality": (FORGET_TRUTH_RATIO,),
        "privleak": (PRIVLEAK_ATTACK,),
    },
    MUSE: {"privleak": (PRIVLEAK_ATTACK,)},
}

_PROBABILITY_KEY = re.compile(r"^[a-z0-9]+_Q_A_(PARA_)?Prob$")
_PERTURBED_PROBABILITY_KEY = re.compile(r"^[a-z0-9]+_Q_A_PERT_Prob$")
_ROUGE_KEY = re.compile(r"_ROUGE$")

# Per-item truth ratios / ROUGE scores stored in the log are compared with ours up to this relative difference.
_STORED_ITEM_RTOL = 1e-6


class MissingReference(Exception):
    """The metric needs the retain model's log, which was not given: the key is reported missing, not an error."""


@dataclass
class ParityResult:
    """values: open-unlearning key -> our value. missing: key -> why it was not computed. notes: warnings."""

    benchmark: str
    values: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _relative_gap(ours: np.ndarray, theirs: np.ndarray) -> float:
    scale = np.maximum(np.abs(ours), np.abs(theirs))
    gaps = np.where(scale > 0, np.abs(ours - theirs) / np.where(scale > 0, scale, 1.0), 0.0)
    return float(gaps.max()) if gaps.size else 0.0


def _aligned(
    first: Mapping[str, object],
    second: Mapping[str, object],
    names: tuple[str, str],
    log: EvalLog,
    needed_by: str,
) -> list[str]:
    """The item indices both entries score, in order, without items either left as None (as open-unlearning)."""
    if list(first) != list(second):
        raise ParityError(
            f"{log.name}: '{names[0]}' and '{names[1]}' score different items ({len(first)} vs {len(second)} "
            f"indices), so {needed_by} cannot pair them"
        )
    return [index for index in first if first[index] is not None and second[index] is not None]


class Recomputer:
    """Recomputes the metrics of one log, memoising each so that shared inputs are read once."""

    def __init__(self, log: EvalLog, retain: Recomputer | None, ou_compatible: bool) -> None:
        self.log = log
        self.retain = retain
        self.ou_compatible = ou_compatible
        self.notes: list[str] = []
        self._values: dict[str, float] = {}
        self._truth_ratios: dict[str, np.ndarray] = {}
        self._handlers_by_key: dict[str, Callable[[str], float]] = {
            "privleak": self._privleak,
            "extraction_strength": self._extraction_strength,
            "exact_memorization": self._exact_memorization,
        }
        if log.benchmark == TOFU:
            self._handlers_by_key |= {
                "forget_quality": self._forget_quality,
                "model_utility": self._model_utility,
                **dict.fromkeys(TRUTH_RATIO_INPUTS, self._truth_ratio_aggregate),
                **dict.fromkeys(NORMALISED_PROBABILITY_INPUTS, self._normalised_probability),
            }

    # ---- dispatch ------------------------------------------------------------------------------------------

    def handler(self, key: str) -> Callable[[str], float] | None:
        """The function that recomputes `key` for this log's benchmark, None for a metric parity does not know."""
        if key in self._handlers_by_key:
            return self._handlers_by_key[key]
        if key.startswith("mia_"):
            return self._attack_auc
        if self.log.benchmark == TOFU and _PROBABILITY_KEY.match(key):
            return self._mean_probability
        if self.log.benchmark == TOFU and _PERTURBED_PROBABILITY_KEY.match(key):
            return self._mean_perturbed_probability
        if _ROUGE_KEY.search(key):
            return self._mean_rouge
        return None

    def metric(self, key: str) -> float:
        if key not in self._values:
            handler = self.handler(key)
            if handler is None:
                raise ParityError(f"{self.log.name}: parity does not know how to recompute '{key}'")
            self._values[key] = float(handler(key))
        return self._values[key]

    def check_dependencies(self) -> None:
        """Every metric in the log must come with the entries open-unlearning computed it from."""
        for key, parents in LOG_DEPENDENCIES[self.log.benchmark].items():
            if key not in self.log.entries:
                continue
            for parent in parents:
                self.log.entry(parent, needed_by=key)

    # ---- probabilities and truth ratios (TOFU) ----------------------------------------------------------------

    def _mean_probability(self, key: str) -> float:
        if self.ou_compatible:
            probs = [p for p in self.log.numbers(key, "prob", key).values() if p is not None]
            return float(np.mean(probs))
        nlls = [loss for loss in self.log.numbers(key, "avg_loss", key).values() if loss is not None]
        return float(np.mean(tofu.probabilities_from_nlls(nlls)))

    def _mean_perturbed_probability(self, key: str) -> float:
        """Mean over items of the mean probability of the item's perturbed answers."""
        field_name = "prob" if self.ou_compatible else "avg_loss"
        per_item = [v for v in self.log.number_lists(key, field_name, key).values() if v is not None]
        if self.ou_compatible:
            return float(np.mean([np.mean(item) for item in per_item]))
        return float(np.mean([tofu.probabilities_from_nlls(item).mean() for item in per_item]))

    def truth_ratios(self, truth_ratio_key: str, needed_by: str) -> np.ndarray:
        """Per-item truth ratios P(perturbed) / P(correct) of one split, from the stored average losses."""
        if truth_ratio_key not in self._truth_ratios:
            correct_key, perturbed_key = TRUTH_RATIO_INPUTS[truth_ratio_key]
            correct = self.log.numbers(correct_key, "avg_loss", needed_by)
            perturbed = self.log.number_lists(perturbed_key, "avg_loss", needed_by)
            indices = _aligned(correct, perturbed, (correct_key, perturbed_key), self.log, needed_by)
            correct_nlls = [correct[i] for i in indices]
            perturbed_nlls = [perturbed[i] for i in indices]
            ou_ratios = ou_variants.ou_truth_ratios(correct_nlls, perturbed_nlls)
            ratios = ou_ratios if self.ou_compatible else tofu.truth_ratios(correct_nlls, perturbed_nlls)
            self._compare_stored_truth_ratios(truth_ratio_key, indices, ou_ratios)
            self._truth_ratios[truth_ratio_key] = ratios
        return self._truth_ratios[truth_ratio_key]

    def _compare_stored_truth_ratios(self, key: str, indices: Sequence[str], ou_ratios: np.ndarray) -> None:
        """The log's own per-item truth ratios should be open-unlearning's formula applied to its average losses;
        if not, the log was written by a version with another definition, and our recomputation reads it wrongly."""
        if not self.log.has(key):
            return
        stored = self.log.numbers(key, "score", needed_by=f"the check of {key}")
        stored_values = np.array(
            [np.nan if stored.get(i) is None else stored[i] for i in indices], dtype=float
        )
        gap = _relative_gap(ou_ratios, stored_values)
        if not gap <= _STORED_ITEM_RTOL:
            self.notes.append(
                f"{self.log.name}: its per-item '{key}' scores differ from open-unlearning's truth-ratio formula "
                f"applied to its average losses (max relative gap {gap:.3g}); the log may come from a version "
                f"with another truth-ratio definition"
            )

    def _truth_ratio_aggregate(self, key: str) -> float:
        ratios = self.truth_ratios(key, needed_by=key)
        if key == FORGET_TRUTH_RATIO:
            if self.ou_compatible:
                return ou_variants.ou_truth_ratio_closer_to_1_better(ratios)
            return tofu.truth_ratio_closer_to_1_better(ratios)
        return tofu.truth_ratio_true_better(ratios)

    def _normalised_probability(self, key: str) -> float:
        correct_key, perturbed_key = NORMALISED_PROBABILITY_INPUTS[key]
        field_name = "prob" if self.ou_compatible else "avg_loss"
        correct = self.log.numbers(correct_key, field_name, key)
        perturbed = self.log.number_lists(perturbed_key, field_name, key)
        indices = _aligned(correct, perturbed, (correct_key, perturbed_key), self.log, key)
        correct_values = [correct[i] for i in indices]
        perturbed_values = [perturbed[i] for i in indices]
        if self.ou_compatible:
            return float(np.mean(ou_variants.ou_normalised_probabilities(correct_values, perturbed_values)))
        return float(np.mean(tofu.normalised_probabilities(correct_values, perturbed_values)))

    def _model_utility(self, key: str) -> float:
        return tofu.model_utility({name: self.metric(name) for name in tofu.MODEL_UTILITY_COMPONENTS})

    def _forget_quality(self, key: str) -> float:
        if self.retain is None:
            raise MissingReference(
                "forget_quality needs the retain model's forget truth ratios: pass --retain RETAIN_EVAL_JSON "
                "(open-unlearning leaves it empty too)"
            )
        model_ratios = self.truth_ratios(FORGET_TRUTH_RATIO, needed_by="forget_quality")
        retain_ratios = self.retain.truth_ratios(FORGET_TRUTH_RATIO, needed_by="forget_quality")
        return tofu.forget_quality(model_ratios, retain_ratios)

    # ---- text, memorisation, privacy ----------------------------------------------------------------------

    def _mean_rouge(self, key: str) -> float:
        generations = self.log.texts(key, "generation", key)
        ground_truths = self.log.texts(key, "ground_truth", key)
        indices = _aligned(
            generations, ground_truths, (f"{key}.generation", f"{key}.ground_truth"), self.log, key
        )
        scores = tofu.rouge_scores([generations[i] for i in indices], [ground_truths[i] for i in indices])
        score_name = ROUGE_SCORE_BY_BENCHMARK[self.log.benchmark]
        self._compare_stored_rouge(key, indices, scores)
        return float(np.mean(scores[score_name]))

    def _compare_stored_rouge(
        self, key: str, indices: Sequence[str], scores: Mapping[str, np.ndarray]
    ) -> None:
        items = self.log.items(key, key)
        for score_name, ours in scores.items():
            stored = [items[i].get(score_name) for i in indices]
            if any(value is None for value in stored):
                continue
            gap = _relative_gap(ours, np.asarray(stored, dtype=float))
            if not gap <= _STORED_ITEM_RTOL:
                self.notes.append(
                    f"{self.log.name}: our per-item {score_name} of '{key}' differs from the stored one "
                    f"(max relative gap {gap:.3g}): another rouge_score version or tokenisation?"
                )

    def _item_scores(self, key: str) -> list[float]:
        values = self.log.numbers(key, "score", key)
        kept = [v for v in values.values() if v is not None]
        if len(kept) < len(values):
            self.notes.append(
                f"{self.log.name}: '{key}' has {len(values) - len(kept)} items without a score (left out of the "
                f"mean, as open-unlearning does)"
            )
        return kept

    def _extraction_strength(self, key: str) -> float:
        return privacy.extraction_strength(self._item_scores(key))

    def _exact_memorization(self, key: str) -> float:
        return privacy.exact_memorization(self._item_scores(key))

    def attack_auc(self, key: str, needed_by: str) -> float:
        """ROC-AUC of the `key` attack's forget vs holdout scores (items without a score left out)."""
        forget, holdout = self.log.attack_scores(key, needed_by)
        return privacy.mia_auc(
            [v for v in forget.values() if v is not None], [v for v in holdout.values() if v is not None]
        )

    def _attack_auc(self, key: str) -> float:
        return self.attack_auc(key, needed_by=key)

    def _privleak(self, key: str) -> float:
        auc = self.metric(PRIVLEAK_ATTACK)
        if self.retain is not None:
            reference_auc = self.retain.attack_auc(PRIVLEAK_ATTACK, needed_by="privleak")
        elif self.ou_compatible:
            reference_auc = privacy.CHANCE_AUC
            self.notes.append(
                f"privleak: no retain log, so the reference AUC is open-unlearning's default {privacy.CHANCE_AUC}"
            )
        else:
            raise MissingReference(
                f"privleak needs the retain model's {PRIVLEAK_ATTACK} AUC: pass --retain RETAIN_EVAL_JSON "
                f"(open-unlearning would fall back to a reference AUC of {privacy.CHANCE_AUC}; --ou-compatible "
                f"does the same)"
            )
        if self.ou_compatible:
            return ou_variants.ou_privleak(auc, reference_auc)
        return privacy.privleak(auc, reference_auc)


# ---- the retain log must evaluate the same items ------------------------------------------------------------

# Entries whose per-item ground truths identify the forget set, and the MIA entry whose item counts must agree.
_FORGET_TEXT_ENTRIES: Mapping[str, tuple[str, ...]] = {
    TOFU: ("forget_Q_A_ROUGE",),
    MUSE: ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE"),
}
_FORGET_ITEM_ENTRIES: Mapping[str, tuple[str, ...]] = {
    TOFU: ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob"),
    MUSE: (),
}


def check_same_split(eval_log: EvalLog, retain_log: EvalLog) -> list[str]:
    """ParityError unless the retain log scores the eval log's forget (and holdout) items; returns notes."""
    if retain_log.benchmark != eval_log.benchmark:
        raise ParityError(
            f"{retain_log.name} is a {retain_log.benchmark.upper()} log but {eval_log.name} is "
            f"{eval_log.benchmark.upper()}; forget_quality and privleak compare two models on the same benchmark"
        )
    why = "forget_quality and privleak compare the two models on the same forget set"
    compared = []
    for key in _FORGET_TEXT_ENTRIES[eval_log.benchmark]:
        if not (eval_log.has(key) and retain_log.has(key)):
            continue
        ours = eval_log.texts(key, "ground_truth", "the check that both logs share a forget set")
        theirs = retain_log.texts(key, "ground_truth", "the check that both logs share a forget set")
        if len(ours) != len(theirs):
            raise ParityError(
                f"{retain_log.name} is not from the eval log's split: its '{key}' has {len(theirs)} items, "
                f"{eval_log.name} has {len(ours)}; {why}"
            )
        for index, text in ours.items():
            if theirs.get(index) != text:
                raise ParityError(
                    f"{retain_log.name} is not from the eval log's split: the ground truth of '{key}' item {index} "
                    f"is {theirs.get(index)!r} there but {text!r} in {eval_log.name}; {why}"
                )
        compared.append(key)
    for key in _FORGET_ITEM_ENTRIES[eval_log.benchmark]:
        if eval_log.has(key) and retain_log.has(key):
            _check_same_indices(
                eval_log, retain_log, key, eval_log.items(key, key), retain_log.items(key, key)
            )
            compared.append(key)
    if eval_log.has(PRIVLEAK_ATTACK) and retain_log.has(PRIVLEAK_ATTACK):
        eval_forget, eval_holdout = eval_log.attack_scores(PRIVLEAK_ATTACK, "privleak")
        retain_forget, retain_holdout = retain_log.attack_scores(PRIVLEAK_ATTACK, "privleak")
        _check_same_indices(eval_log, retain_log, f"{PRIVLEAK_ATTACK}.forget", eval_forget, retain_forget)
        _check_same_indices(eval_log, retain_log, f"{PRIVLEAK_ATTACK}.holdout", eval_holdout, retain_holdout)
        compared.append(PRIVLEAK_ATTACK)
    if not compared:
        return [
            f"{retain_log.name} and {eval_log.name} share no entry by which to check that they cover the same "
            f"forget items"
        ]
    return []


def _check_same_indices(
    eval_log: EvalLog, retain_log: EvalLog, key: str, ours: Mapping[str, object], theirs: Mapping[str, object]
) -> None:
    if sorted(ours) != sorted(theirs):
        raise ParityError(
            f"{retain_log.name} is not from the eval log's split: its '{key}' scores {len(theirs)} items, "
            f"{eval_log.name} scores {len(ours)} (or other indices); forget_quality and privleak compare the two "
            f"models on the same items"
        )


# ---- entry point --------------------------------------------------------------------------------------------


def _cost_order(key: str) -> int:
    """ROUGE (and model utility, which needs it) last, so that a bad entry elsewhere fails before the slow part."""
    return 1 if key == "model_utility" or _ROUGE_KEY.search(key) else 0


def recompute(
    eval_log: EvalLog, retain_log: EvalLog | None = None, ou_compatible: bool = False
) -> ParityResult:
    """Every metric of `eval_log` recomputed with our code; `retain_log` supplies forget_quality's and privleak's
    reference. Raises ParityError for unusable input; a reference that was not given is recorded in `missing`."""
    result = ParityResult(benchmark=eval_log.benchmark)
    retain = None
    if retain_log is not None:
        result.notes.extend(check_same_split(eval_log, retain_log))
        retain = Recomputer(retain_log, retain=None, ou_compatible=ou_compatible)
    recomputer = Recomputer(eval_log, retain=retain, ou_compatible=ou_compatible)
    recomputer.check_dependencies()

    keys = [key for key in eval_log.entries if recomputer.handler(key) is not None]
    unknown = sorted(key for key in eval_log.entries if recomputer.handler(key) is None)
    if unknown:
        result.notes.append(f"not recomputed (parity does not know these metrics): {', '.join(unknown)}")
    for key in sorted(keys, key=lambda k: (_cost_order(k), k)):
        try:
            result.values[key] = recomputer.metric(key)
        except MissingReference as reason:
            result.missing[key] = str(reason)
        except ValueError as error:
            raise ParityError(f"{eval_log.name}: cannot recompute '{key}': {error}") from error
    result.values = dict(sorted(result.values.items()))
    result.notes.extend(recomputer.notes)
    if retain is not None:
        result.notes.extend(retain.notes)
    return result
