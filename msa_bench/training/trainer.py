"""Training on top of transformers' Trainer.

Every stage that updates weights (pretraining, instruct, the target and oracle, the fine-tunes behind θ1 and θ2, and
the gradient-based unlearning methods) runs through `Trainer`, with a method overriding only `compute_loss`, as TRL
and open-unlearning do. Multi-GPU, DeepSpeed and FSDP then come from `accelerate launch` with no code of ours.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from msa_bench.config.schema import TrainRecipe
from msa_bench.training.data import ExampleDataset, PaddingCollator
from msa_bench.training.losses import mean_token_nll


class DivergenceError(RuntimeError):
    """A loss became non-finite; the run stops instead of reporting metrics of a broken model."""


class CausalLMTrainer(Trainer):
    """Plain supervised training on labelled tokens; counts the tokens it processes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_processed = 0

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
    """A Trainer whose loss is a method's function of (trainer, model, inputs): how unlearning methods plug in."""

    def __init__(self, *args, loss_fn, method_config=None, reference_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.method_config = method_config
        self.reference_model = reference_model
        if reference_model is not None:
            # Held once, frozen, in inference mode, on the policy's device.
            self.reference_model.to(self.args.device).eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.loss_fn(self, model, inputs)
        return (loss, None) if return_outputs else loss


@dataclass
class TrainStats:
    steps: int
    tokens: int
    seconds: float
    final_loss: float | None


class _SaveAtSteps(TrainerCallback):
    def __init__(self, steps: Sequence[int], save_fn):
        self.steps = set(steps)
        self.save_fn = save_fn

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            self.save_fn(state.global_step)


def steps_per_epoch(n_examples: int, recipe: TrainRecipe) -> int:
    return max(1, math.ceil(n_examples / (recipe.batch_size * recipe.gradient_accumulation_steps)))


def total_steps(n_examples: int, recipe: TrainRecipe) -> int:
    return max(1, math.ceil(steps_per_epoch(n_examples, recipe) * recipe.epochs))


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
    group_by_length: bool | None = None,
) -> TrainStats:
    """Train `model` in place on `dataset` with `recipe`; optionally call save_fn(step) at the given steps."""
    n_steps = total_steps(len(dataset), recipe)
    if group_by_length is None:
        # Batching examples of similar length avoids padding short QA to the length of a pretraining block.
        group_by_length = isinstance(dataset, ExampleDataset)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msa-bench-trainer-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=recipe.batch_size,
            gradient_accumulation_steps=recipe.gradient_accumulation_steps,
            max_steps=n_steps,
            learning_rate=recipe.learning_rate,
            weight_decay=recipe.weight_decay,
            warmup_steps=recipe.warmup_ratio,
            lr_scheduler_type=recipe.lr_scheduler,
            max_grad_norm=recipe.max_grad_norm,
            optim="adamw_torch",
            logging_steps=max(1, n_steps // 10),
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
        callbacks = [_SaveAtSteps(save_at_steps, save_fn)] if save_at_steps else []
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=PaddingCollator(pad_token_id),
            callbacks=callbacks,
            **(trainer_kwargs or {}),
        )
        result = trainer.train()
    model.eval()
    return TrainStats(
        steps=n_steps,
        tokens=trainer.tokens_processed,
        seconds=time.perf_counter() - start,
        final_loss=float(result.training_loss) if result.training_loss is not None else None,
    )
