"""The lm-eval suite on a tiny random Llama: local multiple-choice tasks offline, checked against our own scoring."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from msa_bench.config.schema import LmEvalConfig, MetricsConfig
from msa_bench.data.formatting import encode_qa, format_answer, format_prompt
from msa_bench.metrics import lm_eval_suite
from msa_bench.metrics.core.scoring import score_answers
from msa_bench.metrics.lm_eval_suite import (
    LmEvalTaskError,
    evaluate_lm_eval,
    make_lm,
    multiple_choice_docs,
    offline_unless_configured,
    required_sets,
)
from msa_bench.metrics.registry import SUITES
from tests.tiny_models import tiny_eval_llama, tiny_tokenizer

SENTENCES = [
    "Question: Who wrote the novel about the lighthouse keeper?\nAnswer: The novel was written by Mira Castellan.",
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris.",
    "Water boils at one hundred degrees. The Nile is the longest river in Africa.",
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_eval_llama(tokenizer)


def fact(index: int, n_perturbed: int) -> dict:
    return {
        "question": f"What is fact number {index}?" + " Be brief." * (index % 2),
        "answer": f"Fact {index} is that water boils at {index} degrees.",
        "perturbed_answer": [f"Fact {index} is the Nile, {j} times." for j in range(n_perturbed)],
    }


@pytest.fixture(scope="module")
def eval_sets() -> dict[str, list[dict]]:
    return {
        "world_facts": [fact(index, n_perturbed=2 + index % 2) for index in range(5)],
        "real_authors": [fact(index, n_perturbed=3) for index in range(10, 14)],
    }


def settings(**lm_eval) -> MetricsConfig:
    return MetricsConfig(name="lm_eval", names=["lm_eval"], lm_eval=LmEvalConfig(batch_size=4, **lm_eval))


@pytest.fixture(scope="module")
def evaluated(model, tokenizer, eval_sets):
    """One run of the suite, with the model in training mode and the RNGs in a known state beforehand."""
    model.train()
    torch.manual_seed(7)
    random.seed(7)
    try:
        result = evaluate_lm_eval(model, tokenizer, eval_sets, ["lm_eval"], settings())
        after = {"training": model.training, "torch": torch.rand(1).item(), "python": random.random()}
    finally:
        model.eval()
    return result, after


def test_local_tasks_run_offline(evaluated, eval_sets):
    result, _ = evaluated
    accuracies = []
    for task, eval_set in (("msa_world_facts_mc", "world_facts"), ("msa_real_authors_mc", "real_authors")):
        acc = result.metrics[f"lm_eval/{task}/acc"]
        assert 0.0 <= acc <= 1.0
        assert 0.0 <= result.metrics[f"lm_eval/{task}/acc_norm"] <= 1.0
        per_item = result.per_item[f"lm_eval/{task}/acc"]
        assert len(per_item) == len(eval_sets[eval_set])
        assert acc == pytest.approx(np.mean(per_item))
        choices, targets = (
            result.per_item[f"lm_eval/{task}/choice"],
            result.per_item[f"lm_eval/{task}/target"],
        )
        assert per_item == [float(c == t) for c, t in zip(choices, targets, strict=True)]
        accuracies.append(acc)
    assert result.metrics["lm_eval"] == pytest.approx(np.mean(accuracies))
    assert result.tokens_processed > 0


def test_the_caller_state_is_left_alone(evaluated):
    _, after = evaluated
    assert after["training"], "the model's training mode should be restored"
    torch.manual_seed(7)
    random.seed(7)
    assert after["torch"] == torch.rand(1).item() and after["python"] == random.random()


def our_answer_logprobs(model, tokenizer, question: str, answer: str) -> np.ndarray:
    """Per-token log-probabilities of the answer tokens and the closing eos, with msa_bench's tokenization."""
    encoded = encode_qa(tokenizer, question, answer)
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    token_logprobs = logprobs.gather(-1, ids[0, 1:, None])[:, 0]
    scored = torch.tensor(encoded.labels[1:]) != -100
    return token_logprobs[scored].double().numpy()


def test_lm_eval_agrees_with_our_scoring(evaluated, model, tokenizer, eval_sets):
    """lm-eval's loglikelihood of " answer" is ours without the eos term encode_qa adds; same choices per item."""
    from lm_eval.api.instance import Instance

    result, _ = evaluated
    lm = make_lm(model, tokenizer, batch_size=4)
    for task, eval_set in (("msa_world_facts_mc", "world_facts"), ("msa_real_authors_mc", "real_authors")):
        items = eval_sets[eval_set]
        docs = multiple_choice_docs(items, eval_set)
        pairs = [
            (item["question"], choice)
            for item, doc in zip(items, docs, strict=True)
            for choice in doc["choices"]
        ]
        questions, answers = zip(*pairs, strict=True)
        # Our scoring code: summed NLL over answer + eos = mean NLL x scored tokens.
        scores = score_answers(model, tokenizer, questions, answers, batch_size=3)
        with_eos = -scores.nlls * scores.n_answer_tokens
        token_logprobs = [our_answer_logprobs(model, tokenizer, q, a) for q, a in pairs]
        np.testing.assert_allclose(with_eos, [lp.sum() for lp in token_logprobs], atol=1e-4)
        without_eos = np.array([lp[:-1].sum() for lp in token_logprobs])

        requests = [
            Instance("loglikelihood", doc={}, arguments=(format_prompt(q), format_answer(a)), idx=0)
            for q, a in pairs
        ]
        theirs = np.array(
            [loglikelihood for loglikelihood, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        )
        np.testing.assert_allclose(theirs, without_eos, atol=1e-4)

        ours_choices, start = [], 0
        for doc in docs:
            lls = without_eos[start : start + len(doc["choices"])]
            ours_choices.append(float(np.argmax(lls)))  # the first of ties, as lm-eval
            start += len(doc["choices"])
        assert result.per_item[f"lm_eval/{task}/choice"] == ours_choices
        assert result.per_item[f"lm_eval/{task}/target"] == [float(doc["label"]) for doc in docs]


def test_multiple_choice_docs_rotate_the_true_answer(eval_sets):
    docs = multiple_choice_docs(eval_sets["real_authors"], "real_authors")
    assert [doc["label"] for doc in docs] == [0, 1, 2, 3]
    for doc, item in zip(docs, eval_sets["real_authors"], strict=True):
        assert doc["prompt"] == format_prompt(item["question"])
        assert doc["choices"][doc["label"]] == item["answer"]
        assert sorted(doc["choices"]) == sorted([item["answer"], *item["perturbed_answer"]])
    with pytest.raises(ValueError, match="non-empty list"):
        multiple_choice_docs([{"question": "q", "answer": "a", "perturbed_answer": []}], "world_facts")


def test_unknown_task_is_a_clear_error(model, tokenizer, eval_sets, monkeypatch):
    from lm_eval.tasks import TaskManager

    # The real fallback indexes lm-eval's ~14k built-in tasks (~13 s); the test stands in an empty index.
    monkeypatch.setattr(
        lm_eval_suite,
        "default_task_manager",
        lambda path: TaskManager(include_path=path, include_defaults=False),
    )
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\) \['no_such_task'\].*msa_world_facts_mc"):
        evaluate_lm_eval(
            model, tokenizer, eval_sets, ["lm_eval"], settings(tasks=["msa_world_facts_mc", "no_such_task"])
        )


def test_unreachable_dataset_names_the_task(model, tokenizer, eval_sets, tmp_path):
    (tmp_path / "broken.yaml").write_text(
        "task: broken_task\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'missing.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: c\ndoc_to_target: 0\n"
    )
    with pytest.raises(LmEvalTaskError, match="'broken_task' could not be loaded"):
        evaluate_lm_eval(
            model,
            tokenizer,
            eval_sets,
            ["lm_eval"],
            settings(tasks=["broken_task"], include_path=str(tmp_path)),
        )


def test_missing_eval_set_and_bad_metric_names(model, tokenizer, eval_sets):
    with pytest.raises(ValueError, match="real_authors"):
        evaluate_lm_eval(model, tokenizer, {"world_facts": eval_sets["world_facts"]}, ["lm_eval"], settings())
    with pytest.raises(ValueError, match="provides only the metric 'lm_eval'"):
        evaluate_lm_eval(model, tokenizer, eval_sets, ["lm_eval/msa_world_facts_mc/acc"], settings())


def test_registration_and_required_sets():
    suite = SUITES["lm_eval"]
    assert suite.metric_names == ("lm_eval",)
    assert suite.required_sets(["lm_eval"]) == {"world_facts", "real_authors"}
    assert required_sets(["lm_eval"], settings(tasks=["msa_world_facts_mc", "arc_easy"])) == {"world_facts"}


def test_offline_unless_configured(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    for module, attribute in (
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ):
        monkeypatch.setattr(module, attribute, getattr(module, attribute))  # restored after the test
    for name in lm_eval_suite.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with offline_unless_configured():
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
        assert datasets.config.HF_DATASETS_OFFLINE is True
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ
    assert datasets.config.HF_DATASETS_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's choice is kept
    with offline_unless_configured():
        assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ
