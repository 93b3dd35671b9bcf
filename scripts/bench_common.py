"""What the benchmark scripts share: the default embedded model's world, config and tokenizer, built in memory."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from msa_bench.config.schema import EmbeddedModelConfig
from msa_bench.data.synthetic import SyntheticWorld, SyntheticWorldSpec, generate_world
from msa_bench.data.tokenizer import train_bpe_tokenizer


def default_world_and_tokenizer() -> tuple[SyntheticWorld, EmbeddedModelConfig, object]:
    """The default world (conf/benchmark/synthetic_tofu.yaml), the tiny_llama config and its BPE tokenizer."""
    world = generate_world(SyntheticWorldSpec())
    model_cfg = EmbeddedModelConfig(name="tiny_llama")
    tokenizer = train_bpe_tokenizer(world.corpus_texts(), vocab_size=model_cfg.vocab_size)
    return world, model_cfg, tokenizer


def random_llama(
    tokenizer, hidden_size: int, num_layers: int, vocab_size: int, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised fp32 Llama of the given shape (heads of 64, Llama's MLP ratio), in eval mode, whose
    special tokens are the tokenizer's; a vocabulary larger than the tokenizer's only leaves ids unused, but costs
    what a real vocabulary of that size costs in the output projection and the log-softmax."""
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {len(tokenizer)} tokens")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=int(hidden_size * 8 / 3 / 64 + 0.5) * 64,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=hidden_size // 64,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()
