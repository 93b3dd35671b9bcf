"""Running a loss-based unlearning method on the target and caching the result (shared by grad_ascent, npo, ...).

A method supplies only its loss: `loss_fn(trainer, model, inputs)`, where inputs is {"forget": batch, "retain": batch}
and `trainer` gives access to `trainer.reference_model`, `trainer.count_tokens` and `trainer.check_finite`. The
training loop is transformers' Trainer (msa_bench.training.trainer.LossOverrideTrainer).

Heavy imports happen inside the function, so that composing and validating a config stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import MISSING

from msa_bench.config.cache_keys import without_default_options
from msa_bench.config.schema import OMIT_AT_DEFAULT, TrainRecipe
from msa_bench.methods.registry import CONTINUES, MethodConfig, UnlearningMethod
from msa_bench.methods.requests import RequestScope

RETAIN_LOSSES = ("nll", "kl")


@dataclass
class LossMethodConfig(MethodConfig):
    """What every loss-based unlearning method shares; each method adds its own hyperparameters."""

    recipe: TrainRecipe = MISSING
    forget_weight: float = 1.0  # γ, the weight of the forget term
    retain_weight: float = 0.0  # α, the weight of the retain term (0 = no retain term)
    retain_loss: str = "nll"  # nll on the retain set, or kl: KL(θ_D ‖ model) on it
    # Divergence guard: stop (and save nothing) when |loss| exceeds this; null = only non-finite losses stop.
    loss_bound: float | None = None
    reference_device: str | None = None  # where the frozen θ_D lives (e.g. cpu); null = the policy's device
    # Sequence-level reference values (NPO) computed once before training, so the reference model is freed.
    precompute_reference: bool = False
    # Unlearning dynamics (docs/unlearning_dynamics.md): also save and evaluate the model every this many epochs, or
    # optimizer steps, of the one training run; null = only the final model. Left out of the cache key while null,
    # so that a run without them keys its model as before they existed.
    eval_every_epochs: int | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})
    eval_every_steps: int | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})

    def __post_init__(self):
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(
                f"method.retain_loss={self.retain_loss!r} is not valid; use one of {RETAIN_LOSSES}"
            )
        if self.forget_weight < 0 or self.retain_weight < 0:
            raise ValueError("method.forget_weight and method.retain_weight must be >= 0")
        if self.loss_bound is not None and not self.loss_bound > 0:
            raise ValueError(f"method.loss_bound={self.loss_bound} must be > 0 (or null)")
        for key, unit in (("eval_every_epochs", "epochs"), ("eval_every_steps", "optimizer steps")):
            every = getattr(self, key)
            if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
                raise ValueError(
                    f"method.{key}={every!r} must be a whole number of {unit} >= 1 (or null: evaluate only the "
                    "final model)"
                )
        if self.eval_every_epochs is not None and self.eval_every_steps is not None:
            raise ValueError(
                f"method.eval_every_epochs={self.eval_every_epochs} and method.eval_every_steps="
                f"{self.eval_every_steps} are both set; set one of them (docs/unlearning_dynamics.md)"
            )


class LossBasedMethod(UnlearningMethod):
    """A method whose `produce` trains θ_D with a loss (unlearn_with_loss). Sequentially it continues: request k is
    unlearnt from its model after request k-1, which is also the frozen reference of its loss (docs/
    sequential_requests.md)."""

    sequential = CONTINUES

    def produce_after_requests(self, pipeline, requests, previous):
        start = previous if previous is not None else pipeline.target()
        return self.produce(RequestScope(pipeline, requests[-1], start))


def default_recipe(**kwargs):
    """A dataclass field whose default is TrainRecipe(**kwargs)."""
    return field(default_factory=lambda: TrainRecipe(**kwargs))


def unlearn_with_loss(
    pipeline,
    method: str,
    config,
    loss_fn,
    *,
    needs_reference: bool,
    use_retain: bool,
    prepare_model: Callable | None = None,
):
    """Train a copy of θ_D with `loss_fn` and cache the result. A KL retain term also needs the reference.

    `prepare_model(model, config)`, when given, runs on the loaded θ_D before the trainer (and so the optimizer)
    is built: e.g. freezing parameters (requires_grad False) so that the optimizer never sees them.
    """
    from msa_bench.models.build import count_parameters, load_model, save_model, trusts_remote_code

    trust_remote_code = trusts_remote_code(pipeline.cfg.model)
    from msa_bench.pipeline import dynamics
    from msa_bench.pipeline.cost import CostMeter
    from msa_bench.pipeline.stage_memory import check_unlearning
    from msa_bench.training.data import ForgetRetainDataset
    from msa_bench.training.lora import lora_plan, save_trained, with_lora
    from msa_bench.training.trainer import (
        LossOverrideTrainer,
        SavePoints,
        run_training,
        steps_per_epoch,
        total_steps,
    )

    target = pipeline.target()
    use_retain = use_retain and config.retain_weight > 0
    needs_reference = needs_reference or (use_retain and config.retain_loss == "kl")
    spec = {
        "method": method,
        "config": without_default_options(config, asdict(config)),
        "target": target.key,
        "forget": pipeline.forget_split,
        "seed": pipeline.cfg.seed,
    }
    lora = lora_plan(pipeline.cfg.peft, "unlearning")
    if lora is not None:  # only then: a key without LoRA stays as it was
        spec["peft"] = lora.key()

    def build(out: Path) -> dict:
        from msa_bench.pipeline.disk_space import require_space_for_state_like

        tokenizer = pipeline.tokenizer()
        forget = pipeline.training_examples(pipeline.forget_items(), "the forget set")
        intermediate = dynamics.expected_point_count(
            config, total_steps(len(forget), config.recipe), steps_per_epoch(len(forget), config.recipe)
        )
        require_space_for_state_like(
            pipeline.store.root, f"the {method} unlearned model", target.path, n_states=1 + intermediate
        )
        retain = pipeline.training_examples(pipeline.retain_items(), "the retain set") if use_retain else None
        keeps_reference = needs_reference and not (
            config.precompute_reference and not (use_retain and config.retain_loss == "kl")
        )
        estimated_mb = check_unlearning(  # memory preflight, before θ_D is loaded
            pipeline,
            method,
            target.path,
            config.recipe,
            forget,
            retain,
            keeps_reference=keeps_reference,
            reference_device=config.reference_device,
            lora=lora,
        )
        with CostMeter(method, device=pipeline.device, estimated_peak_memory_mb=estimated_mb) as meter:
            model = load_model(
                target.path, pipeline.device, pipeline.cfg.model.dtype, trust_remote_code=trust_remote_code
            )
            if prepare_model is not None:
                prepare_model(model, config)
            if lora is not None:  # after prepare_model: LoRA adapts only the modules the method trains
                model = with_lora(model, lora.settings, pipeline.cfg.seed)
            n_params = count_parameters(model)
            kwargs = {
                "loss_fn": loss_fn,
                "method_name": method,
                "method_config": config,
                "loss_bound": config.loss_bound,
                "reference_device": config.reference_device,
            }
            if needs_reference:
                reference_device = config.reference_device or pipeline.device
                reference = load_model(
                    target.path,
                    reference_device,
                    pipeline.cfg.model.dtype,
                    trust_remote_code=trust_remote_code,
                ).eval()
                reference.requires_grad_(False)
                if config.precompute_reference and not (use_retain and config.retain_loss == "kl"):
                    kwargs["reference_forget_nll"] = _forget_nlls(reference, forget, tokenizer.pad_token_id)
                    meter.add_tokens(sum(len(e["input_ids"]) for e in forget), n_params, training=False)
                    del reference  # the point of precomputing: no second model during training
                else:
                    kwargs["reference_model"] = reference
            saved_points: list[dynamics.DynamicsPoint] = []

            def save_point(step: int, epoch: float, state_dict: dict | None) -> None:
                folder = dynamics.point_folder(step)
                save_model(model, tokenizer, out / folder, state_dict=state_dict)
                saved_points.append(dynamics.DynamicsPoint(epoch=epoch, step=step, folder=folder))

            save_points = None
            if dynamics.is_enabled(config):
                save_points = SavePoints(save_point, config.eval_every_epochs, config.eval_every_steps)
            stats = run_training(
                model,
                ForgetRetainDataset(forget, retain, seed=pipeline.cfg.seed),
                config.recipe,
                pad_token_id=tokenizer.pad_token_id,
                seed=pipeline.cfg.seed,
                device=pipeline.device,
                progress=pipeline.cfg.progress.library_bars,
                trainer_class=LossOverrideTrainer,
                trainer_kwargs=kwargs,
                save_points=save_points,
                scratch_root=pipeline.scratch_root,
            )
            meter.add_tokens(stats.tokens, n_params, training=True)
            if lora is None:
                save_model(model, tokenizer, out, state_dict=stats.state_dict)  # gathered under FSDP/ZeRO-3
            else:  # merged, and what the adapters learnt goes into the stage's cost (results.json)
                adapters = save_trained(model, tokenizer, out, lora)
            if save_points is not None:
                final = dynamics.DynamicsPoint(epoch=round(stats.epoch or 0.0, 6), step=stats.steps)
                dynamics.write_points(out, saved_points, final)
        cost = meter.cost.to_dict()
        if save_points is not None:
            # The method's unlearning cost stays comparable with a run without the dynamics: the intermediate
            # saves' time is reported beside it, not in it.
            cost["wall_seconds"] -= stats.save_seconds
            cost["dynamics_save_wall_seconds"] = stats.save_seconds
            cost["dynamics_points"] = len(saved_points)
        if lora is not None:
            cost["lora"] = adapters
        return {"cost": cost, "final_loss": stats.final_loss, "steps": stats.steps}

    return pipeline.cached_model("unlearning", "unlearned", spec, build, label=method, trains=True)


def _forget_nlls(reference, forget, pad_token_id: int, batch_size: int = 32):
    """Summed NLL of every forget example under the reference, indexed like the forget set."""
    import torch

    from msa_bench.training.data import PaddingCollator
    from msa_bench.training.losses import sequence_nll

    collator = PaddingCollator(pad_token_id)
    device = next(reference.parameters()).device
    values = []
    with torch.no_grad():
        for start in range(0, len(forget), batch_size):
            batch = {k: v.to(device) for k, v in collator.pad(forget[start : start + batch_size]).items()}
            values.append(sequence_nll(reference, batch)[0].cpu())
    return torch.cat(values)
