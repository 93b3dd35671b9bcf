"""Answers that share a question prefix are scored from one pass over it (KV cache), with the unshared values."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

from msa_bench.data.formatting import PromptFormat, encode_prompt, encode_qa, set_prompt_format
from msa_bench.metrics.core import shared_prefix
from msa_bench.metrics.core.scoring import (
    ScoredSequence,
    encode_pairs,
    qa_sequences,
    score_answers,
    token_statistics,
)
from tests.tiny_models import tiny_eval_llama, tiny_eval_olmo2, tiny_tokenizer

SENTENCES = [
    "Question: Who wrote the novel about the lighthouse keeper?\nAnswer: The novel was written by Mira Castellan.",
    "Question: Where was the author born?\nAnswer: She was born in Lisbon, Portugal, in 1961.",
    "Question: What genre does he write in?\nAnswer: He writes mostly science fiction and some poetry.",
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_eval_llama(tokenizer)


@pytest.fixture(scope="module")
def olmo2(tokenizer):
    return tiny_eval_olmo2(tokenizer, num_key_value_heads=1)


def tofu_like_pairs() -> tuple[list[str], list[str]]:
    """Questions of different lengths, each with answers of different lengths (1 + 1 + 2..5 perturbed), interleaved
    as the TOFU suite passes them (all correct answers, then all paraphrases, then the perturbed ones)."""
    questions = [
        f"Who wrote book number {index}?" + " Please answer in full." * (index % 3) for index in range(5)
    ]
    pairs = [
        (question, f"Book {index} was written by Mira Castellan.") for index, question in enumerate(questions)
    ]
    pairs += [(question, "Mira" + " Castellan" * (index + 1)) for index, question in enumerate(questions)]
    pairs += [
        (question, f"It was author {j}" + ", in Lisbon" * j + ".")
        for index, question in enumerate(questions)
        for j in range(2 + index % 4)
    ]
    return [q for q, _ in pairs], [a for _, a in pairs]


def unshared_nlls(model, tokenizer, questions, answers) -> np.ndarray:
    """One pair per call: a context of its own is never shared, so this is the plain right-padded computation."""
    return np.array(
        [score_answers(model, tokenizer, [q], [a]).nlls[0] for q, a in zip(questions, answers, strict=True)]
    )


@pytest.mark.parametrize("model_name", ["llama", "olmo2"])
@pytest.mark.parametrize("batch_size", [3, 32])
def test_shared_prefix_nlls_equal_unshared(request, tokenizer, model_name, batch_size):
    model = request.getfixturevalue(model_name)
    questions, answers = tofu_like_pairs()
    shared = score_answers(model, tokenizer, questions, answers, batch_size=batch_size)
    np.testing.assert_allclose(
        shared.nlls, unshared_nlls(model, tokenizer, questions, answers), rtol=0, atol=1e-5
    )

    # The model's own loss on encode_qa's tokens: an independent check of what was scored.
    for index in [0, 7, len(questions) - 1]:
        encoded = encode_qa(tokenizer, questions[index], answers[index])
        with torch.no_grad():
            loss = model(
                input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])
            ).loss
        assert shared.nlls[index] == pytest.approx(loss.item(), abs=1e-5)

    # Sharing happened: each prompt (less its last token) went through the model once per batch it appears in.
    full_lengths = sum(
        len(encode_qa(tokenizer, q, a).input_ids) for q, a in zip(questions, answers, strict=True)
    )
    assert shared.tokens_processed < full_lengths


def test_shared_prefix_token_statistics_equal_unshared(llama, tokenizer):
    questions, answers = tofu_like_pairs()
    sequences = qa_sequences(tokenizer, questions, answers)
    pad = tokenizer.pad_token_id
    for row_by_row in (False, True):
        shared = token_statistics(
            llama, pad, sequences, batch_size=4, with_vocab_moments=True, row_by_row=row_by_row
        )
        alone = [
            token_statistics(llama, pad, [sequence], with_vocab_moments=True, row_by_row=row_by_row)
            for sequence in sequences
        ]
        for index, single in enumerate(alone):
            np.testing.assert_allclose(shared.label_log_probs[index], single.label_log_probs[0], atol=1e-5)
            np.testing.assert_array_equal(shared.argmax_matches[index], single.argmax_matches[0])
            # The variance is E[x^2] - E[x]^2 in fp32, which cancels digits: compared relatively, as the batching
            # tests in test_metrics_tofu_full.py compare it.
            for field in ("vocab_log_prob_means", "vocab_log_prob_variances"):
                np.testing.assert_allclose(
                    getattr(shared, field)[index], getattr(single, field)[0], rtol=1e-5, atol=1e-6
                )
    assert shared.tokens_processed < sum(len(s.context_ids) + len(s.target_ids) for s in sequences)


def test_contexts_that_differ_at_the_boundary_are_not_pooled(llama, tokenizer):
    """Two sequences of the same text, tokenized with a different split at the context/target boundary (as joint
    tokenization would merge across it), have different contexts: each is scored unshared, with its own values."""
    prompt = encode_prompt(tokenizer, "Who wrote the novel?")
    eos = tokenizer.eos_token_id
    kept_apart = ScoredSequence(context_ids=prompt, target_ids=[5, 6, eos])
    merged = ScoredSequence(context_ids=prompt[:-1], target_ids=[prompt[-1], 5, 6, eos])
    sequences = [kept_apart, merged]

    batches = list(shared_prefix.target_logit_batches(llama, tokenizer.pad_token_id, sequences, 8, "cpu"))
    assert sum(batch.tokens_processed for batch in batches) == sum(
        len(s.context_ids) + len(s.target_ids) for s in sequences
    )
    together = token_statistics(llama, tokenizer.pad_token_id, sequences)
    for index, sequence in enumerate(sequences):
        alone = token_statistics(llama, tokenizer.pad_token_id, [sequence])
        np.testing.assert_allclose(together.label_log_probs[index], alone.label_log_probs[0], atol=1e-6)


def test_equal_contexts_are_pooled_and_split_over_batches(llama, tokenizer):
    """Seven answers to one question in batches of three: the context runs once per batch, never per answer."""
    context = encode_prompt(tokenizer, "Who wrote the novel?")
    sequences = [
        ScoredSequence(context_ids=context, target_ids=[7 + j] * (1 + j % 3) + [2]) for j in range(7)
    ]
    batches = list(shared_prefix.target_logit_batches(llama, tokenizer.pad_token_id, sequences, 3, "cpu"))
    assert [len(batch.indices) for batch in batches] == [3, 3, 1]
    assert sorted(index for batch in batches for index in batch.indices) == list(range(7))
    # The context runs whole (its last token's logits predict each first target); answer rows carry the rest.
    prefix_runs = sum(batch.tokens_processed for batch in batches) - sum(
        len(s.target_ids) - 1 for s in sequences
    )
    assert prefix_runs == 3 * len(context)


def test_model_without_a_cache_is_scored_unshared(tokenizer, llama):
    """A model whose forward takes no cache (a stand-in, a non-transformers model) gets the unshared passes."""

    class NoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    questions, answers = tofu_like_pairs()
    wrapped = score_answers(NoCache(llama), tokenizer, questions, answers)
    full_lengths = sum(
        len(encode_qa(tokenizer, q, a).input_ids) for q, a in zip(questions, answers, strict=True)
    )
    assert wrapped.tokens_processed == full_lengths
    np.testing.assert_allclose(
        wrapped.nlls, score_answers(llama, tokenizer, questions, answers).nlls, atol=1e-5
    )


CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@pytest.mark.parametrize("kind", ["plain", "chat"])
def test_encode_pairs_gives_encode_qa_tokens(tokenizer, kind):
    """The batched encoding that scoring uses is encode_qa's, token for token, in both prompt formats."""
    if kind == "chat":
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
        tokenizer.eos_token = "<|eot_id|>"
        tokenizer.chat_template = CHAT_TEMPLATE
        set_prompt_format(tokenizer, PromptFormat(kind="chat", system_prompt="You are a helpful assistant."))
    questions, answers = tofu_like_pairs()
    answers[0] = "  " + answers[0] + "  "  # answers are stripped by the format, whatever their spacing
    assert encode_pairs(tokenizer, questions, answers) == [
        encode_qa(tokenizer, q, a) for q, a in zip(questions, answers, strict=True)
    ]


@pytest.fixture(scope="module")
def gemma2(tokenizer):
    """Gemma-2 soft-caps its logits after the head: scoring through logits_to_keep must keep that."""
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        initializer_range=0.3,
        final_logit_softcapping=5.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Gemma2ForCausalLM(config).float().eval()


def test_soft_capped_logits_are_scored_as_the_model_gives_them(gemma2, tokenizer):
    questions, answers = tofu_like_pairs()
    shared = score_answers(gemma2, tokenizer, questions, answers, batch_size=4)
    np.testing.assert_allclose(
        shared.nlls, unshared_nlls(gemma2, tokenizer, questions, answers), rtol=0, atol=1e-5
    )
    encoded = encode_qa(tokenizer, questions[3], answers[3])
    with torch.no_grad():
        loss = gemma2(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
    assert shared.nlls[3] == pytest.approx(loss.item(), abs=1e-5)


def test_vocabulary_projection_runs_only_where_a_target_is_predicted(llama, tokenizer):
    """The head sees only hidden states that predict a scored token, shared or not: none for pads or prompt
    positions, and an answer's first token is predicted once for all the answers of its context."""
    questions, answers = tofu_like_pairs()
    questions.append("A question of its own?")  # an unshared sequence beside the shared ones
    answers.append("Its only answer.")
    projected = []
    hook = llama.lm_head.register_forward_hook(lambda _module, inputs, _output: projected.append(inputs[0]))
    try:
        scores = score_answers(llama, tokenizer, questions, answers, batch_size=4)
    finally:
        hook.remove()
    # Every scored token but the first of each answer, plus one first-token prediction per context and part of at
    # most batch_size answers (all answers of a part share it), the unshared sequence's included.
    answers_per_context = np.unique(questions, return_counts=True)[1]
    expected = (scores.n_answer_tokens - 1).sum() + sum(-(-count // 4) for count in answers_per_context)
    assert sum(hidden.shape[:-1].numel() for hidden in projected) == expected


def test_one_token_answers_and_one_token_contexts_are_shared(llama, tokenizer):
    """An answer of one target (its eos) takes its logits from the prefix pass and needs no row of its own, even
    when no answer of the batch continues; a one-token context is shared like any other."""
    eos = tokenizer.eos_token_id
    context = encode_prompt(tokenizer, "Who wrote the novel?")
    bos_only = [tokenizer.bos_token_id]
    sequences = [
        ScoredSequence(context_ids=context, target_ids=[eos]),
        ScoredSequence(context_ids=context, target_ids=[9, 10, eos]),
        ScoredSequence(context_ids=context, target_ids=[eos]),
        ScoredSequence(context_ids=bos_only, target_ids=[eos]),
        ScoredSequence(context_ids=bos_only, target_ids=[11, eos]),
    ]
    pad = tokenizer.pad_token_id
    for batch_size in (1, 2, 8):
        shared = token_statistics(llama, pad, sequences, batch_size=batch_size)
        for index, sequence in enumerate(sequences):
            alone = token_statistics(llama, pad, [sequence])
            np.testing.assert_allclose(shared.label_log_probs[index], alone.label_log_probs[0], atol=1e-5)
    # Each context runs once (batch 8): the answer rows carry only the targets after the first.
    assert shared.tokens_processed == len(context) + 1 + 2 + 1
