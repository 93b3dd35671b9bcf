"""TOFU's per-model metrics: what each one is computed from (`MetricSpec`), in dependency order (`TOFU_METRICS`).

The evaluator (`tofu_suite.py`) works out from these specs which model passes each eval set needs; the metadata that
reporting reads (direction, label) is derived here too, so that a TOFU metric is described in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from msa_bench.metrics import tofu
from msa_bench.metrics.core.attacks import ATTACKS
from msa_bench.metrics.fluency import FLUENCY_METRIC
from msa_bench.metrics.registry import Direction, MetricInfo, validate_metric_names

SUITE_NAME = "tofu"
# Eval set name -> the prefix TOFU uses in its metric names.
EVAL_SET_PREFIXES: Mapping[str, str] = MappingProxyType(
    {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
)
_SET_TITLES = {
    "forget": "Forget",
    "retain": "Retain",
    "real_authors": "Real authors",
    "world_facts": "World facts",
}
# TOFU's holdout authors, never trained on: the non-members the membership attacks tell the forget set apart from.
HOLDOUT_SET = "holdout"

# The model passes a metric can need on its eval set.
ANSWER_NLL = "answer_nll"  # NLL of `answer` given `question`
PARAPHRASED_NLL = "paraphrased_nll"  # NLL of `paraphrased_answer` given `question`
PERTURBED_NLL = "perturbed_nll"  # NLL of each of `perturbed_answer` given `question`
GENERATION = "generation"  # greedy answer to `question`, compared with `answer`
ANSWER_TOKENS = "answer_tokens"  # per-token log-probs and argmax matches of `answer` given `question`
VOCAB_MOMENTS = "vocab_moments"  # in the same forward: mean/variance of the vocabulary log-probs (min-k%++)
GRADIENT_NORM = "gradient_norm"  # per-item gradient of the answer loss, one item at a time

# The item fields each pass reads.
_FIELDS_BY_PASS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        ANSWER_NLL: ("question", "answer"),
        PARAPHRASED_NLL: ("question", "paraphrased_answer"),
        PERTURBED_NLL: ("question", "perturbed_answer"),
        GENERATION: ("question", "answer"),
        ANSWER_TOKENS: ("question", "answer"),
        VOCAB_MOMENTS: ("question", "answer"),
        GRADIENT_NORM: ("question", "answer"),
    }
)

# Kinds of forget-set metric scored on their own scale, not against the oracle: extraction strength and exact
# memorisation, lower is better as in the paper's tables; fluency, higher is better (a fluent answer is no sign of
# remembering). Every other forget-set metric has the oracle's value as its goal (see `MetricSpec.direction`).
_OWN_SCALE_ON_FORGET = frozenset({"extraction_strength", "exact_memorization", "fluency"})


@dataclass(frozen=True)
class MetricSpec:
    name: str
    # How it is computed: prob, paraphrased_prob, prob_normalised, rouge, truth_ratio, extraction_strength,
    # exact_memorization, mia, fluency, model_utility.
    kind: str
    eval_set: str | None  # the eval set it is computed on; None when it only combines other metrics
    needs: frozenset[str]  # model passes over its eval sets that it reads
    depends_on: tuple[str, ...]  # metrics that must be computed first
    higher_is_better: bool  # on its own scale: e.g. a forget-set probability falls as the facts are forgotten
    description: str
    label: str  # a table's column header
    latex: str | None = None  # the LaTeX column header; None: the label, escaped
    variant: str | None = (
        None  # the ROUGE score, truth-ratio aggregation or attack, for kinds that have several
    )
    extra_sets: tuple[
        str, ...
    ] = ()  # further eval sets it reads with the same passes (the attacks' holdout set)

    @property
    def eval_sets(self) -> tuple[str, ...]:
        return () if self.eval_set is None else (self.eval_set, *self.extra_sets)

    @property
    def direction(self) -> Direction:
        """How a table scores it against the ideal (oracle) model.

        On the forget set the goal is the oracle's value, not an extreme: the oracle never saw the forget authors,
        and a model that falls below it (a forget probability lower than an unseen author's, a truth ratio past
        the oracle's) has been pushed somewhere the oracle is not, which an attacker can notice. That includes the
        membership attacks `mia_*`: their ROC-AUC (forget vs holdout) is about 0.5 for the oracle, for which both
        sets are unseen; near 1 means the forget set is still recognisable, but an AUC well below the oracle's
        means it is now recognisably *under*-fitted, which gives membership away just as well (MUSE's privleak
        measures exactly this distance). Extraction strength and exact memorisation keep the paper's "lower is
        better", and fluency is higher-is-better. Elsewhere (retain, real authors, world facts, model utility) the
        scale's own direction holds.
        """
        if self.eval_set == "forget" and self.kind not in _OWN_SCALE_ON_FORGET:
            return Direction.TOWARD_ORACLE
        return Direction.HIGHER if self.higher_is_better else Direction.LOWER

    @property
    def info(self) -> MetricInfo:
        return MetricInfo(name=self.name, direction=self.direction, label=self.label, latex=self.latex)


# (metric name suffix, rouge_scores key, what it is, label)
_ROUGE_VARIANTS = (
    ("Q_A_ROUGE", "rougeL_recall", "ROUGE-L recall", "ROUGE-L"),
    ("Q_A_ROUGE1_recall", "rouge1_recall", "ROUGE-1 recall", "ROUGE-1"),
    ("Q_A_ROUGE_L_F1", "rougeL_f1", "ROUGE-L F1", "ROUGE-L F1"),
)

_TRUTH_RATIO_DESCRIPTIONS = {
    "closer_to_1_better": "mean min(tr, 1/tr) (1 = cannot tell true from false)",
    "true_better": "mean max(0, 1 - tr) (towards 1 = strongly prefers the truth)",
    "prob_mean": "mean 1 / (1 + tr), the probability share of the true answer",
}

_ATTACK_DESCRIPTIONS = {
    "loss": "mean answer NLL",
    "zlib": "answer NLL / zlib-compressed answer length",
    "min_k": "minus the mean of the lowest k share of answer-token log-probs",
    "min_k_plus_plus": "min-k on token log-probs standardised by the vocabulary log-prob mean and std",
    "gradnorm": "mean per-tensor 2-norm of the per-item gradient of the answer loss",
}
_ATTACK_LABELS = {
    "loss": "LOSS",
    "zlib": "zlib",
    "min_k": "Min-k%",
    "min_k_plus_plus": "Min-k%++",
    "gradnorm": "GradNorm",
}


def _truth_ratio_name(eval_set: str, aggregation: str) -> str:
    """TOFU's names for its reported aggregations (forget_truth_ratio, retain_Truth_Ratio, ...), ours for the rest."""
    prefix = EVAL_SET_PREFIXES[eval_set]
    if eval_set == "forget":
        names = {"closer_to_1_better": "forget_truth_ratio"}
    else:
        names = {
            "true_better": f"{prefix}_Truth_Ratio",
            "closer_to_1_better": f"{prefix}_truth_ratio_closer_to_1",
        }
    return names.get(aggregation, f"{prefix}_truth_ratio_{aggregation}")


def _truth_ratio_label(eval_set: str, aggregation: str) -> str:
    """The reported aggregation of a set is its "truth ratio"; the others name theirs."""
    reported = "closer_to_1_better" if eval_set == "forget" else "true_better"
    suffix = "" if aggregation == reported else f" ({aggregation.replace('_', ' ')})"
    return f"{_SET_TITLES[eval_set]} truth ratio{suffix}"


def _set_specs(eval_set: str) -> list[MetricSpec]:
    """Probability, ROUGE and truth-ratio metrics of one of the four TOFU eval sets."""
    prefix = EVAL_SET_PREFIXES[eval_set]
    title = _SET_TITLES[eval_set]
    forgetting = eval_set == "forget"
    forgotten_note = " (lower = more forgotten)" if forgetting else ""
    has_paraphrase = eval_set in ("forget", "retain")
    specs: list[MetricSpec] = []
    if has_paraphrase:
        specs.append(
            MetricSpec(
                name=f"{prefix}_Q_A_Prob",
                kind="prob",
                eval_set=eval_set,
                needs=frozenset({ANSWER_NLL}),
                depends_on=(),
                higher_is_better=not forgetting,
                description=f"mean length-normalised probability of the {eval_set} answers{forgotten_note}",
                label=f"{title} prob.",
            )
        )
        specs.append(
            MetricSpec(
                name=f"{prefix}_Q_A_PARA_Prob",
                kind="paraphrased_prob",
                eval_set=eval_set,
                needs=frozenset({PARAPHRASED_NLL}),
                depends_on=(),
                higher_is_better=not forgetting,
                description=f"mean length-normalised probability of the paraphrased {eval_set} answers"
                f"{forgotten_note}",
                label=f"{title} para. prob.",
            )
        )
    else:
        specs.append(
            MetricSpec(
                name=f"{prefix}_Q_A_Prob_normalised",
                kind="prob_normalised",
                eval_set=eval_set,
                needs=frozenset({ANSWER_NLL, PERTURBED_NLL}),
                depends_on=(),
                higher_is_better=True,
                description=f"mean P(answer) / (P(answer) + sum P(perturbed)) on {eval_set}",
                label=f"{title} norm. prob.",
            )
        )
    for suffix, variant, what, label in _ROUGE_VARIANTS:
        specs.append(
            MetricSpec(
                name=f"{prefix}_{suffix}",
                kind="rouge",
                eval_set=eval_set,
                needs=frozenset({GENERATION}),
                depends_on=(),
                higher_is_better=not forgetting,
                description=f"mean {what} of greedy answers on the {eval_set} set{forgotten_note}",
                label=f"{title} {label}",
                variant=variant,
            )
        )
    # forget/retain compare the paraphrased answer with the perturbed ones; real_authors/world_facts have no
    # paraphrase, so there the original answer is the true option.
    correct_pass = PARAPHRASED_NLL if has_paraphrase else ANSWER_NLL
    correct_name = "paraphrased" if has_paraphrase else "original"
    for aggregation in ("closer_to_1_better", "true_better", "prob_mean"):
        # Near 1 on the forget set means the facts are gone; the other two aggregations reward knowing them.
        good_when_high = forgetting if aggregation == "closer_to_1_better" else not forgetting
        specs.append(
            MetricSpec(
                name=_truth_ratio_name(eval_set, aggregation),
                kind="truth_ratio",
                eval_set=eval_set,
                needs=frozenset({correct_pass, PERTURBED_NLL}),
                depends_on=(),
                higher_is_better=good_when_high,
                description=f"{_TRUTH_RATIO_DESCRIPTIONS[aggregation]} of {correct_name} vs perturbed {eval_set} answers",
                label=_truth_ratio_label(eval_set, aggregation),
                variant=aggregation,
            )
        )
    return specs


def _forget_memorisation_specs() -> list[MetricSpec]:
    """Extraction strength, exact memorisation and the membership attacks (forget vs holdout)."""
    specs = [
        MetricSpec(
            name="extraction_strength",
            kind="extraction_strength",
            eval_set="forget",
            needs=frozenset({ANSWER_TOKENS}),
            depends_on=(),
            higher_is_better=False,
            description="mean 1 - k/L over forget answers, k the shortest prefix after which teacher-forced greedy "
            "predictions reproduce the rest (lower = more forgotten)",
            label="Ext. str.",
        ),
        MetricSpec(
            name="exact_memorization",
            kind="exact_memorization",
            eval_set="forget",
            needs=frozenset({ANSWER_TOKENS}),
            depends_on=(),
            higher_is_better=False,
            description="mean share of forget answer tokens whose teacher-forced argmax is the label "
            "(lower = more forgotten)",
            label="Exact mem.",
        ),
    ]
    needs_by_attack = {
        "loss": {ANSWER_TOKENS},
        "zlib": {ANSWER_TOKENS},
        "min_k": {ANSWER_TOKENS},
        "min_k_plus_plus": {ANSWER_TOKENS, VOCAB_MOMENTS},
        "gradnorm": {GRADIENT_NORM},
    }
    for attack in ATTACKS:
        specs.append(
            MetricSpec(
                name=f"mia_{attack}",
                kind="mia",
                eval_set="forget",
                needs=frozenset(needs_by_attack[attack]),
                depends_on=(),
                # On its own scale an AUC near 1 means the forget set is still recognisable (see `direction`).
                higher_is_better=False,
                description=f"ROC-AUC of the {_ATTACK_DESCRIPTIONS[attack]} attack, forget (members) vs holdout "
                "(non-members); near 1 = forget set recognisable as training data",
                label=f"{_ATTACK_LABELS[attack]} AUC",
                variant=attack,
                extra_sets=(HOLDOUT_SET,),
            )
        )
    return specs


# open-unlearning's forget_Q_A_gibberish: a classifier reads the answers the ROUGE metrics generate (no second
# generation pass); msa_bench/metrics/fluency.py.
_FLUENCY_SPEC = MetricSpec(
    name=FLUENCY_METRIC,
    kind="fluency",
    eval_set="forget",
    needs=frozenset({GENERATION}),
    depends_on=(),
    higher_is_better=True,
    description="mean probability of the fluent class (metrics.fluency_label) that the text classifier "
    "metrics.fluency_classifier gives the greedy answers to the forget questions",
    label="Forget fluency",
)


def _build_registry() -> dict[str, MetricSpec]:
    specs = _set_specs("forget") + _forget_memorisation_specs() + [_FLUENCY_SPEC]
    for eval_set in ("retain", "real_authors", "world_facts"):
        specs += _set_specs(eval_set)
    specs.append(
        MetricSpec(
            name="model_utility",
            kind="model_utility",
            eval_set=None,
            needs=frozenset(),
            depends_on=tofu.MODEL_UTILITY_COMPONENTS,
            higher_is_better=True,
            description="harmonic mean of the nine retain / real-author / world-fact metrics",
            label="Model utility",
            latex=r"MU$\uparrow$",
        )
    )
    return {spec.name: spec for spec in specs}


# Ordered so that every metric comes after the ones it depends on.
TOFU_METRICS: Mapping[str, MetricSpec] = MappingProxyType(_build_registry())


def validate_tofu_metric_names(names: Sequence[str]) -> None:
    """Raise ConfigError naming any name that is not a per-model TOFU metric."""
    validate_metric_names(names, suite=SUITE_NAME)


def resolve_metric_names(names: Sequence[str]) -> list[str]:
    """The requested metrics plus everything they depend on, in registry (dependency) order."""
    if isinstance(names, str):
        raise TypeError(f"metric names must be a sequence of names, not the string {names!r}")
    pending = list(names)  # a one-shot iterable would otherwise be used up by validation
    validate_tofu_metric_names(pending)
    wanted: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(TOFU_METRICS[name].depends_on)
    return [name for name in TOFU_METRICS if name in wanted]


def required_eval_sets(metric_names: Sequence[str]) -> set[str]:
    """The eval sets the metrics (and their dependencies) read; "holdout" only for the membership attacks."""
    return {
        eval_set for name in resolve_metric_names(metric_names) for eval_set in TOFU_METRICS[name].eval_sets
    }


def plan_passes(metric_names: Sequence[str]) -> dict[str, set[str]]:
    """Eval set -> the model passes the metrics need on it."""
    passes_by_set: dict[str, set[str]] = {}
    for name in metric_names:
        spec = TOFU_METRICS[name]
        if spec.needs:
            for eval_set in spec.eval_sets:
                passes_by_set.setdefault(eval_set, set()).update(spec.needs)
    return passes_by_set


def metrics_reading(eval_set: str, metric_names: Sequence[str]) -> list[str]:
    """The metrics among `metric_names` that read `eval_set` (for error messages)."""
    return [name for name in metric_names if eval_set in TOFU_METRICS[name].eval_sets]


def check_eval_set(
    eval_set: str, items: Sequence[dict], passes: set[str], metric_names: Sequence[str]
) -> None:
    users = metrics_reading(eval_set, metric_names)
    if len(items) == 0:
        raise ValueError(f"eval set '{eval_set}' is empty but metrics {users} need it")
    fields = sorted({name for pass_name in passes for name in _FIELDS_BY_PASS[pass_name]})
    for index, item in enumerate(items):
        for field_name in fields:
            if field_name not in item or item[field_name] is None:
                raise ValueError(
                    f"item {index} of eval set '{eval_set}' lacks '{field_name}', needed by {users}"
                )
        if PERTURBED_NLL in passes:
            perturbed = item["perturbed_answer"]
            if isinstance(perturbed, str) or len(perturbed) == 0:
                raise ValueError(
                    f"item {index} of eval set '{eval_set}': 'perturbed_answer' must be a non-empty list of "
                    f"answers, got {perturbed!r}"
                )
