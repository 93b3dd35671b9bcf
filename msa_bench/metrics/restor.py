"""RESTOR accuracy: how many of the evaluation entities' Wikidata facts the model states correctly.

Each (entity, relation) question is asked after `n_shots` in-context examples of the same relation about other
entities, in upstream RESTOR's layout (`evaluation/eval_utils.py::get_context`): one "{question} {answer}" line per
example, then the question alone; the model continues the line. The greedy continuation's first line (at most
`RESTOR_MAX_NEW_TOKENS` tokens) is compared with the accepted Wikidata answers by `alias_match`, a deterministic
offline stand-in for RESTOR's LLM judge; when `metrics.judge` names an LLM judge (kind openai), that judge decides.
`restor_accuracy` is the % (0-100) of questions answered correctly.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from msa_bench.data.restor import RestorData
from msa_bench.metrics.core.batches import model_context_length
from msa_bench.metrics.core.decoding import greedy_decode
from msa_bench.metrics.core.result import EvalResult
from msa_bench.metrics.registry import Direction, MetricInfo, Suite, register_suite

logger = logging.getLogger(__name__)

RESTOR_ACCURACY = "restor_accuracy"
RESTOR_QUESTIONS = "restor_questions"
RESTOR_METRIC_NAMES: tuple[str, ...] = (RESTOR_ACCURACY,)
# Upstream RESTOR asks with 5 examples; answers are short entity names, so 16 tokens hold a first line.
DEFAULT_SHOTS = 5
RESTOR_MAX_NEW_TOKENS = 16
# Only the first line is judged, so generation can stop there.
RESTOR_STOP_STRINGS: tuple[str, ...] = ("\n",)
ITEM_FIELDS: tuple[str, ...] = ("entity", "relation", "question", "answers", "prompt")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


# --- answer matching ------------------------------------------------------------------------------------------------


def normalise_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def alias_match(generation: str, answers: Sequence[str]) -> bool:
    """Whether the generation's first line states an accepted answer.

    True when some normalised answer equals the normalised first line, or occurs in it as a whole-word span
    ("born in Hat Yai" states "Hat Yai"; "English and Thai" states "Thai"). One-directional: a line that is only part
    of an answer ("Thai" for "Southern Thai") does not match, and neither does a word fragment ("Thailand" for
    "Thai"). Answers that normalise to nothing never match."""
    lines = generation.strip().splitlines()
    line_words = normalise_answer(lines[0]).split() if lines else []
    for answer in answers:
        answer_words = normalise_answer(answer).split()
        width = len(answer_words)
        if width and any(
            line_words[start : start + width] == answer_words for start in range(len(line_words) - width + 1)
        ):
            return True
    return False


# --- prompts ----------------------------------------------------------------------------------------------------------


def restor_prompt(question: str, icl_examples: Sequence[Mapping], n_shots: int, *, entity: str) -> str:
    """The first `n_shots` examples (in their stored order) not about `entity`, one "{question} {answer}" line each,
    then the question; fewer examples when fewer remain. The model generates the answer's leading space."""
    if n_shots < 0:
        raise ValueError(f"n_shots must be >= 0, got {n_shots}")
    shots = [example for example in icl_examples if example["entity"] != entity][:n_shots]
    return "".join(f"{example['question']} {example['answer']}\n" for example in shots) + question


def restor_question_items(data: RestorData, n_shots: int = DEFAULT_SHOTS) -> list[dict]:
    """The `restor_questions` eval set: {entity, relation, question, answers, prompt} per evaluation question."""
    return [
        {
            "entity": item.entity,
            "relation": item.relation,
            "question": item.question,
            "answers": list(item.answers),
            "prompt": restor_prompt(
                item.question, data.icl_examples[item.relation], n_shots, entity=item.entity
            ),
        }
        for item in data.eval_questions
    ]


def _prompt_ids(tokenizer, prompt: str, max_tokens: int) -> tuple[list[int], bool]:
    """bos + the prompt's tokens, keeping the end (the question) when too long; and whether it was cut."""
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    room = max_tokens - len(head)
    return head + body[max(0, len(body) - room) :], len(body) > room


# --- the suite ------------------------------------------------------------------------------------------------------


def _check_request(eval_sets: Mapping[str, Sequence[Mapping]], metric_names: Sequence[str]) -> None:
    if isinstance(metric_names, str):
        raise TypeError(f"metric names must be a sequence of names, not the string {metric_names!r}")
    unknown = [name for name in metric_names if name not in RESTOR_METRIC_NAMES]
    if unknown:
        raise ValueError(
            f"unknown RESTOR metric(s) {unknown}; valid names are: {', '.join(RESTOR_METRIC_NAMES)}"
        )
    if RESTOR_QUESTIONS not in eval_sets:
        raise ValueError(
            f"{RESTOR_ACCURACY} needs the eval set {RESTOR_QUESTIONS!r}; given: {sorted(eval_sets)}"
        )
    items = eval_sets[RESTOR_QUESTIONS]
    if not items:
        raise ValueError(f"the eval set {RESTOR_QUESTIONS!r} is empty")
    missing = sorted({field for item in items for field in ("prompt", "answers") if field not in item})
    if missing:
        raise ValueError(
            f"{RESTOR_QUESTIONS} items lack field(s) {missing} (build them with restor_question_items)"
        )


def evaluate_restor(
    model: torch.nn.Module,
    tokenizer,
    eval_sets: Mapping[str, Sequence[Mapping]],
    metric_names: Sequence[str],
    settings,
    progress: bool = False,
) -> EvalResult:
    """`restor_accuracy` (%) over eval_sets["restor_questions"]; per-item 1/0 in per_item, the first lines in
    generations. Batch size from `settings.batch_size` (a MetricsConfig; 32 when absent)."""
    result = EvalResult()
    if not metric_names:
        return result
    _check_request(eval_sets, metric_names)
    items = eval_sets[RESTOR_QUESTIONS]
    max_prompt_tokens = model_context_length(model, tokenizer) - RESTOR_MAX_NEW_TOKENS
    if max_prompt_tokens < 2:
        raise ValueError(f"the model's context cannot hold a prompt and {RESTOR_MAX_NEW_TOKENS} new tokens")
    encoded = [_prompt_ids(tokenizer, item["prompt"], max_prompt_tokens) for item in items]
    n_cut = sum(cut for _, cut in encoded)
    if n_cut:
        logger.warning(
            "%s: %d of %d prompts cut to their last %d tokens",
            RESTOR_QUESTIONS,
            n_cut,
            len(items),
            max_prompt_tokens,
        )

    with tqdm(total=len(items), desc="RESTOR eval", unit="q", disable=not progress) as progress_bar:
        generated = greedy_decode(
            model,
            tokenizer,
            [ids for ids, _ in encoded],
            max_new_tokens=RESTOR_MAX_NEW_TOKENS,
            batch_size=getattr(settings, "batch_size", 32),
            stop_strings=RESTOR_STOP_STRINGS,
            on_batch=progress_bar.update,
        )
    generations = generated.texts
    correct = _verdicts(generations, items, getattr(settings, "judge", None))
    result.metrics[RESTOR_ACCURACY] = 100.0 * sum(correct) / len(correct)
    result.per_item[RESTOR_ACCURACY] = correct
    result.generations[RESTOR_QUESTIONS] = generations
    result.tokens_processed = generated.tokens_processed
    return result


# The judge's extra candidate: choosing it means the answer states none of the accepted ones.
NONE_OF_THESE = "none of these (a different answer, or no answer)"


def uses_llm_judge(judge_config) -> bool:
    """Alias matching is the offline default; any other configured judge (metrics.judge) replaces it."""
    return judge_config is not None and getattr(judge_config, "kind", "rouge") != "rouge"


def _verdicts(generations: Sequence[str], items: Sequence[Mapping], judge_config) -> list[float]:
    """1.0 per correctly answered question: by alias matching, or, when an LLM judge is configured, by asking it
    which accepted answer the first line states, with "none of these" as the last choice."""
    first_lines = [(generation.strip().splitlines() or [""])[0] for generation in generations]
    if not uses_llm_judge(judge_config):
        return [
            float(alias_match(line, item["answers"])) for line, item in zip(first_lines, items, strict=True)
        ]
    from msa_bench.metrics.judges import make_judge

    candidate_lists = [[*item["answers"], NONE_OF_THESE] for item in items]
    choices = make_judge(judge_config).choose_many(first_lines, candidate_lists)
    return [float(choice < len(item["answers"])) for choice, item in zip(choices, items, strict=True)]


def required_sets(metric_names: Sequence[str]) -> set[str]:
    """The eval set the RESTOR metrics read (there is one metric)."""
    return {RESTOR_QUESTIONS}


def cache_spec(metric_names: Sequence[str], settings) -> dict:
    """An LLM judge decides the accuracy per model (alias matching needs no settings), so then it is part of the
    evaluation's cache key; the MetricsConfig's judge is otherwise left out of it (judged.py's judge only enters
    cross-model metrics, which are never cached)."""
    return {"restor_judge": asdict(settings.judge)} if uses_llm_judge(settings.judge) else {}


register_suite(
    Suite(
        name="restor",
        metrics=(MetricInfo(RESTOR_ACCURACY, Direction.HIGHER, "RESTOR acc. (%)", r"Acc. (\%)$\uparrow$"),),
        evaluate=evaluate_restor,
        required_sets=required_sets,
        cache_spec=cache_spec,
        item_eval_set=lambda key: RESTOR_QUESTIONS if key in RESTOR_METRIC_NAMES else None,
    )
)
