"""Training on top of transformers' Trainer.

Every stage that updates weights (pretraining, instruct, the target and oracle, the fine-tunes behind θ1 and θ2, and
the gradient-based unlearning methods) runs through `Trainer`, with a method overriding only `compute_loss`, as TRL
and open-unlearning do. Several processes (torchrun, `accelerate launch` with accelerate_configs/*.yaml) train together
through the Trainer's DDP, FSDP or DeepSpeed: `recipe.batch_size` is the global batch, shared out by the Trainer's
sampler, and sharded weights are gathered for rank 0's save (docs/distributed.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from msa_bench.config.schema import TrainRecipe
from msa_bench.distributed import (
    in_lockstep,
    per_device_batch_size,
    require_same_on_all_ranks,
    sum_over_ranks,
    world_size,
)
from msa_bench.errors import ConfigError, DivergenceError  # noqa: F401  (re-exported)
from msa_bench.failures import remember_failure_context
from msa_bench.progress import current_progress
from msa_bench.training.data import ExampleDataset, PaddingCollator
from msa_bench.training.losses import mean_token_kl, mean_token_nll, sequence_nll_from_logits
from msa_bench.training.scratch import scratch_folder


class CausalLMTrainer(Trainer):
    """Plain supervised training on labelled tokens; counts the tokens it processes."""

    # Our losses are means over one micro-batch, so the Trainer must divide them by the accumulation steps. Without
    # this, it skips the division whenever a batch has top-level labels and the model accepts loss kwargs.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_processed = 0

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            # Group lengths over the global batch, not one rank's share: the sampler's order is then the same for
            # N processes as for one, and accelerate deals its consecutive batches out to the ranks, so each
            # optimizer step sees the same examples whatever the number of processes.
            sampler.batch_size = (
                self.args.train_batch_size * self.args.gradient_accumulation_steps * world_size()
            )
        return sampler

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> None:
        self.tokens_processed += int(batch["attention_mask"].sum())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.count_tokens(inputs)
        loss = mean_token_nll(model, inputs)
        self.check_finite(loss, "nll")
        return (loss, None) if return_outputs else loss

    def check_finite(self, loss: torch.Tensor, term: str) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise DivergenceError(
                f"non-finite {term} loss ({loss.item()}) at step {self.state.global_step}; "
                "lower the learning rate or the number of epochs"
            )


class LossOverrideTrainer(CausalLMTrainer):
    """A Trainer whose loss is a method's function of (trainer, model, inputs): how unlearning methods plug in.

    It holds what loss functions share: the frozen reference model (once, in inference mode, on
    `reference_device` or the policy's device), precomputed reference values, the retain term and the divergence
    guard.
    """

    def __init__(
        self,
        *args,
        loss_fn,
        method_name: str = "method",
        method_config=None,
        reference_model=None,
        reference_device: str | None = None,
        reference_forget_nll: torch.Tensor | None = None,
        loss_bound: float | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.method_name = method_name
        self.method_config = method_config
        self.reference_model = reference_model
        self.reference_forget_nll = reference_forget_nll
        self.loss_bound = loss_bound
        self.reference_device = torch.device(reference_device) if reference_device else self.args.device
        if reference_model is not None:
            self.reference_model.to(self.reference_device).eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.loss_fn(self, model, inputs)
        self.check_finite(loss, "total")
        return (loss, None) if return_outputs else loss

    def check_finite(self, loss: torch.Tensor, term: str) -> None:
        value = loss.detach()
        if not torch.isfinite(value).all():
            raise DivergenceError(
                f"{self.method_name}: non-finite {term} loss ({value.item()}) at step {self.state.global_step}; "
                "lower the learning rate or the number of epochs"
            )
        if self.loss_bound is not None and value.abs().max().item() > self.loss_bound:
            raise DivergenceError(
                f"{self.method_name}: {term} loss {value.item():.4g} at step {self.state.global_step} exceeds "
                f"method.loss_bound={self.loss_bound}; the run is stopped and nothing is saved"
            )

    def reference_outputs(self, batch: dict[str, torch.Tensor]):
        """The frozen reference model's forward on `batch` (moved to its device), with no autograd."""
        if self.reference_model is None:
            raise RuntimeError(f"{self.method_name} needs a reference model but none was loaded")
        moved = {
            k: v.to(self.reference_device) for k, v in batch.items() if k in ("input_ids", "attention_mask")
        }
        with torch.no_grad():
            return self.reference_model(**moved)

    def reference_sequence_nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed NLL of each forget sequence under the reference: precomputed when configured, else computed."""
        if self.reference_forget_nll is not None and "index" in batch:
            return self.reference_forget_nll.to(batch["input_ids"].device)[batch["index"]]
        with torch.no_grad():
            logits = self.reference_outputs(batch).logits.to(batch["input_ids"].device)
        return sequence_nll_from_logits(logits, batch["labels"])[0]

    def retain_loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The retain term: NLL on the retain batch, or KL(reference ‖ model) on it (method.retain_loss)."""
        kind = getattr(self.method_config, "retain_loss", "nll")
        self.count_tokens(batch)
        if kind == "nll":
            loss = mean_token_nll(model, batch)
        elif kind == "kl":
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            reference_logits = self.reference_outputs(batch).logits.to(logits.device)
            loss = mean_token_kl(reference_logits, logits, batch["labels"])
        else:
            raise ValueError(f"method.retain_loss={kind!r} is not valid; use 'nll' or 'kl'")
        self.check_finite(loss, f"retain ({kind})")
        return loss


@dataclass
class TrainStats:
    steps: int
    tokens: int  # on this rank
    seconds: float
    final_loss: float | None
    # The full weights, gathered on rank 0, when FSDP or DeepSpeed ZeRO-3 shard the model: pass it to save_model.
    state_dict: dict | None = None
    epoch: float | None = None  # epochs trained (fractional where the last one was cut short)
    # Wall seconds spent saving the intermediate states of `save_points` (included in `seconds`).
    save_seconds: float = 0.0


@dataclass(frozen=True)
class SavePoints:
    """Intermediate model states a training run saves (the unlearning dynamics, docs/unlearning_dynamics.md): after
    every `every_epochs` epochs or every `every_steps` optimizer steps (one of the two), but never at the last step,
    whose state the caller saves as the stage's model. `save(step, epoch, state_dict)` writes one state; state_dict
    is the full weights gathered under FSDP/ZeRO-3, None otherwise (as TrainStats.state_dict)."""

    save: Callable[[int, float, dict | None], None]
    every_epochs: int | None = None
    every_steps: int | None = None


class _SaveAtPoints(TrainerCallback):
    def __init__(self, points: SavePoints):
        self.points = points
        self.trainer: Trainer | None = None  # set once the trainer exists: gathering sharded weights needs it
        self.epochs_done = 0
        self.seconds = 0.0  # spent saving, so that the caller can keep it out of the stage's training cost

    def _save(self, state) -> None:
        if state.global_step >= state.max_steps:
            return  # the final state is the caller's to save
        start = time.perf_counter()
        state_dict = gathered_state_dict(self.trainer)  # a collective: every rank runs the callbacks
        self.points.save(state.global_step, round(float(state.epoch), 6), state_dict)
        self.seconds += time.perf_counter() - start

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs_done += 1
        if self.points.every_epochs and self.epochs_done % self.points.every_epochs == 0:
            self._save(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.points.every_steps and state.global_step % self.points.every_steps == 0:
            self._save(state)


class _SaveAtSteps(TrainerCallback):
    def __init__(self, steps: Sequence[int], save_fn):
        self.steps = set(steps)
        self.save_fn = save_fn

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            self.save_fn(state.global_step)


class _ReportSteps(TrainerCallback):
    """Tells the run's console display how many optimizer steps are done (it estimates the time left from them)."""

    def on_step_end(self, args, state, control, **kwargs):
        current_progress().training_step(state.global_step, state.max_steps)


def steps_per_epoch(n_examples: int, recipe: TrainRecipe) -> int:
    return max(1, math.ceil(n_examples / (recipe.batch_size * recipe.gradient_accumulation_steps)))


def total_steps(n_examples: int, recipe: TrainRecipe) -> int:
    if recipe.max_steps is not None:
        return recipe.max_steps
    return max(1, math.ceil(steps_per_epoch(n_examples, recipe) * recipe.epochs))


# recipe.optimizer -> TrainingArguments.optim.
OPTIMIZERS = {
    "adamw_torch": "adamw_torch",
    "adamw_torch_fused": "adamw_torch_fused",
    "adamw_8bit": "adamw_bnb_8bit",
}


def memory_arguments(recipe: TrainRecipe, device: str) -> dict:
    """The TrainingArguments of the recipe's memory options (docs/memory.md). At their defaults they are exactly
    the arguments used before the options existed, so a default recipe trains bit-identically.

    validate_config refuses the CUDA-only choices with the recipe's dotted key; this repeats the check for callers
    that build a recipe in code."""
    on_cuda = str(device).startswith("cuda")
    if recipe.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer={recipe.optimizer!r} is not valid; choose one of {sorted(OPTIMIZERS)}")
    if recipe.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(
            f"mixed_precision={recipe.mixed_precision!r} is not valid; choose one of no, bf16, fp16"
        )
    if not on_cuda and (recipe.mixed_precision == "fp16" or recipe.optimizer == "adamw_8bit"):
        raise ConfigError(
            f"recipe mixed_precision={recipe.mixed_precision} / optimizer={recipe.optimizer}: fp16 and adamw_8bit "
            f"need a CUDA GPU and this stage runs on {device}; use mixed_precision=bf16 or no, optimizer=adamw_torch"
        )
    arguments: dict = {
        "optim": OPTIMIZERS[recipe.optimizer],
        "bf16": recipe.mixed_precision == "bf16",
        "fp16": recipe.mixed_precision == "fp16",
    }
    if recipe.gradient_checkpointing:
        # (transformers 5 names it activation checkpointing.) The non-reentrant variant also trains when the inputs
        # need no gradient (frozen embeddings under LoRA: open-unlearning #178 left lora_B at zero).
        arguments["activation_checkpointing"] = True
        arguments["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return arguments


def run_training(
    model,
    dataset: Dataset,
    recipe: TrainRecipe,
    *,
    pad_token_id: int,
    seed: int,
    device: str,
    progress: bool = True,
    trainer_class: type[CausalLMTrainer] = CausalLMTrainer,
    trainer_kwargs: dict | None = None,
    save_at_steps: Sequence[int] = (),
    save_fn=None,
    save_points: SavePoints | None = None,
    group_by_length: bool | None = None,
    scratch_root: Path | None = None,
) -> TrainStats:
    """Train `model` in place on `dataset` with `recipe`; optionally call save_fn(step) at the given steps, or save
    the intermediate states `save_points` asks for.

    The Trainer's output folder is a scratch folder under `scratch_root` (the artifact cache), removed at the end
    and swept at the next run's start if this process is killed; without `scratch_root`, a system temporary folder.
    """
    n_steps = total_steps(len(dataset), recipe)
    if in_lockstep():
        require_same_on_all_ranks(dataset_digest(dataset), "the training data (a digest of every example)")
    if group_by_length is None:
        # Batching examples of similar length avoids padding short QA to the length of a pretraining block.
        group_by_length = isinstance(dataset, ExampleDataset)
    start = time.perf_counter()
    with scratch_folder(scratch_root) as scratch:
        args = TrainingArguments(
            output_dir=str(scratch),
            per_device_train_batch_size=per_device_batch_size(recipe.batch_size),
            gradient_accumulation_steps=recipe.gradient_accumulation_steps,
            max_steps=n_steps,
            learning_rate=recipe.learning_rate,
            weight_decay=recipe.weight_decay,
            warmup_steps=recipe.warmup_ratio,
            lr_scheduler_type=recipe.lr_scheduler,
            max_grad_norm=recipe.max_grad_norm,
            **memory_arguments(recipe, device),
            logging_steps=max(1, n_steps // 10),
            # The default (True) leaves NaN/inf losses out of the logged average: a diverged run would look healthy.
            logging_nan_inf_filter=False,
            save_strategy="no",
            report_to="none",
            disable_tqdm=not progress,
            use_cpu=device == "cpu",
            seed=seed,
            data_seed=seed,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            train_sampling_strategy="group_by_length" if group_by_length else "random",
        )
        callbacks: list[TrainerCallback] = [_ReportSteps()]
        if save_at_steps:
            callbacks.append(_SaveAtSteps(save_at_steps, save_fn))
        point_saver = _SaveAtPoints(save_points) if save_points is not None else None
        if point_saver is not None:
            callbacks.append(point_saver)
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=PaddingCollator(pad_token_id),
            callbacks=callbacks,
            **(trainer_kwargs or {}),
        )
        if point_saver is not None:
            point_saver.trainer = trainer
        try:
            result = trainer.train()
        except BaseException as error:  # an out-of-memory error names the batch size it ran at (failures.py)
            remember_failure_context(
                error,
                batch_size=recipe.batch_size,
                gradient_accumulation_steps=recipe.gradient_accumulation_steps,
            )
            raise
        state_dict = gathered_state_dict(trainer)
    model.eval()
    return TrainStats(
        steps=n_steps,
        tokens=sum_over_ranks(trainer.tokens_processed),  # every rank's share
        seconds=time.perf_counter() - start,
        final_loss=float(result.training_loss) if result.training_loss is not None else None,
        state_dict=state_dict,
        epoch=float(trainer.state.epoch) if trainer.state.epoch is not None else None,
        save_seconds=point_saver.seconds if point_saver is not None else 0.0,
    )


def gathered_state_dict(trainer: Trainer) -> dict | None:
    """The full state dict on rank 0 when FSDP or ZeRO-3 shard the model (every rank must call this: the gather is
    a collective), None when the model's own parameters are whole (one process, DDP). Not run here: see
    docs/distributed.md. FSDP needs fsdp_state_dict_type FULL_STATE_DICT and ZeRO-3
    stage3_gather_16bit_weights_on_model_save true, as accelerate_configs/*.yaml set."""
    if not (getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)):
        return None
    if hasattr(trainer.model, "peft_config"):
        # The gathered dict would hold the wrapped model's names (base_model.model..., lora_A/B), which neither the
        # merge nor the factor storage (training/lora.py) reads.
        raise ConfigError(
            "peft=lora with FSDP or DeepSpeed ZeRO-3 is not supported: LoRA's small optimizer state fits one GPU, so "
            "train LoRA with DDP (torchrun, or accelerate_configs/ddp.yaml) or on one GPU"
        )
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def dataset_digest(dataset: Dataset) -> str:
    """A sha256 of every example's token ids and labels, to check that all ranks train on the same data."""
    digest = hashlib.sha256()
    for index in range(len(dataset)):
        digest.update(json.dumps(dataset[index], sort_keys=True, default=_tensor_as_list).encode())
    return digest.hexdigest()


def _tensor_as_list(value):
    return value.tolist() if isinstance(value, torch.Tensor) else str(value)
