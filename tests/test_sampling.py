"""Sampled decoding for the generation metrics (metrics.sampling, issue 14's leak@k): one sample at temperature 0 is
the greedy evaluation, k samples are reproducible from the seed and each item's ROUGE is the maximum over them, the
evaluation cache key is unchanged at the default, and bad settings are refused naming their key."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from msa_bench.config.schema import MetricsConfig, MuseMetricsConfig, SamplingConfig
from msa_bench.data.formatting import encode_prompt
from msa_bench.data.muse import KNOWMEM_FORGET, KNOWMEM_FORGET_ICL, VERBMEM_FORGET, muse_sets_from_tofu_items
from msa_bench.errors import ConfigError
from msa_bench.metrics import muse, tofu
from msa_bench.metrics.core import decoding
from msa_bench.metrics.core.decoding import generate_answers, greedy_decode, sample_answers, sampled_decode
from msa_bench.metrics.judged import compute_judged_accuracy
from msa_bench.metrics.tofu_suite import evaluate_tofu
from msa_bench.pipeline.evaluation import _settings_spec
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.conftest import smoke_config_problems as problems_of
from tests.tiny_models import tiny_eval_llama, tiny_tokenizer

SENTENCES = [
    "Question: Who wrote the novel about the lighthouse keeper?\nAnswer: The novel was written by Mira Castellan.",
    "Question: Where was the author born?\nAnswer: She was born in Lisbon, Portugal, in 1961.",
    "The capital of France is Paris. Rome and Madrid are capitals too. The city of Paris is old.",
]
BATCH_SIZE = 3
MAX_NEW_TOKENS = 6
SAMPLED = SamplingConfig(num_samples=4, temperature=1.0, top_p=1.0, seed=3)
TOFU_ROUGE = "forget_Q_A_ROUGE"
MUSE_ROUGE = (muse.VERBMEM_ROUGE, muse.FORGET_KNOWMEM_ROUGE)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_eval_llama(tokenizer)


def qa_item(subject: str, index: int) -> dict:
    return {
        "question": f"Where was {subject} born in {index}?" + " Tell me." * (index % 2),
        "answer": f"{subject} was born in Lisbon {index}.",
        "perturbed_answer": [f"{subject} was born in Rome {index}."],
        "paraphrased_answer": f"Lisbon {index} is where {subject} was born.",
    }


@pytest.fixture(scope="module")
def forget_items() -> list[dict]:
    return [qa_item("Mira", index) for index in range(5)]


@pytest.fixture(scope="module")
def muse_sets() -> dict[str, list[dict]]:
    return muse_sets_from_tofu_items(
        forget_items=[qa_item("Mira", i) for i in range(4)],
        retain_items=[qa_item("Ann", i) for i in range(3)],
        holdout_items=[qa_item("Bob", i) for i in range(3)],
        icl_items=[qa_item("Cy", i) for i in range(2)],
    )


def tofu_rouge(model, tokenizer, forget_items, sampling):
    return evaluate_tofu(
        model,
        tokenizer,
        {"forget": forget_items},
        [TOFU_ROUGE],
        batch_size=BATCH_SIZE,
        max_new_tokens=MAX_NEW_TOKENS,
        sampling=sampling,
    )


def muse_settings(sampling: SamplingConfig | None = None) -> MetricsConfig:
    return MetricsConfig(
        name="muse",
        names=list(MUSE_ROUGE),
        batch_size=BATCH_SIZE,
        muse=MuseMetricsConfig(verbmem_max_new_tokens=MAX_NEW_TOKENS, knowmem_max_new_tokens=5, icl_shots=2),
        sampling=sampling or SamplingConfig(),
    )


def muse_prompts(model, tokenizer, muse_sets, settings: MetricsConfig) -> dict[str, list[list[int]]]:
    """The verbmem and knowmem prompts as the suite builds them (short texts: nothing is truncated)."""
    knowmem_budget = muse.model_context_length(model, tokenizer) - settings.muse.knowmem_max_new_tokens
    verbmem = [
        [tokenizer.bos_token_id] + tokenizer(item["prompt"], add_special_tokens=False)["input_ids"]
        for item in muse_sets[VERBMEM_FORGET]
    ]
    shots = muse_sets[KNOWMEM_FORGET_ICL][: settings.muse.icl_shots]
    knowmem = [
        muse.knowmem_prompt_ids(tokenizer, shots, item["question"], knowmem_budget)[0]
        for item in muse_sets[KNOWMEM_FORGET]
    ]
    return {VERBMEM_FORGET: verbmem, KNOWMEM_FORGET: knowmem}


def muse_references(muse_sets) -> dict[str, list[str]]:
    return {
        VERBMEM_FORGET: [item["gt"].strip() for item in muse_sets[VERBMEM_FORGET]],
        KNOWMEM_FORGET: [item["answer"].strip() for item in muse_sets[KNOWMEM_FORGET]],
    }


# --- one sample at temperature 0 is the greedy evaluation (the test) ---------------------------------------


@pytest.mark.parametrize(
    "sampling",
    [SamplingConfig(), SamplingConfig(num_samples=1, temperature=0.0, top_p=0.5, seed=9)],
    ids=["default", "greedy-with-other-top_p-and-seed"],
)
def test_tofu_rouge_with_one_greedy_sample_equals_the_greedy_evaluation(
    model, tokenizer, forget_items, sampling
):
    greedy = generate_answers(
        model,
        tokenizer,
        [item["question"] for item in forget_items],
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=BATCH_SIZE,
    )
    expected = tofu.rouge_scores(greedy.texts, [item["answer"] for item in forget_items])["rougeL_recall"]
    result = tofu_rouge(model, tokenizer, forget_items, sampling)
    assert result.generations["forget"] == greedy.texts
    assert result.per_item[TOFU_ROUGE] == expected.tolist()
    assert result.metrics[TOFU_ROUGE] == float(expected.mean())
    assert result.tokens_processed == greedy.tokens_processed
    unsampled = tofu_rouge(model, tokenizer, forget_items, None)
    assert (result.metrics, result.per_item, result.generations) == (
        unsampled.metrics,
        unsampled.per_item,
        unsampled.generations,
    )


def test_muse_rouge_with_one_greedy_sample_equals_the_greedy_evaluation(model, tokenizer, muse_sets):
    settings = muse_settings()
    result = muse.evaluate_muse(model, tokenizer, muse_sets, list(MUSE_ROUGE), settings)
    prompts, references = muse_prompts(model, tokenizer, muse_sets, settings), muse_references(muse_sets)
    greedy = {
        VERBMEM_FORGET: greedy_decode(model, tokenizer, prompts[VERBMEM_FORGET], MAX_NEW_TOKENS, BATCH_SIZE),
        KNOWMEM_FORGET: greedy_decode(
            model, tokenizer, prompts[KNOWMEM_FORGET], 5, BATCH_SIZE, muse.KNOWMEM_STOP_STRINGS
        ),
    }
    for metric, eval_set, prefix in (
        (muse.VERBMEM_ROUGE, VERBMEM_FORGET, "forget_verbmem"),
        (muse.FORGET_KNOWMEM_ROUGE, KNOWMEM_FORGET, "forget_knowmem"),
    ):
        scores = tofu.rouge_scores(greedy[eval_set].texts, references[eval_set])
        assert result.generations[eval_set] == greedy[eval_set].texts
        assert result.per_item[metric] == scores["rougeL_f1"].tolist()
        assert result.metrics[metric] == float(scores["rougeL_f1"].mean())
        assert result.per_item[f"{prefix}_rougeL_recall"] == scores["rougeL_recall"].tolist()
        assert result.per_item[f"{prefix}_rouge1_recall"] == scores["rouge1_recall"].tolist()
    assert result.tokens_processed == sum(generated.tokens_processed for generated in greedy.values())


def test_greedy_sampling_is_the_greedy_decoders_own_call(model, tokenizer, monkeypatch):
    calls = []
    real_greedy_decode = decoding.greedy_decode

    def recording_greedy_decode(*args, **kwargs):
        calls.append((args, kwargs))
        return real_greedy_decode(*args, **kwargs)

    monkeypatch.setattr(decoding, "greedy_decode", recording_greedy_decode)
    prompts = [[tokenizer.bos_token_id, 5, 6], [tokenizer.bos_token_id, 7]]
    sampled = sampled_decode(
        model, tokenizer, prompts, 4, SamplingConfig(), batch_size=2, stop_strings=("x",)
    )
    assert len(calls) == 1
    assert calls[0][0][2:6] == (prompts, 4, 2, ("x",))
    assert sampled.samples == [
        [text] for text in real_greedy_decode(model, tokenizer, prompts, 4, 2, ("x",)).texts
    ]


# --- k samples at temperature 1 -------------------------------------------------------------------------------------


def test_tofu_rouge_over_k_samples_is_reproducible_and_the_per_item_maximum(model, tokenizer, forget_items):
    rng_before = torch.get_rng_state()
    first = tofu_rouge(model, tokenizer, forget_items, SAMPLED)
    assert torch.equal(torch.get_rng_state(), rng_before), (
        "sampling must leave the caller's random state alone"
    )
    again = tofu_rouge(model, tokenizer, forget_items, SAMPLED)
    assert (first.per_item, first.generations, first.tokens_processed) == (
        again.per_item,
        again.generations,
        again.tokens_processed,
    )

    # The per-sample values, scored here one sample at a time.
    questions = [item["question"] for item in forget_items]
    references = [item["answer"] for item in forget_items]
    samples = sample_answers(
        model, tokenizer, questions, SAMPLED, max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE
    ).samples
    assert all(len(item_samples) == SAMPLED.num_samples for item_samples in samples)
    assert any(len(set(item_samples)) > 1 for item_samples in samples), (
        "temperature 1 should vary the answers"
    )
    recall_by_sample = np.stack(
        [
            tofu.rouge_scores([item_samples[index] for item_samples in samples], references)["rougeL_recall"]
            for index in range(SAMPLED.num_samples)
        ],
        axis=1,
    )
    assert first.per_item[TOFU_ROUGE] == recall_by_sample.max(axis=1).tolist()
    assert first.metrics[TOFU_ROUGE] == pytest.approx(recall_by_sample.max(axis=1).mean(), abs=0)
    kept = [
        item_samples[int(np.argmax(row))] for item_samples, row in zip(samples, recall_by_sample, strict=True)
    ]
    assert first.generations["forget"] == kept

    other_seed = tofu_rouge(model, tokenizer, forget_items, replace(SAMPLED, seed=4))
    other_samples = sample_answers(
        model,
        tokenizer,
        questions,
        replace(SAMPLED, seed=4),
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=BATCH_SIZE,
    ).samples
    assert other_samples != samples
    assert other_seed.generations["forget"] == [
        item_samples[
            int(np.argmax(tofu.rouge_scores(item_samples, [reference] * len(item_samples))["rougeL_recall"]))
        ]
        for item_samples, reference in zip(other_samples, references, strict=True)
    ]


def test_a_samples_text_does_not_depend_on_how_many_are_drawn(model, tokenizer, forget_items):
    questions = [item["question"] for item in forget_items]
    four = sample_answers(model, tokenizer, questions, SAMPLED, MAX_NEW_TOKENS, BATCH_SIZE)
    two = sample_answers(
        model, tokenizer, questions, replace(SAMPLED, num_samples=2), MAX_NEW_TOKENS, BATCH_SIZE
    )
    assert two.samples == [item_samples[:2] for item_samples in four.samples]
    prompt_tokens = sum(len(encode_prompt(tokenizer, question)) for question in questions)
    assert (
        4 * prompt_tokens
        < four.tokens_processed
        <= 4 * (prompt_tokens + len(questions) * (MAX_NEW_TOKENS + 1))
    )


def test_muse_rouge_over_k_samples_is_the_per_item_maximum(model, tokenizer, muse_sets):
    settings = muse_settings(SAMPLED)
    result = muse.evaluate_muse(model, tokenizer, muse_sets, list(MUSE_ROUGE), settings)
    again = muse.evaluate_muse(model, tokenizer, muse_sets, list(MUSE_ROUGE), settings)
    assert (result.per_item, result.generations) == (again.per_item, again.generations)
    prompts, references = muse_prompts(model, tokenizer, muse_sets, settings), muse_references(muse_sets)
    for metric, eval_set, prefix, max_new, stops in (
        (muse.VERBMEM_ROUGE, VERBMEM_FORGET, "forget_verbmem", MAX_NEW_TOKENS, ()),
        (muse.FORGET_KNOWMEM_ROUGE, KNOWMEM_FORGET, "forget_knowmem", 5, muse.KNOWMEM_STOP_STRINGS),
    ):
        samples = sampled_decode(
            model, tokenizer, prompts[eval_set], max_new, SAMPLED, BATCH_SIZE, stops
        ).samples
        by_sample = [
            tofu.rouge_scores([item_samples[index] for item_samples in samples], references[eval_set])
            for index in range(SAMPLED.num_samples)
        ]
        for key, variant in ((metric, "rougeL_f1"), (f"{prefix}_rougeL_recall", "rougeL_recall")):
            expected = np.max([scores[variant] for scores in by_sample], axis=0)
            assert result.per_item[key] == expected.tolist(), key
        recall = np.stack([scores["rougeL_recall"] for scores in by_sample], axis=1)
        assert result.generations[eval_set] == [
            item_samples[int(np.argmax(row))] for item_samples, row in zip(samples, recall, strict=True)
        ]


def test_best_of_samples_keeps_every_variants_maximum_and_the_best_recall_sample():
    long_answer, short_answer = "the cat sat on the big red mat", "the cat"
    scores, kept = tofu.best_of_samples_rouge(
        [["a dog", long_answer, short_answer], ["nothing here", "the answer is blue", "the answer is blue"]],
        ["the cat sat", "the answer is blue"],
    )
    # The long answer recalls every reference word (and is kept); the short one has the higher F1, which is the
    # F1 reported: each variant is its own maximum.
    assert kept == [long_answer, "the answer is blue"]
    assert scores["rougeL_recall"].tolist() == [1.0, 1.0]
    long_f1, short_f1 = tofu.rouge_scores([long_answer, short_answer], ["the cat sat"] * 2)["rougeL_f1"]
    assert short_f1 > long_f1
    assert scores["rougeL_f1"][0] == short_f1
    with pytest.raises(ValueError, match="same number"):
        tofu.best_of_samples_rouge([["a"], ["b", "c"]], ["a", "b"])


# --- the evaluation cache key ---------------------------------------------------------------------------------------


def test_the_evaluation_cache_key_is_unchanged_at_the_default_sampling():
    settings = MetricsConfig(name="tofu", names=[TOFU_ROUGE])
    # The settings part of every evaluation key before metrics.sampling existed.
    assert _settings_spec(settings) == {
        "max_new_tokens": 32,
        "mia_k": 0.4,
        "lm_eval": {
            "tasks": ["msa_world_facts_mc", "msa_real_authors_mc"],
            "include_path": None,
            "limit": None,
            "batch_size": 32,
        },
        "muse": {
            "data_dir": None,
            "verbmem_max_new_tokens": 128,
            "knowmem_max_new_tokens": 32,
            "icl_shots": 10,
        },
    }
    assert _settings_spec(replace(settings, batch_size=8)) == _settings_spec(settings)


def test_sampling_enters_the_cache_key_with_the_batch_size():
    sampled = MetricsConfig(name="tofu", names=[TOFU_ROUGE], sampling=SAMPLED)
    spec = _settings_spec(sampled)
    assert spec["sampling"] == {"num_samples": 4, "temperature": 1.0, "top_p": 1.0, "seed": 3}
    assert spec["batch_size"] == 64
    assert _settings_spec(replace(sampled, batch_size=8)) != spec
    assert _settings_spec(replace(sampled, sampling=replace(SAMPLED, seed=4))) != spec


# --- bad settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["metrics.sampling.num_samples=0"], "metrics.sampling.num_samples=0 must be an integer >= 1"),
        (["metrics.sampling.temperature=-0.5"], "metrics.sampling.temperature=-0.5 must be >= 0"),
        (["metrics.sampling.top_p=0"], "metrics.sampling.top_p=0.0 must be in (0, 1]"),
        (["metrics.sampling.top_p=1.5"], "metrics.sampling.top_p=1.5 must be in (0, 1]"),
        (["metrics.sampling.seed=-1"], "metrics.sampling.seed=-1 is out of range"),
        (
            ["metrics.sampling.num_samples=4"],
            "metrics.sampling.num_samples=4 with metrics.sampling.temperature=0 decodes the same greedy answer 4 "
            "times; set metrics.sampling.temperature > 0",
        ),
        (
            ["metrics=judged", "metrics.sampling.num_samples=4", "metrics.sampling.temperature=1"],
            "metrics.names has acc_forget, acc_recover, acc_retain with metrics.sampling.temperature=1.0 "
            "(num_samples=4): the judged accuracies are defined on the greedy answer",
        ),
        (
            ["metrics=restor", "metrics.sampling.num_samples=2", "metrics.sampling.temperature=1"],
            "metrics.names has restor_accuracy with metrics.sampling.temperature=1.0: it decodes greedily and "
            "does not read metrics.sampling",
        ),
    ],
)
def test_bad_sampling_settings_are_refused_naming_the_key(overrides, expected):
    (problem,) = problems_of(overrides)
    assert problem.startswith(expected), problem


def test_sampling_settings_in_range_are_accepted():
    config = validate_config(
        compose_config(
            ["experiment=smoke", "metrics.sampling.num_samples=8", "metrics.sampling.temperature=0.7"]
        )
    )
    assert config.metrics.sampling == SamplingConfig(num_samples=8, temperature=0.7)
    assert validate_config(compose_config(["experiment=smoke"])).metrics.sampling == SamplingConfig()


def test_a_judged_accuracy_under_sampling_is_refused_when_computed():
    settings = MetricsConfig(name="judged", names=["acc_forget"], sampling=SAMPLED)
    with pytest.raises(ConfigError, match="judged accuracies are defined on the greedy answer"):
        compute_judged_accuracy("acc_forget", {}, {}, settings, eval_sets={})
