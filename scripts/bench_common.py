"""What the benchmark scripts share: the default embedded model's world, config and tokenizer, built in memory."""

from __future__ import annotations

from msa_bench.config.schema import EmbeddedModelConfig
from msa_bench.data.synthetic import SyntheticWorld, SyntheticWorldSpec, generate_world
from msa_bench.data.tokenizer import train_bpe_tokenizer


def default_world_and_tokenizer() -> tuple[SyntheticWorld, EmbeddedModelConfig, object]:
    """The default world (conf/benchmark/synthetic_tofu.yaml), the tiny_llama config and its BPE tokenizer."""
    world = generate_world(SyntheticWorldSpec())
    model_cfg = EmbeddedModelConfig(name="tiny_llama")
    tokenizer = train_bpe_tokenizer(world.corpus_texts(), vocab_size=model_cfg.vocab_size)
    return world, model_cfg, tokenizer
