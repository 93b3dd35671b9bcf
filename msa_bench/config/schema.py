"""Typed schemas for every config group.

Hydra merges each group's YAML onto the dataclass registered here, so a wrong type or an unknown key fails while the
config is composed, before any model is loaded, and the error names the dotted key. Required fields are MISSING.
Method and benchmark schemas live beside their plug-ins and are registered by msa_bench/plugins.py, a layer above this
one: config imports nothing else from msa_bench.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from msa_bench.config.attacks import AttacksConfig

# Stages of the embedded model's own history; a pretrained model names its earlier states as hub revisions.
EMBEDDED_STAGES = ("pretrain", "base", "instruct")
CHECKPOINT_STAGES = (*EMBEDDED_STAGES, "closest", "target", "revision")
# The closed sets of string values, by dotted key: validate_config checks each, naming the key and the valid values.
CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "logger.backend": ("wandb", "none"),
    "logger.mode": ("offline", "online", "disabled"),
    "model.source": ("embedded", "pretrained"),
    "model.prompt.format": ("plain", "chat"),
    "model.arithmetic_dtype": ("float32", "bfloat16"),
    "checkpoint.stage": CHECKPOINT_STAGES,
    "peft.name": ("none", "lora"),
    "peft.vector_storage": ("merged", "factors"),
}
# The closed value sets of every TrainRecipe's string fields; validate_config checks them in each recipe of a config.
RECIPE_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adamw_torch", "adamw_torch_fused", "adamw_8bit"),
    "mixed_precision": ("no", "bf16", "fp16"),
}
# A field with this metadata key (true) is left out of cache keys while it has its default value (cache_keys.py).
OMIT_AT_DEFAULT = "omit_from_cache_key_at_default"
# The seeds numpy and torch accept (inclusive): validate_config checks `seed` against it.
SEED_RANGE = (0, 2**32 - 1)


@dataclass
class TrainRecipe:
    """How one fine-tuning or pretraining stage trains (HF Trainer arguments we expose)."""

    epochs: float = 10.0
    learning_rate: float = 1e-3
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    # Memory options (docs/memory.md). At their defaults they are left out of cache keys (config/cache_keys.py), so
    # the caches made before they existed stay valid. gradient_checkpointing recomputes each layer's activations in
    # the backward pass (use_reentrant=False); optimizer: adamw_torch | adamw_torch_fused | adamw_8bit
    # (bitsandbytes, CUDA only); mixed_precision: no (train in model.dtype) | bf16 | fp16 (autocast; fp16 on CUDA only).
    gradient_checkpointing: bool = field(default=False, metadata={OMIT_AT_DEFAULT: True})
    optimizer: str = field(default="adamw_torch", metadata={OMIT_AT_DEFAULT: True})
    mixed_precision: str = field(default="no", metadata={OMIT_AT_DEFAULT: True})
    # A fixed number of optimizer steps instead of `epochs` (the relearning attacks train k steps); null: epochs.
    max_steps: int | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})


@dataclass
class PretrainConfig:
    """The embedded model's pretraining on the generated corpus, with its saved model-state history."""

    block_size: int = 128
    recipe: TrainRecipe = field(
        default_factory=lambda: TrainRecipe(
            epochs=24, learning_rate=4e-3, batch_size=32, warmup_ratio=0.05, lr_scheduler="cosine"
        )
    )
    # A checkpoint is kept every this many optimizer steps; the end of pretraining is always kept as `base`.
    checkpoint_every: int = 100


@dataclass
class PromptConfig:
    """How a question becomes a prompt (msa_bench/data/formatting.py).

    plain: "Question: {q}\nAnswer:" then " {answer}" + eos, for base and small models.
    chat: the tokenizer's chat template (system prompt, user turn, generation prompt), for instruct models. The system
    prompt and the date a template inserts are pinned here so that token sequences do not change from day to day."""

    format: str = "plain"  # plain | chat
    system_prompt: str | None = None
    date_string: str | None = "10 Apr 2025"


@dataclass
class ModelConfig:
    """What every model is configured with; a model YAML extends one of the two variants below."""

    name: str = MISSING
    # embedded: the small Llama trained here with its own history (EmbeddedModelConfig);
    # pretrained: a Hugging Face model (hub_id at revision), whose earlier states the `checkpoint` group names.
    source: str = MISSING
    max_position_embeddings: int = 256
    # Weights are loaded, trained and evaluated in `dtype` (bfloat16 for paper-scale models on a GPU);
    # model-state arithmetic accumulates in `arithmetic_dtype` (float32 unless memory forbids) and writes `dtype`.
    dtype: str = "float32"
    arithmetic_dtype: str = "float32"
    prompt: PromptConfig = field(default_factory=PromptConfig)


@dataclass
class EmbeddedModelConfig(ModelConfig):
    """The embedded model: its size, its pretraining and its instruct stage (/schema/model/embedded)."""

    source: str = "embedded"
    architecture: str = "llama"
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    tie_word_embeddings: bool = False
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    instruct: TrainRecipe = field(
        default_factory=lambda: TrainRecipe(epochs=3, learning_rate=1e-3, batch_size=32)
    )


@dataclass
class PretrainedModelConfig(ModelConfig):
    """A Hugging Face model at a revision (/schema/model/pretrained)."""

    source: str = "pretrained"
    hub_id: str = MISSING
    revision: str = "main"
    # A folder holding <hub_id>/<revision>/ model folders (offline copies, test stand-ins); null: the hub and its cache.
    local_root: str | None = None
    # Whether Python files shipped with the model (named by `auto_map` in config.json or tokenizer_config.json) may
    # run here. false (the default): such a model is refused with an error, never an interactive prompt. true: its
    # code runs, with a warning naming the repository; set it only for a repository whose code you have read.
    trust_remote_code: bool = False


# model.source -> the schema a model YAML of that source extends.
MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {
    "embedded": EmbeddedModelConfig,
    "pretrained": PretrainedModelConfig,
}


@dataclass
class CheckpointConfig:
    """Which saved model state MSA starts from (θ0)."""

    name: str = MISSING
    # Embedded model: pretrain (a saved pretraining step; needs `step`), base (end of pretraining), instruct (after
    # the QA stage). Any model: closest (the last state before the forget set was seen: the model the target was
    # fine-tuned from), target (θ_D itself, which turns MSA into task arithmetic). Pretrained model: revision
    # (`hub_id`, default model.hub_id, at `revision`).
    stage: str = MISSING
    step: int | None = None
    hub_id: str | None = None
    revision: str | None = None
    # Where the revision name comes from and how sure it is (e.g. "inferred from token counts; unverified").
    provenance: str | None = None


@dataclass
class WorldConfig:
    """Size of the generated TOFU-style world (see msa_bench/data/synthetic.py)."""

    seed: int = 0
    n_benchmark_authors: int = 100
    n_holdout_authors: int = 10
    n_instruct_authors: int = 200
    n_famous_authors: int = 40
    n_countries: int = 30
    bios_per_author: int = 3
    n_perturbed: int = 5


@dataclass
class BenchmarkConfig:
    """What every benchmark kind is configured with. A kind with settings of its own extends this beside its class
    (msa_bench/benchmarks/*: `config_class`), and its YAML names that schema, so a key of another kind fails at
    composition."""

    name: str = MISSING
    # A registered kind (msa_bench/benchmarks): synthetic_tofu (generated) | tofu | restor | muse.
    kind: str = MISSING
    # The forget set; each kind says which names it accepts (TOFU: forget01/05/10, RESTOR: mix_a<k>, MUSE: forget).
    forget_split: str = MISSING
    # Real benchmarks: a local folder of the benchmark's files; when null, `hub_id` is loaded with `datasets`.
    data_dir: str | None = None
    hub_id: str | None = None
    # The generated world behind the embedded model's pretraining and instruct data (and the synthetic benchmark).
    world: WorldConfig = field(default_factory=WorldConfig)
    # The recipe that makes the target (instruct model on the full benchmark) and the oracle (on the retain split).
    target_recipe: TrainRecipe = field(default_factory=lambda: TrainRecipe(epochs=10, learning_rate=1e-3))
    # Pretraining blocks and instruct QA mixed into the target/oracle fine-tune, as a fraction of the benchmark
    # examples, so that world knowledge learnt in pretraining survives the fine-tune.
    replay_fraction: float = 0.5
    # How many retain items (from retain_perturbed) the retain metrics use.
    retain_eval_size: int = 100
    # Raw-text items (RESTOR, MUSE) are packed into chunks of this many tokens for training.
    block_size: int = 128
    # Use only the first N documents of each raw corpus (null: all); for CPU-scale runs.
    max_documents: int | None = None
    # Sequential deletion requests (docs/sequential_requests.md): the forget set split into this many disjoint
    # requests (by author for TOFU, by document for MUSE), unlearned one after another. null or 1: one request, the
    # whole forget set, as before the option existed.
    requests: int | None = None
    # The noise floor (msa_bench/pipeline/noise_floor.py, docs/reporting.md): this many oracles, the run's and N - 1
    # more trained with seeds seed + 1000·i on the same data; each is scored against the others by the run's
    # cross-model metrics (forget quality, privleak). 1: the run's oracle only.
    oracle_seeds: int = 1
    # Which forget set the run unlearns and evaluates (docs/validation_protocol.md): test (the forget split) or
    # validation (a disjoint set the target learnt, with a validation oracle that never saw it: TOFU's authors before
    # the forget split, MUSE's last retain texts), to choose hyperparameters on with `msa-bench report --select-on
    # validation`.
    forget_set: str = "test"


@dataclass
class JudgeConfig:
    """Who decides which candidate answer a generation matches (the paper's judged accuracies)."""

    kind: str = "rouge"  # rouge (offline, deterministic) | openai (an OpenAI-compatible chat endpoint)
    url: str | None = None  # e.g. http://localhost:8000/v1 for kind=openai
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key, if any
    timeout_seconds: float = 30.0


@dataclass
class LmEvalConfig:
    # Local tasks built from the benchmark (e.g. msa_world_facts_mc) and/or any lm-eval task name.
    tasks: list[str] = field(default_factory=lambda: ["msa_world_facts_mc", "msa_real_authors_mc"])
    include_path: str | None = None  # a folder of extra task YAMLs
    limit: int | None = None
    batch_size: int = 32


@dataclass
class MuseMetricsConfig:
    # A MUSE-layout folder (e.g. ../shared/data/muse-news) to evaluate on; null builds MUSE-style sets from the
    # benchmark's own QA (see msa_bench/data/muse.py).
    data_dir: str | None = None
    verbmem_max_new_tokens: int = 128
    knowmem_max_new_tokens: int = 32
    icl_shots: int = 10


@dataclass
class SamplingConfig:
    """How the generation metrics decode (msa_bench/metrics/core/decoding.py). The default, one sample at temperature 0,
    is greedy decoding; with num_samples = k > 1 at temperature > 0 each generation metric's per-item value is the
    maximum over k sampled answers (leak@k, arXiv 2511.04934)."""

    num_samples: int = 1
    temperature: float = 0.0  # 0: greedy (then num_samples must be 1)
    top_p: float = 1.0  # nucleus sampling's probability mass; 1 keeps the whole distribution
    seed: int = 0  # each sample's random stream derives from (seed, sample index)


@dataclass
class MetricsConfig:
    name: str = MISSING
    names: list[str] = MISSING
    batch_size: int = 64
    max_new_tokens: int = 32
    mia_k: float = 0.4  # the k of min-k% and min-k%++ attacks
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    muse: MuseMetricsConfig = field(default_factory=MuseMetricsConfig)
    # Sampled decoding for the generation metrics; at its default (greedy) it is left out of cache keys.
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={OMIT_AT_DEFAULT: True})
    # forget_fluency's text classifier (msa_bench/metrics/fluency.py): a hub id or a local folder, and the name of
    # its fluent class in config.json's id2label (null: "clean"). Only evaluations that compute fluency key them.
    fluency_classifier: str = "madhurjindal/autonlp-Gibberish-Detector-492513457"
    fluency_label: str | None = None


@dataclass
class LoggerConfig:
    name: str = MISSING
    backend: str = "none"  # wandb | none
    mode: str = "offline"  # offline | online | disabled
    project: str = "msa_bench"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    # When an online wandb.init fails, the run logs to <run dir>/metrics.jsonl and says how to upload later; true
    # makes that failure an error instead.
    require_online: bool = False


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class CacheConfig:
    """How the artifact cache (paths.cache_dir) checks its entries; it never changes a result."""

    verify: bool = False
    """true: rehash every file of a cache entry each time it is read (a few seconds per GB). false: check every
    file's size on each read and its sha256 on the entry's first read in a process."""


@dataclass
class PreflightConfig:
    """Checks made before a stage loads anything; none changes a result (not part of the config hash)."""

    memory: bool = True
    """true: estimate each training and evaluation stage's peak memory from the model's config.json and refuse one
    that will not fit on the device, before loading (msa_bench/pipeline/memory_preflight.py). false: only record
    the estimate."""


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning (`peft=none|lora`; msa_bench/training/lora.py, docs/lora.md).

    lora: every fine-tune a method makes (MSA's θ1 and θ2, task arithmetic's fine-tune, each loss-based baseline)
    trains rank-`r` adapters on the linear modules whose names end with one of `target_modules`, through peft, and
    is merged afterwards (θ1 = θ0 + (alpha/r)·B·A), so the arithmetic and the evaluation see ordinary weights."""

    name: str = "none"  # none | lora
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Suffixes of module names (peft's matching: the name equals one or ends with "." + one).
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # The benchmark's own models (clean, target, oracle) are trained densely unless this is true.
    apply_to_target_oracle: bool = False
    # How MSA's and task arithmetic's fine-tuned vectors are cached: merged (a full model) or factors (only the
    # adapter, adapter_model.safetensors + adapter_config.json, which the arithmetic reads as scale·B@A).
    vector_storage: str = "merged"  # merged | factors


class ProgressMode(Enum):
    """`progress=`: auto (one line per stage; library output to the run's log file), verbose (everything on the
    console), off (only the table). `true` and `false`, the former on/off switch, mean auto and off.

    `library_bars` says whether libraries draw their own progress bars (verbose only): that is what the
    `progress: bool` parameters of the trainer and the metric suites mean.
    """

    auto = "auto"
    verbose = "verbose"
    off = "off"

    @property
    def library_bars(self) -> bool:
        return self is ProgressMode.verbose

    @classmethod
    def parse(cls, value: object) -> ProgressMode:
        if isinstance(value, cls):
            return value
        legacy = {"true": cls.auto, "false": cls.off}
        text = str(value).lower()
        if text in legacy:
            return legacy[text]
        if text in cls.__members__:
            return cls[text]
        raise ValueError(f"progress={value} must be one of {', '.join(cls.__members__)}")


@dataclass
class MSABenchConfig:
    # An EmbeddedModelConfig or a PretrainedModelConfig, as the model YAML's defaults name.
    model: Any = MISSING
    checkpoint: CheckpointConfig = MISSING
    # Each benchmark kind has its own schema (a BenchmarkConfig, registered by msa_bench.plugins).
    benchmark: Any = MISSING
    # Each method has its own schema (registered by msa_bench.methods); the method YAML extends it.
    method: Any = MISSING
    metrics: MetricsConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = MISSING
    cache: CacheConfig = field(default_factory=CacheConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    # Robustness attacks on the method, target and oracle (conf/attacks, docs/attacks.md); none by default.
    attacks: AttacksConfig = field(default_factory=AttacksConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 2
    progress: str = (
        "auto"  # a ProgressMode after validation (a string here so that progress=false still parses)
    )
    # With several processes (torchrun, accelerate, Slurm tasks): how long a rank waits for the others, e.g. while
    # rank 0 evaluates alone (msa_bench/distributed.py). 12 h, the Slurm launcher's timeout_min; torch's is 30 min.
    dist_timeout_minutes: float = 720.0
    # A single run into a folder holding another config's finished results.json is refused unless this is true;
    # then those results are replaced. Not part of the config hash.
    overwrite: bool = False

    def __post_init__(self):
        self.progress = ProgressMode.parse(self.progress)


def register_config_schemas() -> None:
    """Make the core schemas available to the YAML defaults lists (`/schema/<group>@_here_`); plug-in schemas are
    registered by msa_bench.plugins.register_schemas."""
    store = ConfigStore.instance()
    store.store(name="msa_bench_schema", node=MSABenchConfig)
    for source, node in MODEL_SCHEMAS.items():
        store.store(group="schema/model", name=source, node=node)
    for group, node in [
        ("checkpoint", CheckpointConfig),
        ("metrics", MetricsConfig),
        ("logger", LoggerConfig),
        ("paths", PathsConfig),
        ("peft", PeftConfig),
    ]:
        store.store(group=f"schema/{group}", name="base", node=node)
