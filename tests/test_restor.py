"""RESTOR loader, answer matching, prompts and the restor_accuracy suite (data read from ../shared/data/restor)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from msa_bench.data.restor import RestorData, load_restor
from msa_bench.metrics.registry import SUITES
from msa_bench.metrics.restor import (
    RESTOR_ACCURACY,
    RESTOR_QUESTIONS,
    alias_match,
    evaluate_restor,
    normalise_answer,
    restor_prompt,
    restor_question_items,
)
from tests.tiny_models import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESTOR_DIR = REPO_ROOT.parent / "shared" / "data" / "restor"
needs_restor = pytest.mark.skipif(
    not (RESTOR_DIR / "facts.json").is_file(), reason=f"RESTOR data not found at {RESTOR_DIR}"
)


@pytest.fixture(scope="module")
def restor() -> RestorData:
    if not (RESTOR_DIR / "facts.json").is_file():
        pytest.skip(f"RESTOR data not found at {RESTOR_DIR}")
    return load_restor(RESTOR_DIR, mix="a0")


# --- loader -----------------------------------------------------------------------------------------------------------


@needs_restor
def test_loader_counts(restor: RestorData) -> None:
    assert len(restor.entities) == 50
    assert len(restor.eval_questions) == 1051  # the paper's 1,051 fact questions
    assert {q.entity for q in restor.eval_questions} == set(restor.entities)
    assert len(restor.corruption_texts) == 3000
    assert all(isinstance(text, str) and text for text in restor.corruption_texts)
    assert len(restor.icl_examples) == 41
    assert all(len(examples) == 10 for examples in restor.icl_examples.values())
    assert len(restor.facts) == 468
    assert all(q.answers for q in restor.eval_questions)


@needs_restor
def test_clean_fact_texts(restor: RestorData) -> None:
    texts = restor.clean_fact_texts()
    assert len(texts) == sum(len(relations) for relations in restor.facts.values())
    first = next(iter(restor.facts.values()))
    first_fact = next(iter(first.values()))
    assert texts[0] == f"{first_fact['question']} {first_fact['answers'][0]}."
    assert texts == restor.clean_fact_texts()


@needs_restor
def test_other_mix_loads() -> None:
    assert len(load_restor(RESTOR_DIR, mix="a3").corruption_texts) == 2700


@needs_restor
def test_unknown_mix_names_available() -> None:
    with pytest.raises(ValueError, match=r"a0.*a1.*a2.*a3"):
        load_restor(RESTOR_DIR, mix="a5")


def test_missing_file_names_full_path(tmp_path: Path) -> None:
    (tmp_path / "mix_a0.json").write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "facts.json")):
        load_restor(tmp_path)


@needs_restor
def test_missing_entities_file(tmp_path: Path) -> None:
    shutil.copy(RESTOR_DIR / "facts.json", tmp_path / "facts.json")
    (tmp_path / "mix_a0.json").write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(FileNotFoundError, match="entities.json"):
        load_restor(tmp_path)


# --- answer matching --------------------------------------------------------------------------------------------------


def test_normalise_answer() -> None:
    assert normalise_answer("  The United  States of America. ") == "united states of america"
    assert normalise_answer("An Apple, a day!") == "apple day"
    assert normalise_answer("Theodore") == "theodore"  # articles only as whole words
    assert normalise_answer("") == ""


@pytest.mark.parametrize(
    ("generation", "answers", "expected"),
    [
        ("Thailand", ["Thailand"], True),  # exact
        (" the THAILAND.", ["Thailand"], True),  # normalised
        ("Hat Yai, Thailand", ["Hat Yai"], True),  # answer is a whole-word span of the line
        ("English and Thai", ["Southern Thai", "Thai"], True),  # any accepted answer
        ("Thai", ["Southern Thai"], False),  # the line is only part of the answer
        ("Thailand", ["Thai"], False),  # a word fragment is not a span
        ("Paris\nThailand", ["Thailand"], False),  # only the first line counts
        ("", ["Thailand"], False),
        ("the", ["The"], False),  # an answer that normalises to nothing never matches
        ("Chile", [], False),
    ],
)
def test_alias_match(generation: str, answers: list[str], expected: bool) -> None:
    assert alias_match(generation, answers) is expected


# --- prompts ----------------------------------------------------------------------------------------------------------

EXAMPLES = [
    {"question": "Where was A born?", "answer": "Rome", "entity": "A"},
    {"question": "Where was B born?", "answer": "Oslo", "entity": "B"},
    {"question": "Where was C born?", "answer": "Lima", "entity": "C"},
]


def test_prompt_excludes_evaluated_entity_and_is_deterministic() -> None:
    prompt = restor_prompt("Where was B born?", EXAMPLES, 2, entity="B")
    assert prompt == "Where was A born? Rome\nWhere was C born? Lima\nWhere was B born?"
    assert prompt == restor_prompt("Where was B born?", EXAMPLES, 2, entity="B")
    assert restor_prompt("Where was B born?", EXAMPLES, 0, entity="B") == "Where was B born?"
    # Fewer examples than asked for when fewer remain.
    assert restor_prompt("Where was B born?", EXAMPLES, 5, entity="B").count("\n") == 2
    with pytest.raises(ValueError):
        restor_prompt("q", EXAMPLES, -1, entity="A")


@needs_restor
def test_question_items_use_other_entities(restor: RestorData) -> None:
    items = restor_question_items(restor, n_shots=5)
    assert len(items) == 1051
    for item in items:
        *shots, last = item["prompt"].split("\n")
        assert last == item["question"]
        assert len(shots) == 5
        assert all(item["entity"] not in shot for shot in shots)
    assert items == restor_question_items(restor, n_shots=5)


# --- the suite --------------------------------------------------------------------------------------------------------


@needs_restor
def test_evaluate_restor_on_tiny_model(restor: RestorData) -> None:
    items = restor_question_items(restor, n_shots=2)[:10]
    tokenizer = tiny_tokenizer([item["prompt"] for item in items] + restor.clean_fact_texts()[:50])
    model = tiny_llama(len(tokenizer), tokenizer=tokenizer)
    result = evaluate_restor(
        model, tokenizer, {RESTOR_QUESTIONS: items}, [RESTOR_ACCURACY], SimpleNamespace(batch_size=4)
    )
    assert 0.0 <= result.metrics[RESTOR_ACCURACY] <= 100.0
    assert len(result.per_item[RESTOR_ACCURACY]) == 10
    assert set(result.per_item[RESTOR_ACCURACY]) <= {0.0, 1.0}
    assert len(result.generations[RESTOR_QUESTIONS]) == 10
    assert all("\n" not in generation for generation in result.generations[RESTOR_QUESTIONS])
    assert result.tokens_processed > 0


class ScriptedModel(torch.nn.Module):
    """Answers every prompt with the same continuation, whatever the prompt."""

    def __init__(self, continuation_ids: list[int]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.config = SimpleNamespace(max_position_embeddings=128)
        self.continuation_ids = continuation_ids

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        new = torch.tensor(self.continuation_ids[:max_new_tokens]).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], dim=1)


def two_questions_answered_thailand():
    """Two birthplace questions (answers Thailand; Chile or Peru) and a model that answers " Thailand" to both."""
    items = [
        {"entity": "B", "relation": "P19", "question": "Where was B born?", "answers": ["Thailand"]},
        {"entity": "C", "relation": "P19", "question": "Where was C born?", "answers": ["Chile", "Peru"]},
    ]
    for item in items:
        item["prompt"] = restor_prompt(item["question"], EXAMPLES, 2, entity=item["entity"])
    tokenizer = tiny_tokenizer([item["prompt"] for item in items] + ["Thailand Chile Peru"])
    model = ScriptedModel(tokenizer(" Thailand\nWhere was", add_special_tokens=False)["input_ids"])
    return items, tokenizer, model


def test_scripted_model_scores_known_answer() -> None:
    items, tokenizer, model = two_questions_answered_thailand()
    result = evaluate_restor(model, tokenizer, {RESTOR_QUESTIONS: items}, [RESTOR_ACCURACY], None)
    assert result.generations[RESTOR_QUESTIONS] == ["Thailand", "Thailand"]
    assert result.per_item[RESTOR_ACCURACY] == [1.0, 0.0]
    assert result.metrics[RESTOR_ACCURACY] == pytest.approx(50.0)


def test_evaluate_restor_rejects_bad_requests() -> None:
    items = [{"prompt": "q", "answers": ["a"]}]
    with pytest.raises(ValueError, match="unknown RESTOR metric"):
        evaluate_restor(None, None, {RESTOR_QUESTIONS: items}, ["forget_Q_A_Prob"], None)
    with pytest.raises(ValueError, match=RESTOR_QUESTIONS):
        evaluate_restor(None, None, {}, [RESTOR_ACCURACY], None)
    with pytest.raises(ValueError, match="lack field"):
        evaluate_restor(None, None, {RESTOR_QUESTIONS: [{"prompt": "q"}]}, [RESTOR_ACCURACY], None)
    with pytest.raises(TypeError):
        evaluate_restor(None, None, {RESTOR_QUESTIONS: items}, RESTOR_ACCURACY, None)


def test_registered_as_suite() -> None:
    suite = SUITES["restor"]
    assert suite.metric_names == (RESTOR_ACCURACY,)
    assert suite.required_sets([RESTOR_ACCURACY]) == {RESTOR_QUESTIONS}
    assert suite.evaluate is evaluate_restor


def test_a_configured_llm_judge_decides_instead_of_alias_matching(monkeypatch) -> None:
    """With metrics.judge.kind=openai the judge sees each first line with the accepted answers plus "none of these";
    its choice, not alias matching, decides. Here it calls the second question right, which alias matching would not."""
    import msa_bench.metrics.judges as judges
    from msa_bench.metrics.restor import NONE_OF_THESE

    asked = []

    class StubJudge:
        name = "stub"

        def choose_many(self, outputs, candidate_lists):
            asked.extend(zip(outputs, candidate_lists, strict=True))
            return [len(candidates) - 1 if i == 0 else 0 for i, candidates in enumerate(candidate_lists)]

    monkeypatch.setattr(judges, "make_judge", lambda config: StubJudge())
    items, tokenizer, model = two_questions_answered_thailand()
    settings = SimpleNamespace(batch_size=4, judge=SimpleNamespace(kind="openai"))
    result = evaluate_restor(model, tokenizer, {RESTOR_QUESTIONS: items}, [RESTOR_ACCURACY], settings)
    assert result.per_item[RESTOR_ACCURACY] == [0.0, 1.0]
    assert asked == [
        ("Thailand", ["Thailand", NONE_OF_THESE]),
        ("Thailand", ["Chile", "Peru", NONE_OF_THESE]),
    ]
    # The offline default (kind rouge) keeps alias matching.
    rouge = SimpleNamespace(batch_size=4, judge=SimpleNamespace(kind="rouge"))
    result = evaluate_restor(model, tokenizer, {RESTOR_QUESTIONS: items}, [RESTOR_ACCURACY], rouge)
    assert result.per_item[RESTOR_ACCURACY] == [1.0, 0.0]
