"""One rank of the tests in tests/test_distributed.py, started by torchrun: `distributed_worker.py <check> <out dir>`.

- `sampler`: trains a tiny Llama through run_training on examples that carry their own index, with plain examples
  (length-grouped sampler) and forget/retain pairs (random sampler), and writes which examples each optimizer step
  saw on this rank to <out>/sampler-rank<r>.json.
- `keys`: builds the generated world and the tokenizer of experiment=smoke through the pipeline (rank 0 builds,
  the others wait and read), and writes this rank's keys, rank 0's keys (broadcast) and the retain subset's digest
  to <out>/keys-rank<r>.json.
- `disagree`: rank 1 asks for an artifact under another spec than rank 0; it must fail with the DistributedError.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from msa_bench.config.schema import TrainRecipe
from msa_bench.distributed import broadcast_object, init_process_group, rank
from msa_bench.errors import DistributedError
from msa_bench.training.data import ExampleDataset, ForgetRetainDataset
from msa_bench.training.trainer import CausalLMTrainer, LossOverrideTrainer, run_training

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_llama  # noqa: E402

VOCAB = 96
OFFSET = 8  # the first token of example i is OFFSET + i, so a batch names its examples


def indexed_examples(count: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for index in range(count):
        length = 4 + int(torch.randint(0, 12, (1,), generator=generator))
        ids = [OFFSET + index] + torch.randint(OFFSET + count, VOCAB, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": list(ids)})
    return examples


class RecordingTrainer(CausalLMTrainer):
    seen: list[tuple[int, list[int]]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        RecordingTrainer.seen.append((self.state.global_step, (inputs["input_ids"][:, 0] - OFFSET).tolist()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def pair_loss(trainer, model, inputs):
    """A loss on the forget and the retain example of each pair; records which pairs and retain examples it saw."""
    forget, retain = inputs["forget"], inputs["retain"]
    pairs = (forget["input_ids"][:, 0] - OFFSET).tolist()
    retained = (retain["input_ids"][:, 0] - OFFSET).tolist()
    RecordingTrainer.seen.append(
        (trainer.state.global_step, [[f, r] for f, r in zip(pairs, retained, strict=True)])
    )
    logits_loss = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits.mean()
    return (
        logits_loss
        + model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits.mean()
    )


def by_step(records) -> dict[str, list]:
    steps: dict[str, list] = {}
    for step, items in records:
        steps.setdefault(str(step), []).extend(items)
    return steps


def check_sampler(out: Path) -> None:
    recipe = TrainRecipe(epochs=2, learning_rate=1e-3, batch_size=4, warmup_ratio=0.0)
    examples = indexed_examples(24, seed=1)
    RecordingTrainer.seen = []
    run_training(
        tiny_llama(VOCAB),
        ExampleDataset(examples),
        recipe,
        pad_token_id=0,
        seed=0,
        device="cpu",
        progress=False,
        trainer_class=RecordingTrainer,
    )
    plain = by_step(RecordingTrainer.seen)
    RecordingTrainer.seen = []
    forget, retain = examples[:12], examples[12:]
    run_training(
        tiny_llama(VOCAB),
        ForgetRetainDataset(forget, retain, seed=0),
        recipe,
        pad_token_id=0,
        seed=0,
        device="cpu",
        progress=False,
        trainer_class=LossOverrideTrainer,
        trainer_kwargs={"loss_fn": pair_loss},
    )
    pairs = by_step(RecordingTrainer.seen)
    (out / f"sampler-rank{rank()}.json").write_text(json.dumps({"plain": plain, "pairs": pairs}))


def smoke_pipeline(cache: Path):
    from msa_bench.pipeline.artifacts import ArtifactStore
    from msa_bench.pipeline.stages import Pipeline
    from msa_bench.validation import validate_config
    from tests.conftest import compose_config

    cfg = compose_config(
        ["experiment=smoke", "logger=none", "num_threads=1"], output_dir=cache.parent / "run"
    )
    return Pipeline(validate_config(cfg), ArtifactStore(cache), "cpu")


def check_keys(out: Path) -> None:
    pipeline = smoke_pipeline(out / "cache")
    retain = [item["question"] for item in pipeline.retain_items()]
    mine = {
        "world": pipeline.world().content_key,
        "tokenizer": pipeline.tokenizer_artifact().content_key,
        "history_spec": hashlib.sha256(
            json.dumps(pipeline.history_spec(), sort_keys=True).encode()
        ).hexdigest(),
        "retain_subset": hashlib.sha256(json.dumps(retain).encode()).hexdigest(),
        "world_path": str(pipeline.world().path),
    }
    leader = broadcast_object(mine)
    (out / f"keys-rank{rank()}.json").write_text(json.dumps({"mine": mine, "rank0": leader}))


def check_disagreement(out: Path) -> None:
    from msa_bench.pipeline.artifacts import ArtifactStore

    store = ArtifactStore(out / "cache")
    spec = {"value": rank()}  # rank 1 computes another key than rank 0
    try:
        store.get_or_build("probe", spec, lambda folder: (folder / "x").write_text("x") and None)
        outcome = "built"
    except DistributedError as error:
        (out / f"disagree-rank{rank()}.json").write_text(
            json.dumps({"outcome": f"DistributedError: {error}"})
        )
        sys.exit(3)  # torchrun then stops rank 0, which waits for this rank's next step
    (out / f"disagree-rank{rank()}.json").write_text(json.dumps({"outcome": outcome}))


if __name__ == "__main__":
    check, out_dir = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    init_process_group("cpu", timeout_minutes=2)
    {"sampler": check_sampler, "keys": check_keys, "disagree": check_disagreement}[check](out_dir)
