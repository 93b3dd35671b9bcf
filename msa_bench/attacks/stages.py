"""The attacked models as cached stages: a quantized copy of a model, and a model relearned for k steps.

Each is keyed by the attacked model's key and the attack's settings, so a sweep attacks the target and the oracle
once, and each method's model once. Their costs are recorded like every stage's (results.json `cost`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from msa_bench.benchmarks.base import RelearningData
from msa_bench.config.attacks import QuantizationAttackConfig, RelearningAttackConfig
from msa_bench.errors import AttackError
from msa_bench.models.build import load_model, save_model, trusts_remote_code
from msa_bench.pipeline.cost import CostMeter
from msa_bench.pipeline.refs import ModelRef, plain

log = logging.getLogger("msa_bench.attacks")

# What a relearned item is compared on with the evaluated items: QA items by question, text items by their start.
_TEXT_FIELDS = ("question", "prompt", "text")
_PASSAGE_CHARS = 80


def quantized_model(
    pipeline, attack: str, settings: QuantizationAttackConfig, model: ModelRef, role: str
) -> tuple[ModelRef, dict]:
    """`model` quantized by `settings` (msa_bench/attacks/quantization.py), saved as the weights the quantized model
    computes with, and the quantization's report (the quantized model's size, the library)."""
    from msa_bench.attacks.quantization import quantize_weights  # imports torchao only when an attack runs

    spec = {"model": model.key, "quantization": plain(settings), "dtype": pipeline.cfg.model.dtype}

    def build(out: Path) -> dict:
        loaded = load_model(
            model.path,
            pipeline.device,
            pipeline.cfg.model.dtype,
            trust_remote_code=trusts_remote_code(pipeline.cfg.model),
        )
        with CostMeter(f"attack:{attack}:{role}", device=pipeline.device) as meter:
            report = quantize_weights(loaded, settings.scheme, group_size=settings.group_size, attack=attack)
        save_model(loaded, pipeline.tokenizer(), out)
        return {"cost": meter.cost.to_dict(), "quantization": dataclasses.asdict(report)}

    stage = f"attack:{attack}:{role}"
    artifact = pipeline.record_stage(stage, pipeline.store.get_or_build("attacked", spec, build))
    return ModelRef.in_artifact(artifact, f"{role} [{attack}]"), artifact.meta["quantization"]


def relearned_model(
    pipeline,
    attack: str,
    settings: RelearningAttackConfig,
    data: RelearningData,
    model: ModelRef,
    role: str,
) -> ModelRef:
    """`model` fine-tuned for `settings.steps` optimizer steps on `data.items`, with the benchmark's target recipe."""
    recipe = dataclasses.replace(pipeline.cfg.benchmark.target_recipe, max_steps=settings.steps)
    examples = pipeline.training_examples(data.items, f"the {attack} attack's data")
    extra = {"data": data.data_id, "attack": attack} | pipeline.data_spec()
    relearned = pipeline.finetuned_model(f"attack:{attack}:{role}", model, examples, recipe, extra)
    return ModelRef(relearned.path, relearned.key, f"{role} [{attack}]")


def refuse_overlap(attack: str, relearned: list[dict], eval_sets: dict[str, list[dict]]) -> None:
    """AttackError when a relearned item is also an evaluated item: the attack would be scored on what it trained
    on. QA items match by question; a text item holds an evaluated passage when it contains the passage's start."""
    questions = {item["question"] for item in relearned if "question" in item}
    texts = [item["text"] for item in relearned if "text" in item and "question" not in item]
    for set_name, items in eval_sets.items():
        for index, item in enumerate(items):
            for field_name in _TEXT_FIELDS:
                value = item.get(field_name)
                if not isinstance(value, str) or not value.strip():
                    continue
                passage = value.strip()[:_PASSAGE_CHARS]
                if value in questions or any(passage in text for text in texts):
                    raise AttackError(
                        f"attack {attack}: relearning data overlap the evaluated items: eval set {set_name!r} "
                        f"item {index} ({field_name} {value[:60]!r}) is among the relearned items, so the attack "
                        "would be scored on what it trained on. Remove the duplicate from the benchmark's data, or "
                        "lower the attack's fraction"
                    )
