"""The memory preflight's hooks: each stage's shape from the config and its data, checked before the model loads.

The estimate itself is msa_bench/pipeline/memory_preflight.py. Each hook returns the estimate in MiB for the stage's
CostMeter, and raises InsufficientMemoryError (unless preflight.memory=false) when the stage will not fit.
"""

from __future__ import annotations

from pathlib import Path

from msa_bench.config.recipes import recipe_key
from msa_bench.config.schema import TrainRecipe
from msa_bench.data.formatting import encode_prompt
from msa_bench.distributed import first_problem_of_any_rank, per_device_batch_size
from msa_bench.errors import InsufficientMemoryError
from msa_bench.failures import human_bytes, remember_memory_estimate
from msa_bench.models.build import trusts_remote_code
from msa_bench.pipeline.memory_preflight import (
    LoraShape,
    MemoryEstimate,
    ModelShape,
    TrainingShape,
    available_memory,
    estimate_evaluation,
    estimate_training,
    format_components,
    format_options,
    lora_trainable_parameters,
    model_shape,
    read_config,
    require_memory,
    training_options,
)


def _lora(pipeline, lora, config) -> LoraShape | None:
    """The LoRA the stage trains with: the same plan (training/lora.py lora_plan) the stage's build applies."""
    if lora is None:
        return None
    settings = lora.settings
    targets = tuple(settings.target_modules)
    count = lora_trainable_parameters(config, settings.r, targets, trusts_remote_code(pipeline.cfg.model))
    return LoraShape(count, settings.r, targets, float(settings.dropout))


def _longest(examples) -> int:
    return max((len(example["input_ids"]) for example in examples), default=1)


def _training_shape(pipeline, shape: ModelShape, recipe: TrainRecipe, length: int, **extra) -> TrainingShape:
    return TrainingShape(
        model=shape,
        dtype=pipeline.cfg.model.dtype,
        # Each of N processes holds batch_size / N sequences (the recipe's batch is the global batch).
        batch_size=per_device_batch_size(recipe.batch_size),
        sequence_length=length,
        gradient_checkpointing=recipe.gradient_checkpointing,
        optimizer=recipe.optimizer,
        mixed_precision=recipe.mixed_precision,
        on_cuda=str(pipeline.device).startswith("cuda"),
        **extra,
    )


def _check(
    pipeline, estimate: MemoryEstimate, stage: str, recipe: TrainRecipe | None = None, options=None
) -> float:
    """Remember the stage's figures for an out-of-memory message, and refuse it now if it will not fit."""
    key = recipe_key(pipeline.cfg, recipe) if recipe is not None else "the recipe"
    available, where = available_memory(pipeline.device)
    if options is None and estimate.training is not None:
        options = training_options(estimate.training, available, key)
    remember_memory_estimate(
        f"the memory preflight estimated {human_bytes(estimate.total_bytes)} for stage {stage} "
        f"({format_components(estimate)}) with {human_bytes(available)} of {where} free"
        + (f"; options: {format_options(options)}" if options else "")
    )
    if pipeline.cfg.preflight.memory:
        try:
            require_memory(estimate, pipeline.device, f"stage {stage}", recipe_key=key, options=options)
            refusal = None
        except InsufficientMemoryError as error:
            refusal = str(error)
        # Each rank checks its own device; one that cannot fit the stage stops them all (a training stage runs on
        # every rank, and the others would wait in its first all-reduce).
        refusal = first_problem_of_any_rank(refusal)
        if refusal is not None:
            raise InsufficientMemoryError(refusal)
    return estimate.total_mb


def check_finetune(pipeline, stage: str, model_dir: Path, recipe: TrainRecipe, examples, lora=None) -> float:
    """Before a fine-tune (benchmark_models.finetuned_model) loads `model_dir`; `lora` is its LoraPlan or None."""
    config = read_config(model_dir, trusts_remote_code(pipeline.cfg.model))
    shape = model_shape(config, trusts_remote_code(pipeline.cfg.model))
    training = _training_shape(
        pipeline, shape, recipe, _longest(examples), lora=_lora(pipeline, lora, config)
    )
    return _check(pipeline, estimate_training(training, stage), stage, recipe)


def check_built_model(pipeline, stage: str, model, recipe: TrainRecipe, examples) -> float:
    """Before the embedded model's pretraining: the model is built here, not loaded, and small; its weights are
    already in memory, so this mostly guards the batch shape."""
    shape = ModelShape.from_config(model.config, sum(p.numel() for _, p in model.named_parameters()))
    training = _training_shape(pipeline, shape, recipe, _longest(examples))
    return _check(pipeline, estimate_training(training, stage), stage, recipe)


def check_unlearning(
    pipeline,
    method: str,
    model_dir: Path,
    recipe: TrainRecipe,
    forget,
    retain,
    *,
    keeps_reference: bool,
    reference_device: str | None,
    lora=None,
) -> float:
    """Before a loss-based method (methods/gradient_unlearning.py) loads θ_D: forget and retain batches go through
    one backward pass; a reference model kept for training without reference_device shares the policy's device."""
    config = read_config(model_dir, trusts_remote_code(pipeline.cfg.model))
    shape = model_shape(config, trusts_remote_code(pipeline.cfg.model))
    length = max(_longest(forget), _longest(retain or []))
    training = _training_shape(
        pipeline,
        shape,
        recipe,
        length,
        forward_batches=2 if retain else 1,
        reference_on_device=keeps_reference and reference_device in (None, str(pipeline.device)),
        lora=_lora(pipeline, lora, config),
    )
    return _check(pipeline, estimate_training(training, method), method, recipe)


def _evaluation_new_tokens(pipeline, plan) -> int:
    settings = pipeline.cfg.metrics
    tokens = [settings.max_new_tokens]
    if "muse" in plan:
        tokens += [settings.muse.verbmem_max_new_tokens, settings.muse.knowmem_max_new_tokens]
    return max(tokens)


# The fields of an eval-set item that a suite turns into a prompt; every other string (or list of strings) of the item
# is something scored after that prompt (an answer, a paraphrase, a perturbed answer, a continuation).
_PROMPT_FIELDS = ("question", "prompt")


def _longest_scored_sequence(tokenizer, eval_sets: dict[str, list[dict]], limit: int) -> int:
    """The most tokens one scored sequence of these eval sets takes (prompt in the model's format + the longest text
    scored after it + eos), at most `limit`: the evaluation's batch shape, rather than the whole context."""
    longest = 1
    for items in eval_sets.values():
        for item in items:
            prompt = next((item[f] for f in _PROMPT_FIELDS if isinstance(item.get(f), str)), "")
            texts = [v for k, v in item.items() if k not in _PROMPT_FIELDS and isinstance(v, str)]
            texts += [x for v in item.values() if isinstance(v, list) for x in v if isinstance(x, str)]
            prompt_tokens = len(encode_prompt(tokenizer, prompt)) if prompt else 1
            answer_tokens = max(
                (len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts), default=0
            )
            longest = max(longest, prompt_tokens + answer_tokens + 1)
            if longest >= limit:
                return limit
    return longest


def check_evaluation(pipeline, label: str, model_dir: Path, plan, eval_sets: dict[str, list[dict]]) -> float:
    """Before an evaluation loads `model_dir`: the batch is metrics.batch_size sequences as long as the longest
    scored sequence of `eval_sets` (at most model.max_position_embeddings)."""
    config = read_config(model_dir, trusts_remote_code(pipeline.cfg.model))
    shape = model_shape(config, trusts_remote_code(pipeline.cfg.model))
    settings, dtype = pipeline.cfg.metrics, pipeline.cfg.model.dtype
    length = _longest_scored_sequence(
        pipeline.tokenizer(), eval_sets, pipeline.cfg.model.max_position_embeddings
    )
    new_tokens = _evaluation_new_tokens(pipeline, plan)
    stage = f"eval:{label}"
    estimate = estimate_evaluation(shape, dtype, settings.batch_size, length, new_tokens, stage)
    available, _ = available_memory(pipeline.device)
    options = evaluation_options(shape, dtype, settings.batch_size, length, new_tokens, available)
    return _check(pipeline, estimate, stage, options=options)


def evaluation_options(
    shape: ModelShape, dtype: str, batch: int, length: int, new_tokens: int, available: int
):
    options = []
    fitting = [
        size
        for size in range(1, batch)
        if estimate_evaluation(shape, dtype, size, length, new_tokens).total_bytes <= available
    ]
    if fitting:
        size = fitting[-1]
        options.append(
            (
                f"metrics.batch_size={size}",
                estimate_evaluation(shape, dtype, size, length, new_tokens).total_bytes,
            )
        )
    if dtype == "float32":
        options.append(
            (
                "model.dtype=bfloat16",
                estimate_evaluation(shape, "bfloat16", batch, length, new_tokens).total_bytes,
            )
        )
    return options
