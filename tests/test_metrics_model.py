"""Scoring, generation and the TOFU evaluator on a tiny random Llama with a tiny byte-level BPE tokenizer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import LlamaForCausalLM

from msa_bench.data.formatting import encode_prompt, encode_qa
from msa_bench.errors import MetricUnavailableError
from msa_bench.metrics import (
    TOFU_METRICS,
    answer_nlls,
    evaluate_tofu,
    generate_answers,
    greedy_generate,
    score_answers,
)
from msa_bench.metrics import tofu_suite as suite_module
from msa_bench.metrics.registry import CROSS_MODEL_METRICS
from msa_bench.metrics.tofu import MODEL_UTILITY_COMPONENTS
from tests.tiny_models import tiny_eval_llama, tiny_tokenizer

SENTENCES = [
    "Question: Who wrote the novel about the lighthouse keeper?\nAnswer: The novel was written by Mira Castellan.",
    "Question: Where was the author born?\nAnswer: She was born in Lisbon, Portugal, in 1961.",
    "Question: What genre does he write in?\nAnswer: He writes mostly science fiction and some poetry.",
    "The capital of France is Paris. Water boils at one hundred degrees.",
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    return tiny_eval_llama(tokenizer)


def make_item(index: int, n_perturbed: int, with_paraphrase: bool = True) -> dict:
    item = {
        "question": f"Who wrote book number {index}?" + " Please answer." * (index % 3),
        "answer": f"Book {index} was written by Mira Castellan" + " in Lisbon" * (index % 2) + ".",
        "perturbed_answer": [f"Book {index} was written by author {j}." for j in range(n_perturbed)],
    }
    if with_paraphrase:
        item["paraphrased_answer"] = f"Mira Castellan is the author of book {index}."
    return item


@pytest.fixture(scope="module")
def eval_sets() -> dict[str, list[dict]]:
    return {
        "forget": [make_item(index, n_perturbed=2 + index % 2) for index in range(4)],
        "retain": [make_item(index, n_perturbed=3) for index in range(10, 13)],
        "real_authors": [make_item(index, n_perturbed=2, with_paraphrase=False) for index in range(20, 22)],
        "world_facts": [make_item(index, n_perturbed=3, with_paraphrase=False) for index in range(30, 32)],
        "holdout": [make_item(index, n_perturbed=2) for index in range(40, 43)],
    }


# --- scoring ---------------------------------------------------------------------------------------------------------


def test_batched_nll_equals_per_item_nll(model, tokenizer, eval_sets):
    items = eval_sets["forget"] + eval_sets["retain"]
    questions = [item["question"] for item in items]
    answers = [item["answer"] for item in items]
    batched = score_answers(model, tokenizer, questions, answers, batch_size=3)
    one_by_one = answer_nlls(model, tokenizer, questions, answers, batch_size=1)
    np.testing.assert_allclose(batched.nlls, one_by_one, atol=1e-5)

    # Independent check: the model's own loss with labels is the mean NLL over the same answer tokens.
    for index, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        encoded = encode_qa(tokenizer, question, answer)
        with torch.no_grad():
            loss = model(
                input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])
            ).loss
        assert batched.nlls[index] == pytest.approx(loss.item(), abs=1e-5)
        assert batched.n_answer_tokens[index] == encoded.n_answer_tokens
    assert batched.tokens_processed == sum(
        len(encode_qa(tokenizer, q, a).input_ids) for q, a in zip(questions, answers, strict=True)
    )


def test_scoring_restores_training_mode(model, tokenizer):
    model.train()
    try:
        answer_nlls(model, tokenizer, ["Who?"], ["Me."])
        assert model.training
    finally:
        model.eval()


# --- generation ------------------------------------------------------------------------------------------------------


def test_batched_generation_equals_unbatched(model, tokenizer, eval_sets):
    questions = [item["question"] for item in eval_sets["forget"] + eval_sets["real_authors"]]
    batched = greedy_generate(model, tokenizer, questions, max_new_tokens=8, batch_size=4)
    one_by_one = greedy_generate(model, tokenizer, questions, max_new_tokens=8, batch_size=1)
    assert batched == one_by_one
    assert len(batched) == len(questions) and all(isinstance(text, str) for text in batched)
    assert any(batched), "the random model should generate some text"


class ScriptedGenerator(torch.nn.Module):
    """Stands in for a model: `generate` appends a fixed continuation, with padding after eos."""

    def __init__(self, continuation: list[int]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.continuation = continuation

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        assert kwargs["do_sample"] is False
        # Left padding: every prompt ends in the last column.
        assert bool(attention_mask[:, -1].all())
        tail = torch.tensor(self.continuation).expand(input_ids.size(0), -1)
        return torch.cat([input_ids, tail], dim=1)


def test_generation_stops_at_eos_and_decodes_only_new_tokens(tokenizer):
    word_ids = tokenizer(" Lisbon", add_special_tokens=False)["input_ids"]
    continuation = (
        word_ids + [tokenizer.eos_token_id] + tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    )
    continuation += [tokenizer.pad_token_id]
    questions = ["Where?", "Where was the author born, exactly?"]
    generated = generate_answers(ScriptedGenerator(continuation), tokenizer, questions, batch_size=2)
    assert generated.texts == ["Lisbon", "Lisbon"]
    prompt_tokens = sum(len(encode_prompt(tokenizer, question)) for question in questions)
    assert generated.tokens_processed == prompt_tokens + 2 * (len(word_ids) + 1)


# --- the evaluator ---------------------------------------------------------------------------------------------------


def check_ranges(metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        assert math.isfinite(value), name
        assert 0.0 <= value <= 1.0, (name, value)


def test_evaluate_tofu_computes_all_metrics(model, tokenizer, eval_sets, monkeypatch):
    scoring_calls: list[int] = []
    real_score_answers = suite_module.score_answers

    def counting_score_answers(*args, **kwargs):
        scoring_calls.append(len(args[2]))
        return real_score_answers(*args, **kwargs)

    monkeypatch.setattr(suite_module, "score_answers", counting_score_answers)
    # forget_fluency reads a classifier, stood in for by a constant here (tests/test_fluency.py tests the real one).
    result = evaluate_tofu(
        model,
        tokenizer,
        eval_sets,
        list(TOFU_METRICS),
        batch_size=4,
        max_new_tokens=6,
        fluency_scorer=lambda texts: np.full(len(texts), 0.75),
    )

    assert set(result.metrics) == set(TOFU_METRICS)
    assert result.skipped == {}
    check_ranges(result.metrics)
    # At most one scoring call per eval set, whatever number of metrics read its NLLs; the holdout set needs only
    # the answer-token pass of the attacks, which also gives the forget answer NLLs.
    assert len(scoring_calls) == 4
    forget = eval_sets["forget"]
    np.testing.assert_allclose(
        result.per_item["forget_Q_A_Prob"],
        np.exp(
            -answer_nlls(model, tokenizer, [i["question"] for i in forget], [i["answer"] for i in forget])
        ),
        rtol=1e-5,
    )

    assert result.metrics["model_utility"] == pytest.approx(
        stats.hmean([result.metrics[name] for name in MODEL_UTILITY_COMPONENTS])
    )
    forget_tr = result.per_item["forget_truth_ratio"]
    assert len(forget_tr) == len(eval_sets["forget"])
    reference = {"per_item": {"forget_truth_ratio": [0.3, 0.6, 0.9, 1.2, 2.0]}}
    forget_quality = CROSS_MODEL_METRICS["forget_quality"].compute(result.to_dict(), reference, None)
    assert forget_quality == pytest.approx(stats.ks_2samp(forget_tr, [0.3, 0.6, 0.9, 1.2, 2.0]).pvalue)
    assert result.metrics["forget_truth_ratio"] == pytest.approx(
        np.mean(np.minimum(forget_tr, 1 / np.array(forget_tr)))
    )
    for eval_set, prefix in (
        ("forget", "forget"),
        ("retain", "retain"),
        ("real_authors", "ra"),
        ("world_facts", "wf"),
    ):
        n_items = len(eval_sets[eval_set])
        assert len(result.generations[eval_set]) == n_items
        for key in ("Q_A_ROUGE", "Q_A_ROUGE1_recall", "Q_A_ROUGE_L_F1"):
            assert len(result.per_item[f"{prefix}_{key}"]) == n_items
    assert result.tokens_processed > 0
    json.dumps(result.to_dict())

    # ra/wf truth ratios compare the answer (they have no paraphrase) with the perturbed answers.
    real_authors = eval_sets["real_authors"]
    correct = answer_nlls(
        model, tokenizer, [i["question"] for i in real_authors], [i["answer"] for i in real_authors]
    )
    wrong = [
        answer_nlls(
            model, tokenizer, [item["question"]] * len(item["perturbed_answer"]), item["perturbed_answer"]
        )
        for item in real_authors
    ]
    expected_tr = [math.exp(c - w.mean()) for c, w in zip(correct, wrong, strict=True)]
    np.testing.assert_allclose(result.per_item["ra_Truth_Ratio"], expected_tr, rtol=1e-5)


def test_forget_quality_against_own_truth_ratios_is_one(model, tokenizer, eval_sets):
    forget_only = {"forget": eval_sets["forget"]}
    own = evaluate_tofu(model, tokenizer, forget_only, ["forget_truth_ratio"], batch_size=4).to_dict()
    forget_quality = CROSS_MODEL_METRICS["forget_quality"].compute(own, own, None)
    assert forget_quality == pytest.approx(1.0)
    # Only NLLs were needed: no generation ran.
    assert own["generations"] == {}


def test_forget_quality_names_what_an_evaluation_lacks(model, tokenizer, eval_sets):
    without_ratios = evaluate_tofu(
        model, tokenizer, {"forget": eval_sets["forget"]}, ["forget_Q_A_Prob"], batch_size=4
    ).to_dict()
    with pytest.raises(MetricUnavailableError, match="forget_truth_ratio"):
        CROSS_MODEL_METRICS["forget_quality"].compute(without_ratios, without_ratios, None)


def test_missing_eval_set_is_named(model, tokenizer, eval_sets):
    without_world_facts = {name: items for name, items in eval_sets.items() if name != "world_facts"}
    with pytest.raises(ValueError, match="world_facts"):
        evaluate_tofu(model, tokenizer, without_world_facts, ["model_utility"])


def test_missing_field_is_named(model, tokenizer, eval_sets):
    no_paraphrase = [
        {k: v for k, v in item.items() if k != "paraphrased_answer"} for item in eval_sets["forget"]
    ]
    with pytest.raises(ValueError, match="paraphrased_answer"):
        evaluate_tofu(model, tokenizer, {"forget": no_paraphrase}, ["forget_truth_ratio"])


def test_unknown_metric_is_rejected_before_any_work(model, tokenizer):
    with pytest.raises(ValueError, match="forget_rouge"):
        evaluate_tofu(model, tokenizer, {}, ["forget_rouge"])
