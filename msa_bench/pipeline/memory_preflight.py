"""Memory preflight: a stage's peak memory, estimated from the model's config.json before the model is loaded.

A stage that will not fit is refused before any loading (`require_memory` raises InsufficientMemoryError with the
figures and the options that would make it fit); a stage that fits records its estimate in its cost
(`StageCost.estimated_peak_memory_mb`). `preflight.memory=false` skips the check (the estimate is still recorded).

The model is built on the meta device (accelerate's `init_empty_weights`) to count its parameters P, and LoRA's
trainable ones (peft on the same meta model); the shapes come from its config: L layers, hidden h, intermediate i,
vocabulary V. Bytes per element: w for the weights (model.dtype), e for the activations (2 under bf16/fp16 weights or
mixed precision, else 4). t = batch × longest sequence tokens per forward batch.

Training (a fine-tune, the pretraining history, a loss-based unlearning method), with T trainable parameters held in
g bytes each (g = w; LoRA adapters are float32, peft's `autocast_adapter_dtype`):

    weights       P·w (+ T·4 adapters) (+ 2 bytes per matmul weight: autocast's half copies of float32 weights)
    gradients     T·g
    optimizer     AdamW: 2·T·g (exp_avg, exp_avg_sq in the parameters' dtype); 8-bit AdamW: 2·T bytes
    step temp     torch's foreach AdamW allocates sqrt(exp_avg_sq) for all parameters at once: T·g (CUDA only;
                  the fused and 8-bit kernels and the CPU's per-tensor loop need no such copy)
    activations   per token and layer, the tensors autograd saves for the backward pass (counted on transformers'
                  Llama layer with torch.autograd.graph.saved_tensors_hooks, within 3%):
                    full:  2·(4 + w)·h (two RMSNorms: a float32 copy and the normalised output)
                           + e·(4h + 3i) (q, k, v after rotation and repeat_kv, attention output; gate, SiLU, up)
                           + e·(3h + i) (the inputs of q/k/v, o, gate/up and down projections)
                    LoRA:  2·4h + e·(4h + 3i) + each adapted projection's input (4 bytes per element: peft casts it
                           to the float32 adapter) + 4r; frozen projections save no input
                  gradient checkpointing keeps each layer's input (w·h) and recomputes one layer at a time: L·w·h
                  + one layer's activations; without it, L layers' activations.
    loss          12·V bytes per token: the float32 copy of the logits, its log-softmax (saved) and, in the backward
                  pass, the gradients of both (msa_bench/training/losses.py); for a 128k vocabulary this dominates.

    peak = weights + max(optimizer + activations + loss,  gradients + optimizer + step temp)

that is, the later of the start of the backward pass (every activation saved, the loss's gradients allocated) and
the optimizer step (every gradient). A loss-based method with a retain term runs the forget and the retain batch
before one backward pass: twice the activations. Its frozen reference model adds P·w when it lives on the same device.

Evaluation: P·w + the largest of (a) scoring a batch: its logits in e bytes plus their float32 copy and
log-softmax (e + 8)·V·t, and the KV cache transformers builds on the way (2·L·kv·e·t, kv = key-value heads × head
dimension); (b) generating max_new_tokens for a batch: the KV cache of prompt + new tokens and the prompt's logits.

Sources: the formulas follow the accounting of Rajbhandari et al., "ZeRO" (SC'20, §3: 2 + 2 + 12 bytes per
parameter for mixed-precision Adam) and Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
Models" (MLSys'23, §4: per-layer activation bytes), specialised to what transformers' Llama and torch's AdamW
actually allocate (read from their source and checked with saved-tensor hooks). The figure is compared with
`torch.cuda.mem_get_info` (free, plus what PyTorch's allocator holds unused) on CUDA. On CPU it is compared with
MemAvailable in /proc/meminfo (or, when lower, what the process's memory cgroup still allows: a Slurm --mem or
container limit): a run that overcommits the CPU's memory is killed by the kernel with no message at
all, so the check is worth as much there; the estimate counts tensors only, not the interpreter and libraries,
which MemAvailable already leaves out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from msa_bench.distributed import world_size
from msa_bench.errors import InsufficientMemoryError
from msa_bench.failures import human_bytes

log = logging.getLogger("msa_bench.memory")

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAPTER_BYTES = 4  # peft keeps LoRA weights in float32 on a bf16/fp16 model (autocast_adapter_dtype=True)
LOSS_BYTES_PER_LOGIT = 12  # float32 logits + log-softmax + their two gradients (see the module docstring)
# The projections of a Llama-like layer and which input they read: h (the hidden state) or i (the MLP's).
PROJECTION_INPUTS = {
    "q_proj": "h",
    "k_proj": "h",
    "v_proj": "h",
    "o_proj": "h",
    "gate_proj": "h",
    "up_proj": "h",
    "down_proj": "i",
}
# The LoRA used to say what LoRA would save when a run has none configured.
SUGGESTED_LORA_RANK = 16
SUGGESTED_LORA_TARGETS = tuple(PROJECTION_INPUTS)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a model: its parameter count and the shapes of its layers."""

    n_parameters: int
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool = False

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def matmul_parameters(self) -> int:
        """Parameters that enter matrix products (autocast copies them): all but an untied input embedding."""
        return self.n_parameters - (0 if self.tied_embeddings else self.vocab_size * self.hidden_size)

    @classmethod
    def from_config(cls, config, n_parameters: int) -> ModelShape:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return cls(
            n_parameters=n_parameters,
            n_layers=text.num_hidden_layers,
            hidden_size=text.hidden_size,
            intermediate_size=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
            n_heads=heads,
            n_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab_size=text.vocab_size,
            tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        )


def _meta_model(config, trust_remote_code: bool = False):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_config leaves tied embeddings as two meta tensors; tied, they count once
    return model


def read_config(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust_remote_code)


def model_shape(config, trust_remote_code: bool = False) -> ModelShape:
    """The shape of the model `config` (a transformers config) describes; its parameters counted on the meta device
    (tied tensors once), so nothing is allocated."""
    model = _meta_model(config, trust_remote_code)
    n_parameters = sum(p.numel() for _, p in model.named_parameters())
    return ModelShape.from_config(config, n_parameters)


def lora_trainable_parameters(config, r: int, target_modules, trust_remote_code: bool = False) -> int:
    """The parameters LoRA of rank `r` on `target_modules` trains, counted by peft on the meta model."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _meta_model(config, trust_remote_code),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), task_type="CAUSAL_LM"),
    )
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class LoraShape:
    """The LoRA a training stage uses: its trainable parameter count and what it adapts."""

    trainable_parameters: int
    r: int
    target_modules: tuple[str, ...]
    dropout: float = 0.0


@dataclass(frozen=True)
class TrainingShape:
    """Everything a training stage's estimate depends on (kept on the estimate, so that options can be tried)."""

    model: ModelShape
    dtype: str
    batch_size: int
    sequence_length: int
    gradient_checkpointing: bool = False
    optimizer: str = "adamw_torch"
    mixed_precision: str = "no"
    lora: LoraShape | None = None
    forward_batches: int = 1  # 2 for a forget + retain batch trained by one backward pass
    reference_on_device: bool = False
    on_cuda: bool = True


@dataclass
class MemoryEstimate:
    """A stage's estimated peak memory, by component (bytes), and the shape it was computed for."""

    stage: str
    components: dict[str, int]
    description: str
    training: TrainingShape | None = None
    options: list[tuple[str, int]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.components.values())

    @property
    def total_mb(self) -> float:
        return self.total_bytes / 2**20


def _activation_bytes_per_token(shape: TrainingShape) -> tuple[float, float]:
    """(bytes saved per token by one decoder layer, bytes per token saved outside the layers)."""
    m, w = shape.model, BYTES[shape.dtype]
    e = 2 if (w == 2 or shape.mixed_precision != "no") else 4
    h, i = m.hidden_size, m.intermediate_size
    internals = e * (4 * h + 3 * i)
    if shape.lora is None:
        return 2 * (4 + w) * h + internals + e * (3 * h + i), (4 + w) * h + e * h
    adapted = [name for name in PROJECTION_INPUTS if any(t.endswith(name) for t in shape.lora.target_modules)]
    inputs = 0.0
    for name in adapted:
        width = h if PROJECTION_INPUTS[name] == "h" else i
        # a float32 copy (or dropout's output and its mask); in float32 without dropout the input itself
        inputs += 5 * width if shape.lora.dropout > 0 else (4 * width if e != 4 else e * width)
    return 2 * 4 * h + internals + inputs + 4 * shape.lora.r * len(adapted), 4 * h


def estimate_training(shape: TrainingShape, stage: str = "training") -> MemoryEstimate:
    m, w = shape.model, BYTES[shape.dtype]
    lora = shape.lora
    trainable = lora.trainable_parameters if lora else m.n_parameters
    g = ADAPTER_BYTES if lora else w
    weights = m.n_parameters * w + (trainable * ADAPTER_BYTES if lora else 0)
    if shape.mixed_precision != "no" and w == 4:
        weights += 2 * m.matmul_parameters
    optimizer = 2 * trainable if shape.optimizer == "adamw_8bit" else 2 * trainable * g
    step_temp = trainable * g if (shape.optimizer == "adamw_torch" and shape.on_cuda) else 0
    gradients = trainable * g
    tokens = shape.batch_size * shape.sequence_length * shape.forward_batches
    per_layer, outside = _activation_bytes_per_token(shape)
    if shape.gradient_checkpointing:
        layers = m.n_layers * w * m.hidden_size + per_layer
    else:
        layers = m.n_layers * per_layer
    activations = int(tokens * (layers + outside))
    loss = tokens * m.vocab_size * LOSS_BYTES_PER_LOGIT
    backward_start = optimizer + activations + loss
    optimizer_step = gradients + optimizer + step_temp
    components = {"weights": weights, "optimizer states": optimizer}
    if backward_start >= optimizer_step:
        components |= {"activations": activations, "loss (logits)": loss}
    else:
        components |= {"gradients": gradients, "optimizer step": step_temp}
    if shape.reference_on_device:
        components["reference model"] = m.n_parameters * w
    what = f"LoRA r={lora.r}, {trainable:,} trainable" if lora else "full fine-tune"
    description = (
        f"{m.n_parameters:,} parameters in {shape.dtype}, {what}, batch {shape.batch_size} × "
        f"{shape.sequence_length} tokens{' × 2 (forget + retain)' if shape.forward_batches == 2 else ''}, "
        f"{shape.optimizer}, mixed_precision={shape.mixed_precision}, "
        f"gradient_checkpointing={'true' if shape.gradient_checkpointing else 'false'}"
    )
    return MemoryEstimate(stage, {k: int(v) for k, v in components.items() if v}, description, shape)


def estimate_evaluation(
    model: ModelShape,
    dtype: str,
    batch_size: int,
    sequence_length: int,
    max_new_tokens: int,
    stage: str = "evaluation",
) -> MemoryEstimate:
    w = BYTES[dtype]
    tokens = batch_size * sequence_length
    kv_per_token = 2 * model.n_layers * model.kv_size * w
    scoring = tokens * model.vocab_size * (w + 8) + tokens * kv_per_token
    generated_tokens = batch_size * (sequence_length + max_new_tokens)
    generation = generated_tokens * kv_per_token + tokens * model.vocab_size * w
    components = {"weights": model.n_parameters * w}
    if scoring >= generation:
        components["scoring (logits, KV cache)"] = scoring
    else:
        components[f"generation ({max_new_tokens} new tokens, KV cache)"] = generation
    description = (
        f"{model.n_parameters:,} parameters in {dtype}, batch {batch_size} × {sequence_length} tokens, "
        f"{max_new_tokens} new tokens"
    )
    return MemoryEstimate(stage, components, description)


def available_memory(device: str) -> tuple[int, str]:
    """(bytes this process can still allocate on `device`, how that was read)."""
    if str(device).startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached), f"GPU memory ({device})"
    host = _mem_available()
    limit = cgroup_memory_left()
    if limit is not None and limit < host:
        # A Slurm --mem, Docker or Kubernetes limit: the kernel kills the job at it, whatever the host has free.
        return limit, "CPU memory (the cgroup's limit less its usage)"
    return host, "CPU memory (MemAvailable)"


# cgroup v2, then v1: (limit file, usage file). "max" (v2) or a huge number (v1) means no limit.
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def cgroup_memory_left(files=None) -> int | None:
    """What this process's memory cgroup still allows (limit − usage), or None where no limit is set or readable."""
    for limit_file, usage_file in files or _CGROUP_FILES:
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 2**60:
            return None
        return max(0, int(limit_text) - usage)
    return None


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def largest_fitting_batch(shape: TrainingShape, available: int) -> int | None:
    """The largest batch size below the shape's that fits in `available` bytes, None when not even 1 does."""
    best = None
    for size in range(1, shape.batch_size):
        if estimate_training(replace(shape, batch_size=size)).total_bytes <= available:
            best = size
    return best


def training_options(shape: TrainingShape, available: int, recipe_key: str) -> list[tuple[str, int]]:
    """The changes that would make a training stage fit, each with its estimated peak (bytes)."""

    def peak(**changes) -> int:
        return estimate_training(replace(shape, **changes)).total_bytes

    options: list[tuple[str, int]] = []
    if shape.lora is None:
        lora = suggested_lora(shape.model)
        options.append((f"peft=lora (r={lora.r} on {', '.join(lora.target_modules)})", peak(lora=lora)))
    if not shape.gradient_checkpointing:
        options.append((f"{recipe_key}.gradient_checkpointing=true", peak(gradient_checkpointing=True)))
    batch = largest_fitting_batch(shape, available)
    if batch is not None:
        # `shape.batch_size` is one process's share; the recipe's batch_size is the global batch of all processes.
        processes = world_size()
        factor = math.ceil(shape.batch_size / batch)
        options.append(
            (
                f"{recipe_key}.batch_size={batch * processes} with gradient_accumulation_steps × {factor} (same "
                "effective batch" + (f"; {batch} per process)" if processes > 1 else ")"),
                peak(batch_size=batch),
            )
        )
    if shape.optimizer != "adamw_8bit" and shape.on_cuda:
        options.append(
            (f"{recipe_key}.optimizer=adamw_8bit (pip install bitsandbytes)", peak(optimizer="adamw_8bit"))
        )
    full = estimate_training(shape)
    shardable = ("weights", "optimizer states", "gradients", "optimizer step")
    sharded = sum(full.components.get(name, 0) for name in shardable)
    unsharded = full.total_bytes - sharded
    if unsharded < available:
        gpus = next((n for n in (2, 4, 8, 16, 32, 64) if unsharded + sharded / n <= available), None)
        if gpus is not None:
            options.append(
                (
                    f"FSDP over {gpus} GPUs (docs/distributed.md; weights, gradients and states sharded)",
                    int(unsharded + sharded / gpus),
                )
            )
    return options


def suggested_lora(model: ModelShape) -> LoraShape:
    """The LoRA the options suggest: rank 16 on every projection, its count from the layer shapes."""
    h, i, kv, r = model.hidden_size, model.intermediate_size, model.kv_size, SUGGESTED_LORA_RANK
    heads = model.n_heads * model.head_dim
    per_layer = r * ((h + heads) + (h + kv) * 2 + (heads + h) + (h + i) * 2 + (i + h))
    return LoraShape(per_layer * model.n_layers, r, SUGGESTED_LORA_TARGETS)


def require_memory(
    estimate: MemoryEstimate, device: str, stage: str, *, recipe_key: str = "the recipe", options=None
) -> None:
    """Raise InsufficientMemoryError when `estimate` exceeds what `device` has free; log the figures otherwise.

    `options`: (change, estimated bytes) pairs to offer; default: for a training stage, the training options, with
    `recipe_key` (e.g. benchmark.target_recipe) naming the keys to change."""
    available, where = available_memory(device)
    required = estimate.total_bytes
    log.info("%s: estimated peak %s, %s free %s", stage, human_bytes(required), where, human_bytes(available))
    if required <= available:
        return
    if options is None and estimate.training is not None:
        options = training_options(estimate.training, available, recipe_key)
    raise InsufficientMemoryError(refusal_message(estimate, stage, available, where, options or []))


def format_components(estimate: MemoryEstimate) -> str:
    return ", ".join(f"{name} {human_bytes(value)}" for name, value in estimate.components.items())


def format_options(options, available: int | None = None) -> str:
    def verdict(value: int) -> str:
        return "" if available is None else (" fits" if value <= available else " still too much")

    return "; ".join(f"{change} (≈ {human_bytes(value)}{verdict(value)})" for change, value in options)


def refusal_message(estimate: MemoryEstimate, stage: str, available: int, where: str, options) -> str:
    text = (
        f"{stage} would need about {human_bytes(estimate.total_bytes)} of {where} and {human_bytes(available)} is "
        f"free ({format_components(estimate)}; {estimate.description}); nothing was loaded."
    )
    if options:
        text += f" Options: {format_options(options, available)}."
    return text + " To run it anyway, set preflight.memory=false."
