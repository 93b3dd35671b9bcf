"""The paper's judged accuracies (§3.2 of the notes): Acc_forget, Acc_recover and Acc_retain.

For each question a judge (see `judges.py`) is shown the model's greedy answer and a set of candidate answers, and
picks the candidate most similar in meaning:

- Acc_forget: fraction of forget questions whose chosen candidate is not the ground truth (higher = more forgotten).
- Acc_recover: fraction of forget questions whose chosen candidate is the oracle (ideal) model's answer.
- Acc_retain: fraction of retain questions whose chosen candidate is the ground truth or the oracle's answer.

The paper's prompt and candidate list are unknown. The candidates here, per question, in this order:
    the perturbed (wrong) answers of the TOFU item, then the ground-truth answer, then the oracle's greedy answer,
with exact duplicates (after collapsing whitespace and case) merged into one candidate that keeps every role. The
order is the tie-break of the ROUGE judge (first wins), chosen so that ties never flatter a model: an answer that
shares no word with any candidate (empty or gibberish) lands on a wrong answer, so it counts as forgotten but neither
recovered nor retained, and a tie between the ground truth and the oracle's answer counts as not forgotten and not
recovered. The paraphrased answer is left out, so that the ground truth is one candidate among the others.

All three are computed from cached greedy generations of the model and of the oracle (the TOFU ROUGE metrics make the
evaluation keep them), so they are registered as cross-model metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from msa_bench.errors import ConfigError
from msa_bench.metrics.judges import Judge, make_judge
from msa_bench.metrics.registry import CrossModelMetric, Direction, MetricInfo, register_cross_model_metric

GROUND_TRUTH = "ground_truth"
ORACLE = "oracle"
PERTURBED = "perturbed"


@dataclass(frozen=True)
class JudgedAccuracy:
    name: str
    eval_set: str  # the eval set whose questions it is computed on
    rouge_metric: str  # the TOFU metric whose evaluation keeps that set's generations
    description: str
    latex: str  # every judged accuracy is higher-is-better


JUDGED_ACCURACIES: Mapping[str, JudgedAccuracy] = {
    accuracy.name: accuracy
    for accuracy in (
        JudgedAccuracy(
            "acc_forget",
            "forget",
            "forget_Q_A_ROUGE",
            "fraction of forget questions whose answer the judge does not match to the ground truth",
            r"Acc$_\text{forget}\uparrow$",
        ),
        JudgedAccuracy(
            "acc_recover",
            "forget",
            "forget_Q_A_ROUGE",
            "fraction of forget questions whose answer the judge matches to the oracle model's answer",
            r"Acc$_\text{recover}\uparrow$",
        ),
        JudgedAccuracy(
            "acc_retain",
            "retain",
            "retain_Q_A_ROUGE",
            "fraction of retain questions whose answer the judge matches to the ground truth or the oracle's",
            r"Acc$_\text{retain}\uparrow$",
        ),
    )
}


@dataclass(frozen=True)
class CandidateSet:
    texts: list[str]
    roles: list[frozenset[str]]  # per candidate: GROUND_TRUTH, ORACLE and/or PERTURBED


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def candidate_set(ground_truth: str, oracle_output: str, perturbed_answers: Sequence[str]) -> CandidateSet:
    """The judge's candidates for one question (order and merging: see the module docstring)."""
    if isinstance(perturbed_answers, str):
        raise TypeError(f"perturbed_answers must be a list of answers, not the string {perturbed_answers!r}")
    texts: list[str] = []
    roles: list[set[str]] = []
    position: dict[str, int] = {}
    entries = [(answer, PERTURBED) for answer in perturbed_answers]
    entries += [(ground_truth, GROUND_TRUTH), (oracle_output, ORACLE)]
    for text, role in entries:
        key = _normalise(text)
        if key in position:
            roles[position[key]].add(role)
        else:
            position[key] = len(texts)
            texts.append(text)
            roles.append({role})
    return CandidateSet(texts=texts, roles=[frozenset(r) for r in roles])


def _role_label(roles: frozenset[str]) -> str:
    return "+".join(sorted(roles))


def judged_accuracies(
    generations: Mapping[str, Sequence[str]],
    oracle_generations: Mapping[str, Sequence[str]],
    eval_sets: Mapping[str, Sequence[dict]],
    judge: Judge,
    metric_names: Sequence[str] = tuple(JUDGED_ACCURACIES),
) -> dict:
    """The requested judged accuracies, with what produced them.

    `generations` / `oracle_generations` map an eval set name ("forget", "retain") to greedy answers in item order,
    as in `EvalResult.generations`; `eval_sets` holds the TOFU items (answer, perturbed_answer). Returns
    {"judge": judge name, "metrics": {name: value}, "per_item": {name: [0.0 / 1.0 per question]},
     "choices": {eval set: [roles of the chosen candidate, e.g. "ground_truth+oracle"]}}.
    Each eval set is judged once, whatever number of the metrics read it.
    """
    unknown = [name for name in metric_names if name not in JUDGED_ACCURACIES]
    if unknown:
        raise ValueError(
            f"unknown judged accuracy {unknown}; valid names are: {', '.join(JUDGED_ACCURACIES)}"
        )
    chosen_roles: dict[str, list[frozenset[str]]] = {}
    for eval_set in dict.fromkeys(JUDGED_ACCURACIES[name].eval_set for name in metric_names):
        chosen_roles[eval_set] = _judge_eval_set(eval_set, generations, oracle_generations, eval_sets, judge)

    metrics: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    for name in metric_names:
        roles = chosen_roles[JUDGED_ACCURACIES[name].eval_set]
        if name == "acc_forget":
            hits = [GROUND_TRUTH not in chosen for chosen in roles]
        elif name == "acc_recover":
            hits = [ORACLE in chosen for chosen in roles]
        else:  # acc_retain
            hits = [bool(chosen & {GROUND_TRUTH, ORACLE}) for chosen in roles]
        per_item[name] = [float(hit) for hit in hits]
        metrics[name] = sum(per_item[name]) / len(hits)
    return {
        "judge": judge.name,
        "metrics": metrics,
        "per_item": per_item,
        "choices": {
            eval_set: [_role_label(chosen) for chosen in roles] for eval_set, roles in chosen_roles.items()
        },
    }


def _judge_eval_set(
    eval_set: str,
    generations: Mapping[str, Sequence[str]],
    oracle_generations: Mapping[str, Sequence[str]],
    eval_sets: Mapping[str, Sequence[dict]],
    judge: Judge,
) -> list[frozenset[str]]:
    """The roles of the candidate the judge picks for each question of one eval set."""
    users = [name for name, accuracy in JUDGED_ACCURACIES.items() if accuracy.eval_set == eval_set]
    rouge_metric = JUDGED_ACCURACIES[users[0]].rouge_metric
    for who, available in (("model", generations), ("oracle", oracle_generations)):
        if eval_set not in available:
            raise ValueError(
                f"{'/'.join(users)} need the {who}'s greedy answers on the '{eval_set}' set, which its evaluation "
                f"did not keep; evaluate with {rouge_metric} (it keeps them)"
            )
    if eval_set not in eval_sets:
        raise ValueError(f"{'/'.join(users)} need the '{eval_set}' eval set; given: {sorted(eval_sets)}")
    items = eval_sets[eval_set]
    outputs = list(generations[eval_set])
    oracle_outputs = list(oracle_generations[eval_set])
    if not len(items) == len(outputs) == len(oracle_outputs):
        raise ValueError(
            f"the '{eval_set}' set has {len(items)} items but the model has {len(outputs)} answers and the oracle "
            f"{len(oracle_outputs)}: the evaluations were made on a different eval set"
        )
    if not items:
        raise ValueError(f"the '{eval_set}' eval set is empty")
    candidate_sets = [
        candidate_set(item["answer"], oracle_output, item["perturbed_answer"])
        for item, oracle_output in zip(items, oracle_outputs, strict=True)
    ]
    choices = judge.choose_many(outputs, [candidates.texts for candidates in candidate_sets])
    return [candidates.roles[choice] for candidates, choice in zip(candidate_sets, choices, strict=True)]


# One judge per configuration for the process, so the metrics reading the same set share its cached verdicts.
_JUDGES: dict[tuple, Judge] = {}


def judge_for(judge_config) -> Judge:
    key = (
        judge_config.kind,
        judge_config.url,
        judge_config.model,
        judge_config.api_key_env,
        float(judge_config.timeout_seconds),
    )
    if key not in _JUDGES:
        _JUDGES[key] = make_judge(judge_config)
    return _JUDGES[key]


def judge_provenance(settings) -> str:
    """What produced a judged accuracy, for results.json."""
    return judge_for(settings.judge).name


def sampling_refusal(metric_names: Sequence[str], sampling) -> str | None:
    """Why the judged accuracies among `metric_names` cannot be computed with `sampling` (a SamplingConfig), or None
    when none is requested or the decoding is greedy (temperature 0, as core/decoding.is_greedy says)."""
    judged = [name for name in metric_names if name in JUDGED_ACCURACIES]
    if not judged or sampling is None or sampling.temperature == 0:
        return None
    return (
        f"metrics.names has {', '.join(judged)} with metrics.sampling.temperature={sampling.temperature} "
        f"(num_samples={sampling.num_samples}): the judged accuracies are defined on the greedy answer, and with "
        "sampling an evaluation keeps the best-ROUGE sample instead; drop them from metrics.names, or evaluate "
        "them without sampling (metrics.sampling.temperature=0, num_samples=1)"
    )


def compute_judged_accuracy(
    name: str,
    evaluation: Mapping,
    oracle_evaluation: Mapping,
    settings,
    *,
    eval_sets: Mapping[str, Sequence[dict]],
) -> float:
    """One judged accuracy from the model's and the oracle's evaluations (EvalResult.to_dict()); refused when
    `settings.sampling` samples (validate_config refuses that config before anything runs)."""
    refusal = sampling_refusal([name], getattr(settings, "sampling", None))
    if refusal is not None:
        raise ConfigError(refusal)
    result = judged_accuracies(
        evaluation.get("generations") or {},
        oracle_evaluation.get("generations") or {},
        eval_sets,
        judge_for(settings.judge),
        metric_names=(name,),
    )
    return result["metrics"][name]


def _register() -> None:
    for name, accuracy in JUDGED_ACCURACIES.items():

        def compute(evaluation, oracle_evaluation, settings, *, eval_sets, _name=name) -> float:
            return compute_judged_accuracy(
                _name, evaluation, oracle_evaluation, settings, eval_sets=eval_sets
            )

        register_cross_model_metric(
            CrossModelMetric(
                info=MetricInfo(name, Direction.HIGHER, name.capitalize(), accuracy.latex),
                needs=(accuracy.rouge_metric,),
                compute=compute,
                needs_eval_sets=True,
                provenance=judge_provenance,
            )
        )


_register()
