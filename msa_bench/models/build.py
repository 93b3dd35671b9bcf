"""Building, saving and loading the causal LMs msa_bench trains and edits.

Models are always stored in Hugging Face format (config.json + safetensors + tokenizer files), so transformers, peft
and lm-eval load them unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from msa_bench.config.schema import EmbeddedModelConfig, ModelConfig, PretrainedModelConfig
from msa_bench.distributed import is_main_process
from msa_bench.errors import NonFiniteWeightsError
from msa_bench.models.finite import first_non_finite
from msa_bench.models.safety import check_model_folder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"model.dtype={name!r} is not supported; use one of {sorted(DTYPES)}") from None


def build_embedded_model(model_cfg: EmbeddedModelConfig, tokenizer, seed: int) -> PreTrainedModel:
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


def save_model(model: PreTrainedModel, tokenizer, out_dir: Path, state_dict: dict | None = None) -> None:
    """Save ``model`` and ``tokenizer`` to ``out_dir`` in Hugging Face format.

    ``state_dict``: the full weights when the model's own are sharded across ranks (FSDP, ZeRO-3: the trainer
    gathers them, `TrainStats.state_dict`). With several processes only rank 0 writes (msa_bench/distributed.py).

    Raises:
        NonFiniteWeightsError: a weight is NaN or inf; nothing is written (see `check_finite_weights`).
    """
    if not is_main_process():
        return
    check_finite_weights(model, out_dir, state_dict)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)


def check_finite_weights(model: torch.nn.Module, out_dir: Path, state_dict: dict | None = None) -> None:
    """Refuse a model whose weights hold NaN or inf, naming the first bad tensor, before anything is written: a
    cached stage built from it would be reused by every later run. Models are saved at the end of a training stage
    or of a dtype conversion, so the advice names those."""
    bad = first_non_finite((state_dict if state_dict is not None else model.state_dict()).items())
    if bad is None:
        return
    raise NonFiniteWeightsError(
        f"refusing to save the model to {out_dir}: {bad.describe()} (the first non-finite tensor; nothing was "
        "saved). The training that produced it diverged: lower the learning_rate of its recipe "
        "(benchmark.target_recipe for the target and oracle, method.recipe for an unlearning method, "
        "model.pretrain.recipe or model.instruct for the embedded model's history) or set method.loss_bound; "
        "a model converted to float16 can overflow: use model.dtype=bfloat16 or float32"
    )


def _placement(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def trusts_remote_code(model_cfg: ModelConfig) -> bool:
    """model.trust_remote_code of a pretrained model; the embedded model is built here and ships no code."""
    return isinstance(model_cfg, PretrainedModelConfig) and model_cfg.trust_remote_code


def load_model(
    model_dir: Path,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    *,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a Hugging Face model folder in ``dtype`` (model.dtype) onto ``device``.

    Only safetensors weights are read, and the folder's own Python code (`auto_map`) only with ``trust_remote_code``
    (model.trust_remote_code, see trusts_remote_code); anything else is refused before transformers opens a file
    (msa_bench/models/safety.py), so loading never unpickles and never prompts.

    transformers 5 loads in the saved dtype by default; the dtype is always passed explicitly (bf16 on CPU is 10-20x
    slower, and a bf16 hub checkpoint must not silently set the training precision). from_pretrained builds the model
    on the meta device and casts each tensor to ``dtype`` as it is read (transformers 5 dropped ``low_cpu_mem_usage``:
    that is now the only way), so a bf16 8B model takes ~16 GB, never an fp32 copy. Off the CPU, ``device_map`` puts
    each tensor straight onto the accelerator instead of first filling host memory with the whole model.
    """
    check_model_folder(model_dir, trust_remote_code=trust_remote_code)
    torch_dtype = resolve_dtype(dtype)
    placement = _placement(device)
    safe = dict(local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code)
    if placement.type == "cpu":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, **safe)
        return model.to(placement)
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch_dtype, device_map={"": placement}, **safe
    )


def ensure_pad_token(tokenizer) -> bool:
    """Give ``tokenizer`` a pad token if it has none; return whether one was set.

    Pretrained tokenizers often define no pad token (Llama 3: bos, eos and chat tokens only). msa_bench only needs the
    pad id to fill batches: labels of padding are -100 and attention masks come from sequence lengths
    (msa_bench/data/batching.py), never from comparing ids with the pad id. So eos can double as pad without hiding
    the real eos tokens from the loss or from attention. No new token is added: that would grow the vocabulary and the
    embedding matrix, and a model state with another shape cannot enter the arithmetic with the hub's checkpoints.
    """
    if tokenizer.pad_token is not None:
        return False
    if tokenizer.eos_token is None:
        raise ValueError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has neither a pad nor an eos token; "
            "msa_bench needs one of them to pad batches"
        )
    tokenizer.pad_token = tokenizer.eos_token
    return True


def load_tokenizer(model_dir: Path, *, trust_remote_code: bool = False):
    """The tokenizer saved in ``model_dir``, with eos as pad token when it defines none (see ensure_pad_token).

    The embedded model's tokenizer has its own pad token and is returned unchanged. A tokenizer folder with
    `auto_map` is refused unless ``trust_remote_code`` (see load_model)."""
    check_model_folder(model_dir, trust_remote_code=trust_remote_code, weights=False)
    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=trust_remote_code
    )
    ensure_pad_token(tokenizer)
    return tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    # named_parameters() yields tied tensors once.
    return sum(p.numel() for _, p in model.named_parameters())
