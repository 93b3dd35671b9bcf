"""The attacked models as cached stages: a quantized copy of a model, and a model relearned for k steps.

Each is keyed by the attacked model's key and the attack's settings, so a sweep attacks the target and the oracle
once, and each method's model once. Their costs are recorded like every stage's (results.json `cost`).
"""

from __future__ import annotations

import dataclasses
import logging
from importlib import metadata
from pathlib import Path

from msa_bench.benchmarks.base import RelearningData
from msa_bench.config.attacks import QUANTIZATION_SCHEMES, QuantizationAttackConfig, RelearningAttackConfig
from msa_bench.data.overlap import collapsed, content_shingles, shares_content
from msa_bench.errors import AttackError
from msa_bench.models.build import load_model, save_model, trusts_remote_code
from msa_bench.pipeline.cost import CostMeter
from msa_bench.pipeline.refs import ModelRef, plain

log = logging.getLogger("msa_bench.attacks")


def library_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"  # quantize_weights then says how to install it


def quantized_model(
    pipeline, attack: str, settings: QuantizationAttackConfig, model: ModelRef, role: str
) -> tuple[ModelRef, dict]:
    """`model` quantized by `settings` (msa_bench/attacks/quantization.py), saved as the weights the quantized model
    computes with, and the quantization's report (the quantized model's size, the library)."""
    from msa_bench.attacks.quantization import quantize_weights  # imports torchao only when an attack runs

    library = QUANTIZATION_SCHEMES[settings.scheme][0]
    spec = {
        "model": model.key,
        "quantization": plain(settings),
        "dtype": pipeline.cfg.model.dtype,
        # Another version of the library may round differently: its quantized models are not reused.
        "library": f"{library} {library_version(library)}",
    }

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


def refuse_overlap(attack: str, data: RelearningData, eval_sets: dict[str, list[dict]]) -> None:
    """AttackError when a relearned item is also an evaluated item: the attack would be scored on what it trained
    on. A QA item overlaps an eval item that asks its question (as its question, or inside its prompt or text); a text
    item overlaps an eval item with which it shares a passage (msa_bench/data/overlap.py)."""
    questions = {item["question"] for item in data.items if "question" in item}
    collapsed_questions = [collapsed(question) for question in questions]
    texts = [item["text"] for item in data.items if "text" in item and "question" not in item]
    for set_name, items in eval_sets.items():
        for index, item in enumerate(items):
            passages = [item[key] for key in ("prompt", "gt", "text") if isinstance(item.get(key), str)]
            overlaps = item.get("question") in questions or any(
                question in collapsed(passage) for question in collapsed_questions for passage in passages
            )
            if not overlaps and texts and passages:
                evaluated = content_shingles(passages, data.ignored_shingles)
                overlaps = any(shares_content(text, evaluated, data.ignored_shingles) for text in texts)
            if overlaps:
                shown = item.get("question") or passages[0]
                raise AttackError(
                    f"attack {attack}: its relearning data ({data.relearned}) overlap the evaluated items: eval set "
                    f"{set_name!r} item {index} ({shown[:60]!r}) is among what it trains on, so the attack would be "
                    "scored on what it learnt. The benchmark's data hold the same item in the relearning pool and "
                    "in an eval set: remove the duplicate"
                )
