"""Running a loss-based unlearning method on the target and caching the result (shared by grad_ascent, npo, ...).

A method supplies only its loss: `loss_fn(trainer, model, inputs)`, where inputs is {"forget": batch, "retain": batch}
and `trainer` gives access to `trainer.reference_model`, `trainer.count_tokens` and `trainer.check_finite`. The
training loop is transformers' Trainer (msa_bench.training.trainer.LossOverrideTrainer).

Heavy imports happen inside the function, so that composing and validating a config stays fast.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path


def unlearn_with_loss(pipeline, method: str, config, loss_fn, *, needs_reference: bool, use_retain: bool):
    from msa_bench.models.build import count_parameters, load_model, save_model
    from msa_bench.pipeline.cost import CostMeter
    from msa_bench.pipeline.stages import ModelRef
    from msa_bench.training.data import ForgetRetainDataset, qa_examples
    from msa_bench.training.trainer import LossOverrideTrainer, run_training

    target = pipeline.target()
    recipe = config.recipe
    spec = {
        "method": method,
        "config": asdict(config),
        "target": target.key,
        "forget": pipeline.forget_split,
        "seed": pipeline.cfg.seed,
    }

    def build(out: Path) -> dict:
        tokenizer = pipeline.tokenizer()
        max_length = pipeline.cfg.model.max_position_embeddings
        forget = qa_examples(tokenizer, pipeline.forget_items(), max_length)
        retain = qa_examples(tokenizer, pipeline.retain_items(), max_length) if use_retain else None
        model = load_model(target.path, pipeline.device, pipeline.cfg.model.dtype)
        kwargs = {"loss_fn": loss_fn, "method_config": config}
        if needs_reference:
            reference = load_model(target.path, pipeline.device, pipeline.cfg.model.dtype)
            reference.requires_grad_(False)
            kwargs["reference_model"] = reference.eval()
        with CostMeter(method, device=pipeline.device) as meter:
            stats = run_training(
                model,
                ForgetRetainDataset(forget, retain, seed=pipeline.cfg.seed),
                recipe,
                pad_token_id=tokenizer.pad_token_id,
                seed=pipeline.cfg.seed,
                device=pipeline.device,
                progress=pipeline.cfg.progress,
                trainer_class=LossOverrideTrainer,
                trainer_kwargs=kwargs,
            )
            meter.add_tokens(stats.tokens, count_parameters(model), training=True)
            save_model(model, tokenizer, out)
        return {"cost": meter.cost.to_dict(), "final_loss": stats.final_loss, "steps": stats.steps}

    artifact = pipeline.store.get_or_build("unlearned", spec, build)
    pipeline.record_stage("unlearning", artifact)
    return ModelRef(artifact.path, artifact.key, method)
