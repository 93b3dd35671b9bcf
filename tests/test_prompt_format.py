"""Prompt formats carried by the tokenizer: plain (unchanged token ids) and chat (the tokenizer's chat template)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as real_datetime

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from msa_bench.config.schema import PromptConfig
from msa_bench.data.formatting import (
    PromptFormat,
    answer_text,
    encode_prompt,
    encode_qa,
    format_answer,
    format_prompt,
    prompt_format_of,
    prompt_text,
    set_prompt_format,
)
from msa_bench.metrics.core.decoding import generate_answers
from tests.tiny_models import tiny_eval_llama, tiny_tokenizer

# No "\n\n" in the training texts: the tiny BPE then has no merge for it, and a chat prompt's trailing "\n\n" is two
# "\n" tokens whether it is tokenized alone or followed by the answer (as Llama-3's "\n\n" is one token either way).
SENTENCES = [
    "Question: Who wrote the novel about the lighthouse keeper?\nAnswer: The novel was written by Mira Castellan.",
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris.",
    "You are a helpful assistant. Today Date: 10 Apr 2025. The user asked a question.",
]
HEADER_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama-3.2-like: bos text first, a system turn with the date (today's unless `date_string` is given), then the turns.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QUESTION = "What is the capital of France?"
ANSWER = "  The capital of France is Paris. "
CHAT = PromptFormat(kind="chat", system_prompt="You are a helpful assistant.", date_string="10 Apr 2025")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def plain_tokenizer():
    tokenizer = tiny_tokenizer(SENTENCES)
    tokenizer.name_or_path = "tiny/plain-base"
    return tokenizer


def chat_tokenizer_from(plain, template: str = CHAT_TEMPLATE, fmt: PromptFormat = CHAT):
    """A copy of the tiny tokenizer with Llama-3-like header tokens, <|eot_id|> as eos and a chat template."""
    tokenizer = copy.deepcopy(plain)
    tokenizer.add_tokens(HEADER_TOKENS, special_tokens=True)
    tokenizer.eos_token = "<|eot_id|>"
    tokenizer.chat_template = template
    tokenizer.name_or_path = "tiny/chat-instruct"
    return set_prompt_format(tokenizer, fmt)


@pytest.fixture(scope="module")
def chat_tokenizer(plain_tokenizer):
    return chat_tokenizer_from(plain_tokenizer)


def expected_chat_text(question: str, system: str, date: str) -> str:
    return (
        f"<|bos|><|start_header_id|>system<|end_header_id|>\n\nToday Date: {date}\n\n{system}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


# --- plain -----------------------------------------------------------------------------------------------------------


def test_plain_ids_are_the_old_formula(plain_tokenizer):
    tokenizer = plain_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    old_prompt = [bos] + tokenizer(format_prompt(QUESTION), add_special_tokens=False)["input_ids"]
    old_answer = tokenizer(format_answer(ANSWER), add_special_tokens=False)["input_ids"] + [eos]

    attached = set_prompt_format(copy.deepcopy(tokenizer), PromptFormat.from_config(PromptConfig()))
    for candidate in (tokenizer, attached):  # no format attached means plain
        assert prompt_format_of(candidate).kind == "plain"
        assert encode_prompt(candidate, QUESTION) == old_prompt
        encoded = encode_qa(candidate, QUESTION, ANSWER)
        assert encoded.input_ids == old_prompt + old_answer
        assert encoded.labels == [-100] * len(old_prompt) + old_answer
        assert encode_qa(candidate, QUESTION, ANSWER, max_length=5).input_ids == (old_prompt + old_answer)[:5]
        assert prompt_text(candidate, QUESTION) == "Question: What is the capital of France?\nAnswer:"
        assert answer_text(candidate, ANSWER) == " The capital of France is Paris."


# --- chat ------------------------------------------------------------------------------------------------------------


def test_chat_prompt_is_the_template_rendering(chat_tokenizer):
    tokenizer = chat_tokenizer
    text = prompt_text(tokenizer, QUESTION)
    assert text == expected_chat_text(QUESTION, "You are a helpful assistant.", "10 Apr 2025")
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": QUESTION},
    ]
    assert text == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, date_string="10 Apr 2025"
    )
    # The ids are what transformers' own tokenizing apply_chat_template gives (no special tokens added).
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True, date_string="10 Apr 2025"
    )["input_ids"]
    assert encode_prompt(tokenizer, QUESTION) == list(ids)
    header_ids = tokenizer.convert_tokens_to_ids(HEADER_TOKENS)
    assert all(token_id in ids for token_id in header_ids)  # the markers are single special tokens


def test_chat_without_system_prompt(plain_tokenizer):
    tokenizer = chat_tokenizer_from(plain_tokenizer, fmt=PromptFormat(kind="chat", date_string="1 Jan 2024"))
    assert prompt_text(tokenizer, QUESTION) == expected_chat_text(QUESTION, "", "1 Jan 2024")


def test_no_double_bos(chat_tokenizer, plain_tokenizer):
    ids = encode_qa(chat_tokenizer, QUESTION, ANSWER).input_ids
    assert ids[0] == chat_tokenizer.bos_token_id
    assert ids.count(chat_tokenizer.bos_token_id) == 1
    # A template that does not write the bos text gets bos prepended, like the plain format.
    without_bos = chat_tokenizer_from(plain_tokenizer, template=CHAT_TEMPLATE.replace("{{- bos_token }}", ""))
    text = prompt_text(without_bos, QUESTION)
    assert not text.startswith("<|bos|>")
    prompt_ids = encode_prompt(without_bos, QUESTION)
    assert prompt_ids == [without_bos.bos_token_id] + without_bos(text, add_special_tokens=False)["input_ids"]
    assert prompt_ids == encode_prompt(chat_tokenizer, QUESTION)


def test_chat_labels_cover_the_answer_and_eos_only(chat_tokenizer):
    tokenizer = chat_tokenizer
    prompt_ids = encode_prompt(tokenizer, QUESTION)
    encoded = encode_qa(tokenizer, QUESTION, ANSWER)
    answer_ids = tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.eos_token_id == eot
    assert encoded.input_ids == prompt_ids + answer_ids + [eot]
    assert encoded.labels == [-100] * len(prompt_ids) + answer_ids + [eot]
    assert encoded.n_answer_tokens == len(answer_ids) + 1
    assert tokenizer.decode(answer_ids) == "The capital of France is Paris."  # no leading space
    assert answer_text(tokenizer, ANSWER) == "The capital of France is Paris."


class FrozenDatetime(real_datetime.datetime):
    """datetime with a settable now(), for the template's strftime_now."""

    today_is = real_datetime.datetime(2030, 1, 1)

    @classmethod
    def now(cls, tz=None):
        return cls.today_is


def test_the_date_is_pinned(plain_tokenizer, monkeypatch):
    from transformers.utils import chat_template_utils

    monkeypatch.setattr(chat_template_utils, "datetime", FrozenDatetime)
    pinned = chat_tokenizer_from(plain_tokenizer)
    unpinned = chat_tokenizer_from(plain_tokenizer, fmt=PromptFormat(kind="chat", date_string=None))
    results = []
    for day in (real_datetime.datetime(2030, 1, 1), real_datetime.datetime(2031, 6, 15)):
        FrozenDatetime.today_is = day
        results.append((encode_qa(pinned, QUESTION, ANSWER).input_ids, prompt_text(unpinned, QUESTION)))
    (pinned_a, unpinned_a), (pinned_b, unpinned_b) = results
    assert pinned_a == pinned_b
    assert "Today Date: 10 Apr 2025" in prompt_text(pinned, QUESTION)
    # Without a pinned date the template takes today's: the fake clock above is what it reads.
    assert "Today Date: 01 Jan 2030" in unpinned_a and "Today Date: 15 Jun 2031" in unpinned_b


# --- configuration and errors ----------------------------------------------------------------------------------------


def test_from_config():
    assert PromptFormat.from_config(None) == PromptFormat()
    config = PromptConfig(format="chat", system_prompt="Be brief.", date_string=None)
    assert PromptFormat.from_config(config) == PromptFormat(
        kind="chat", system_prompt="Be brief.", date_string=None
    )
    structured = OmegaConf.structured(PromptConfig(format="chat"))
    assert PromptFormat.from_config(structured) == PromptFormat(kind="chat", date_string="10 Apr 2025")
    with pytest.raises(dataclasses.FrozenInstanceError):
        PromptFormat().kind = "chat"


def test_invalid_kind_is_an_error():
    with pytest.raises(
        ValueError, match=r"model\.prompt\.format must be one of 'plain', 'chat', got 'alpaca'"
    ):
        PromptFormat.from_config(PromptConfig(format="alpaca"))


def test_chat_without_a_template_is_a_clear_error(plain_tokenizer):
    tokenizer = copy.deepcopy(plain_tokenizer)
    with pytest.raises(ValueError, match=r"model\.prompt\.format=chat .*'tiny/plain-base' has none"):
        set_prompt_format(tokenizer, CHAT)
    assert prompt_format_of(tokenizer).kind == "plain"  # nothing attached on failure
    with pytest.raises(TypeError):
        set_prompt_format(tokenizer, "chat")


# --- consumers -------------------------------------------------------------------------------------------------------


def test_generation_prompts_follow_the_format(chat_tokenizer):
    tokenizer = chat_tokenizer
    model = tiny_eval_llama(tokenizer)
    seen: list[tuple[list[int], list[int]]] = []
    original = model.generate

    def recording_generate(input_ids, attention_mask, **kwargs):
        seen.extend(zip(input_ids.tolist(), attention_mask.tolist(), strict=True))
        return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.generate = recording_generate
    questions = [QUESTION, "Who wrote the novel about the lighthouse keeper?"]
    generations = generate_answers(model, tokenizer, questions, max_new_tokens=3, batch_size=2)
    prompts = [[t for t, m in zip(ids, mask, strict=True) if m] for ids, mask in seen]
    assert sorted(prompts) == sorted(encode_prompt(tokenizer, question) for question in questions)
    assert all(prompt.count(tokenizer.bos_token_id) == 1 for prompt in prompts)
    assert len(generations.texts) == 2


def test_lm_eval_docs_and_tokens_for_chat(chat_tokenizer, plain_tokenizer, tmp_path):
    from msa_bench.metrics.lm_eval_suite import local_task_config, make_lm, multiple_choice_docs

    items = [
        {
            "question": QUESTION,
            "answer": ANSWER,
            "perturbed_answer": ["The capital is Rome.", "It is Madrid."],
        },
        {"question": "Who wrote the novel?", "answer": "Mira Castellan.", "perturbed_answer": ["Paris."]},
    ]
    docs = multiple_choice_docs(items, "world_facts", chat_tokenizer)
    assert [doc["prompt"] for doc in docs] == [
        prompt_text(chat_tokenizer, item["question"]) for item in items
    ]
    assert multiple_choice_docs(items, "world_facts", plain_tokenizer) == multiple_choice_docs(
        items, "world_facts"
    )
    assert local_task_config("msa_world_facts_mc", items, tmp_path, chat_tokenizer)["target_delimiter"] == ""
    assert (
        local_task_config("msa_world_facts_mc", items, tmp_path, plain_tokenizer)["target_delimiter"] == " "
    )
    assert local_task_config("msa_world_facts_mc", items, tmp_path)["target_delimiter"] == " "

    # lm-eval tokenizes context + continuation as encode_qa does (one bos, no eos) and scores the continuation
    # tokens, which begin with the prompt's trailing "\n\n" (lm-eval moves trailing whitespace into the continuation).
    from lm_eval.api.instance import Instance

    model = tiny_eval_llama(chat_tokenizer)
    lm = make_lm(model, chat_tokenizer, batch_size=2)
    doc = docs[0]
    context, continuation = doc["prompt"], doc["choices"][doc["label"]]
    context_ids, continuation_ids = lm._encode_pair(context, continuation)
    ours = encode_qa(chat_tokenizer, items[0]["question"], items[0]["answer"])
    assert context_ids + continuation_ids == ours.input_ids[:-1]
    assert (context_ids + continuation_ids).count(chat_tokenizer.bos_token_id) == 1
    assert len(continuation_ids) == ours.n_answer_tokens - 1 + 2  # answer tokens without eos, plus "\n", "\n"

    ids = torch.tensor([ours.input_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    token_logprobs = logprobs.gather(-1, ids[0, 1:, None])[:, 0].double().numpy()
    expected = token_logprobs[len(context_ids) - 1 : -1].sum()  # continuation tokens, not the eos
    [(theirs, _)] = lm.loglikelihood(
        [Instance("loglikelihood", doc={}, arguments=(context, continuation), idx=0)], disable_tqdm=True
    )
    np.testing.assert_allclose(theirs, expected, atol=1e-4)


def test_lm_eval_suite_runs_chat_requests(chat_tokenizer, monkeypatch):
    """End to end: the local task sends lm-eval's model (chat prompt, choice) requests, without a leading space."""
    from msa_bench.config.schema import LmEvalConfig, MetricsConfig
    from msa_bench.metrics import lm_eval_suite

    items = [
        {
            "question": QUESTION,
            "answer": ANSWER,
            "perturbed_answer": ["The capital is Rome.", "It is Madrid."],
        },
        {"question": "Who wrote the novel?", "answer": "Mira Castellan.", "perturbed_answer": ["Paris."]},
    ]
    requests = []
    make_lm = lm_eval_suite.make_lm

    def recording_make_lm(model, tokenizer, batch_size):
        lm = make_lm(model, tokenizer, batch_size)
        loglikelihood = lm.loglikelihood

        def recording_loglikelihood(instances, *args, **kwargs):
            requests.extend(instance.arguments for instance in instances)
            return loglikelihood(instances, *args, **kwargs)

        lm.loglikelihood = recording_loglikelihood
        return lm

    monkeypatch.setattr(lm_eval_suite, "make_lm", recording_make_lm)
    model = tiny_eval_llama(chat_tokenizer)
    settings = MetricsConfig(
        name="lm_eval", names=["lm_eval"], lm_eval=LmEvalConfig(batch_size=4, tasks=["msa_world_facts_mc"])
    )
    result = lm_eval_suite.evaluate_lm_eval(
        model, chat_tokenizer, {"world_facts": items}, ["lm_eval"], settings
    )
    assert len(result.per_item["lm_eval/msa_world_facts_mc/acc"]) == 2
    expected = {
        (prompt_text(chat_tokenizer, item["question"]), choice.strip())
        for item in items
        for choice in [item["answer"], *item["perturbed_answer"]]
    }
    assert set(requests) == expected
