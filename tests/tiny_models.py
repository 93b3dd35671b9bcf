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
