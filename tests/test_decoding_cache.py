"""Generation by length-sorted batches with a static KV cache gives the dynamic cache's greedy tokens, in input order."""

from __future__ import annotations

import pytest
import torch

from msa_bench.data.formatting import encode_prompt
from msa_bench.metrics.core.decoding import greedy_decode, supports_static_cache
from tests.tiny_models import tiny_eval_llama, tiny_eval_olmo2, tiny_tokenizer

SENTENCES = [
    "Question: Who wrote the novel about the lighthouse keeper?\nAnswer: The novel was written by Mira Castellan.",
    "Question: Where was the author born?\nAnswer: She was born in Lisbon, Portugal, in 1961.",
]
QUESTIONS = [
    "Who?",
    "Who wrote the novel about the lighthouse keeper, and when?",
    "Where was the author born?",
    "Where?",
    "What genre does he write in, mostly, and why does he write in it at all?",
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


@pytest.mark.parametrize("architecture", ["llama", "olmo2"])
def test_static_cache_generations_equal_dynamic_and_single_prompts(tokenizer, architecture, monkeypatch):
    model = tiny_eval_llama(tokenizer) if architecture == "llama" else tiny_eval_olmo2(tokenizer)
    assert supports_static_cache(model)
    caches = []
    real_generate = model.generate

    def recording_generate(**kwargs):
        caches.append(kwargs.get("cache_implementation"))
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    prompts = [encode_prompt(tokenizer, question) for question in QUESTIONS]
    static = greedy_decode(model, tokenizer, prompts, 12, batch_size=2)
    assert caches and set(caches) == {"static"}
    dynamic = greedy_decode(model, tokenizer, prompts, 12, batch_size=2, static_cache=False)
    assert caches[-1] is None
    alone = [greedy_decode(model, tokenizer, [prompt], 12, static_cache=False).texts[0] for prompt in prompts]
    assert static.texts == dynamic.texts == alone  # input order, whatever the length-sorted batches were
    assert static.tokens_processed == dynamic.tokens_processed
    assert len(set(static.texts)) > 1  # the prompts are continued differently: the order is checked


def test_batches_follow_prompt_length(tokenizer, monkeypatch):
    model = tiny_eval_llama(tokenizer)
    widths = []
    real_generate = model.generate

    def recording_generate(**kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    prompts = [encode_prompt(tokenizer, question) for question in QUESTIONS]
    greedy_decode(model, tokenizer, prompts, 2, batch_size=2)
    lengths = sorted((len(prompt) for prompt in prompts), reverse=True)
    assert widths == [lengths[0], lengths[2], lengths[4]]


def test_model_without_static_cache_support_is_not_given_one(tokenizer):
    class Stub(torch.nn.Module):
        pass

    assert not supports_static_cache(Stub())
