"""Tiny tokenizers and Llama models for unit tests (tens of thousands of parameters, built in milliseconds)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Olmo2Config, Olmo2ForCausalLM

from msa_bench.data.tokenizer import train_bpe_tokenizer


def tiny_tokenizer(texts: list[str], vocab_size: int = 320):
    """The project's byte-level BPE (bos/eos/pad set), trained on a few sentences."""
    return train_bpe_tokenizer(texts, vocab_size=vocab_size, model_max_length=128)


def tiny_llama(vocab_size: int, seed: int = 0, tokenizer=None, **overrides) -> LlamaForCausalLM:
    """A 2-layer, 32-wide Llama; `overrides` go to LlamaConfig (e.g. tie_word_embeddings, initializer_range)."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if tokenizer is not None:
        settings.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).float()


def tiny_eval_llama(tokenizer) -> LlamaForCausalLM:
    """A tiny Llama in eval mode for metric tests, with initializer_range 0.3 (above the default 0.02) so that greedy
    choices are not near-ties that float noise could flip."""
    return tiny_llama(len(tokenizer), tokenizer=tokenizer, initializer_range=0.3).eval()


def tiny_eval_olmo2(tokenizer, **overrides) -> Olmo2ForCausalLM:
    """A tiny OLMo-2 (another architecture: norms after attention and MLP, QK-norm) in eval mode, initialised like
    tiny_eval_llama, for tests that must hold beyond Llama."""
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    return Olmo2ForCausalLM(Olmo2Config(**settings)).float().eval()


# The label names of open-unlearning's gibberish detector (madhurjindal/autonlp-Gibberish-Detector-492513457).
GIBBERISH_LABELS = {0: "clean", 1: "mild gibberish", 2: "noise", 3: "word salad"}


def save_tiny_fluency_classifier(folder, id2label=GIBBERISH_LABELS, seed: int = 0):
    """A 2-layer, 32-wide BERT sequence classifier with `id2label`, and the project's BPE tokenizer with a leading
    bos token (BERT's [CLS]: the classifier pools the first token, and an empty text still has one), saved to
    `folder` as a Hugging Face model folder; returns (tokenizer, model)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tiny_tokenizer(
        ["The author was born in Paris and writes novels.", "qwx zzv plk", "word salad of random words"]
    )
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        id2label=dict(id2label),
        label2id={name: index for index, name in id2label.items()},
        initializer_range=0.3,  # probabilities well away from uniform, so a wrong class is noticed
    )
    model = BertForSequenceClassification(config).float().eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer, model
