"""Building, saving and loading the causal LMs msa_bench trains and edits.

Models are always stored in Hugging Face format (config.json + safetensors + tokenizer files), so transformers, peft
and lm-eval load them unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from msa_bench.config.schema import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"model.dtype={name!r} is not supported; use one of {sorted(DTYPES)}") from None


def build_embedded_model(model_cfg: ModelConfig, tokenizer, seed: int) -> PreTrainedModel:
    """A freshly initialised small Llama, sized by the model config, for the embedded default."""
    if model_cfg.architecture != "llama":
        raise ValueError(
            f"model.architecture={model_cfg.architecture!r}: the embedded model supports only 'llama'"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        intermediate_size=model_cfg.intermediate_size,
        max_position_embeddings=model_cfg.max_position_embeddings,
        tie_word_embeddings=model_cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.to(resolve_dtype(model_cfg.dtype))


def save_model(model: PreTrainedModel, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_model(
    model_dir: Path, device: str | torch.device = "cpu", dtype: str = "float32"
) -> PreTrainedModel:
    # transformers 5 loads in the saved dtype by default; pass it explicitly (bf16 on CPU is 10-20x slower).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype), local_files_only=True)
    return model.to(device)


def load_tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def count_parameters(model: torch.nn.Module) -> int:
    # named_parameters() yields tied tensors once.
    return sum(p.numel() for _, p in model.named_parameters())
