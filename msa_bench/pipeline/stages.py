"""The pipeline's stages, each a cached artifact keyed by the configuration it depends on.

world+tokenizer -> pretraining history (saved steps, base) -> instruct -> target / oracle -> fine-tunes of θ0 ->
unlearned model -> evaluation. A second run with another method, α or β finds the earlier stages in the cache and
retrains nothing; a run killed mid-way resumes from the completed stages.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from msa_bench.config.schema import CheckpointConfig, MSABenchConfig, TrainRecipe
from msa_bench.data.formatting import format_answer, format_prompt
from msa_bench.data.sources import download_tofu, local_data_source, tofu_hub_configs
from msa_bench.data.synthetic import (
    GENERATOR_VERSION,
    SyntheticWorldSpec,
    generate_world,
    load_benchmark_split,
    write_benchmark,
)
from msa_bench.data.tokenizer import train_bpe_tokenizer
from msa_bench.models.build import (
    build_embedded_model,
    count_parameters,
    load_model,
    load_tokenizer,
    save_model,
)
from msa_bench.pipeline.artifacts import Artifact, ArtifactStore
from msa_bench.pipeline.cost import CostMeter
from msa_bench.training.data import ExampleDataset, packed_text_blocks, qa_examples, sample_examples
from msa_bench.training.trainer import run_training, total_steps

log = logging.getLogger("msa_bench.pipeline")

FORGET_TO_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
CHECKPOINT_STAGES = ("pretrain", "base", "instruct", "target")
BENCHMARK_KINDS = ("synthetic_tofu", "tofu")
WORLD_SPLITS = ("pretraining", "instruct")
# Bump when a change to training, data encoding or evaluation code should invalidate every cached artifact: every
# key depends on the world's key, which includes this.
PIPELINE_VERSION = 2


class StageError(ValueError):
    """A configuration asks for something the pipeline cannot provide (the message says what to do)."""


@dataclass(frozen=True)
class ModelRef:
    """A model directory in the cache and the artifact key that identifies how it was made."""

    path: Path
    key: str
    label: str


def _plain(node) -> dict:
    return (
        OmegaConf.to_container(OmegaConf.structured(node), resolve=True)
        if not isinstance(node, dict)
        else node
    )


class Pipeline:
    def __init__(self, cfg: MSABenchConfig, store: ArtifactStore, device: str):
        self.cfg = cfg
        self.store = store
        self.device = device
        self.costs: dict[str, dict] = {}
        self._split_cache: dict[str, list[dict]] = {}
        # Memoised within one run; across runs the artifact store does the caching.
        self._world: Artifact | None = None
        self._history: Artifact | None = None
        self._tokenizer = None
        self._tokenizer_artifact: Artifact | None = None
        self._benchmark_source: tuple[Path, str] | None = None
        self._pretrain_blocks: list[dict] | None = None

    # ------------------------------------------------------------------ bookkeeping
    def record_stage(self, stage: str, artifact: Artifact) -> Artifact:
        """Remember a stage's cost for results.json; a stage built in this run stays recorded as built."""
        previous = self.costs.get(stage)
        if previous is not None and previous["artifact"] == f"{artifact.kind}/{artifact.key}":
            return artifact
        cost = dict(artifact.meta.get("cost", {}))
        cost["reused"] = artifact.reused
        cost["artifact"] = f"{artifact.kind}/{artifact.key}"
        self.costs[stage] = cost
        return artifact

    def _announce(self, stage: str, spec: dict) -> None:
        if self.store.lookup(stage.split(":")[0], spec) is None:
            log.info("building %s", stage)

    # ------------------------------------------------------------------ data
    def world_spec(self) -> dict:
        """The generated world behind the embedded model's history (and, for synthetic_tofu, the benchmark)."""
        b = self.cfg.benchmark
        if b.kind not in BENCHMARK_KINDS:
            raise StageError(
                f"benchmark.kind={b.kind!r} is not supported; use one of {list(BENCHMARK_KINDS)}"
            )
        return {"world": _plain(b.world), "generator": GENERATOR_VERSION, "pipeline": PIPELINE_VERSION}

    def world(self) -> Artifact:
        if self._world is not None:
            return self._world
        spec = self.world_spec()

        def build(out: Path) -> dict:
            with CostMeter("world", device="cpu") as meter:
                world = generate_world(SyntheticWorldSpec(**spec["world"]))
                counts = write_benchmark(world, out / "data")
            return {"cost": meter.cost.to_dict(), "counts": counts}

        self._world = self.record_stage("world", self.store.get_or_build("world", spec, build))
        return self._world

    def benchmark_source(self) -> tuple[Path, str]:
        """The folder the benchmark's splits are read from, and a fingerprint of its contents."""
        if self._benchmark_source is None:
            b = self.cfg.benchmark
            if b.kind == "synthetic_tofu":
                self._benchmark_source = (self.world().path / "data", self.world().key)
            elif b.data_dir:
                self._benchmark_source = local_data_source(Path(b.data_dir), "benchmark.data_dir")
            else:
                hub = self.hub_benchmark()
                self._benchmark_source = (hub.path, hub.key)
        return self._benchmark_source

    def hub_benchmark(self) -> Artifact:
        """The benchmark's splits fetched from the Hugging Face hub once and kept as JSONL in the cache."""
        hub_id = self.cfg.benchmark.hub_id
        if not hub_id:
            raise StageError(
                f"benchmark {self.cfg.benchmark.name!r} has neither data_dir nor hub_id; set benchmark.data_dir "
                "(or MSA_BENCH_DATA to a folder laid out like ../shared/data)"
            )
        split_names = tofu_hub_configs(self.forget_split)
        return self.store.get_or_build(
            "hub_data",
            {"hub_id": hub_id, "configs": split_names},
            lambda out: download_tofu(hub_id, split_names, out),
        )

    def split(self, name: str) -> list[dict]:
        if name not in self._split_cache:
            # The embedded model's pretraining and instruct data always come from the generated world.
            folder = self.world().path / "data" if name in WORLD_SPLITS else self.benchmark_source()[0]
            self._split_cache[name] = load_benchmark_split(folder, name)
        return self._split_cache[name]

    def tokenizer_spec(self) -> dict:
        return {
            "world": self.world().key,
            "benchmark": self.benchmark_source()[1],
            "vocab_size": self.cfg.model.vocab_size,
        }

    def tokenizer_artifact(self) -> Artifact:
        """A BPE trained on the world's corpus and, for a real benchmark, its QA text too."""
        if self._tokenizer_artifact is not None:
            return self._tokenizer_artifact

        def build(out: Path) -> dict:
            if self.cfg.benchmark.kind == "synthetic_tofu":
                texts = generate_world(SyntheticWorldSpec(**self.world_spec()["world"])).corpus_texts()
            else:
                qa = self.split("instruct") + self.split("full")
                texts = [d["text"] for d in self.split("pretraining")]
                texts += [f"{format_prompt(x['question'])}{format_answer(x['answer'])}" for x in qa]
            with CostMeter("tokenizer", device="cpu") as meter:
                tokenizer = train_bpe_tokenizer(
                    texts,
                    vocab_size=self.cfg.model.vocab_size,
                    model_max_length=self.cfg.model.max_position_embeddings,
                )
                tokenizer.save_pretrained(out)
            return {"cost": meter.cost.to_dict()}

        return self.record_stage(
            "tokenizer", self.store.get_or_build("tokenizer", self.tokenizer_spec(), build)
        )

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_artifact().path)
        return self._tokenizer

    @property
    def forget_split(self) -> str:
        name = self.cfg.benchmark.forget_split
        if name not in FORGET_TO_RETAIN:
            raise StageError(
                f"benchmark.forget_split={name!r} is not valid; choose one of {sorted(FORGET_TO_RETAIN)}"
            )
        return name

    def forget_items(self) -> list[dict]:
        return self.split(self.forget_split)

    def retain_items(self) -> list[dict]:
        return self.split(FORGET_TO_RETAIN[self.forget_split])

    def holdout_split(self) -> str:
        return self.forget_split.replace("forget", "holdout")

    def eval_sets(self, required: set[str] | None = None) -> dict[str, list[dict]]:
        """The evaluation sets by name (TOFU: forget, retain, real_authors, world_facts, holdout; MUSE: muse_*),
        loading only those `required` (all TOFU sets when None)."""
        tofu_sets = {
            "forget": lambda: self.split(f"{self.forget_split}_perturbed"),
            "retain": lambda: self.split("retain_perturbed")[: self.cfg.benchmark.retain_eval_size],
            "real_authors": lambda: self.split("real_authors_perturbed"),
            "world_facts": lambda: self.split("world_facts_perturbed"),
            "holdout": lambda: self.split(self.holdout_split()),
        }
        if required is None:
            required = set(tofu_sets) - {"holdout"}
        sets = {name: tofu_sets[name]() for name in required if name in tofu_sets}
        muse_names = {name for name in required if name.startswith("muse_")}
        if muse_names:
            muse_sets = self.muse_eval_sets()
            missing = muse_names - set(muse_sets)
            if missing:
                raise StageError(f"the MUSE eval sets {sorted(missing)} are not available")
            sets.update({name: muse_sets[name] for name in muse_names})
        unknown = required - set(sets)
        if unknown:
            raise StageError(f"no eval set named {sorted(unknown)} on benchmark {self.cfg.benchmark.name!r}")
        return sets

    def muse_eval_sets(self) -> dict[str, list[dict]]:
        """MUSE-format sets: from `metrics.muse.data_dir` when set, else built from this benchmark's QA."""
        from msa_bench.data.muse import load_muse_eval_sets, muse_sets_from_tofu_items

        data_dir = self.cfg.metrics.muse.data_dir
        if data_dir:
            return load_muse_eval_sets(Path(data_dir))
        return muse_sets_from_tofu_items(
            forget_items=self.split(self.forget_split),
            retain_items=self.split("retain_perturbed")[: self.cfg.benchmark.retain_eval_size],
            holdout_items=self.split(self.holdout_split()),
            icl_items=self.split("instruct"),
        )

    # ------------------------------------------------------------------ model history
    def history_spec(self) -> dict:
        m = self.cfg.model
        return {
            "tokenizer": self.tokenizer_artifact().key,
            "model": _plain(m) | {"instruct": None},
            "seed": self.cfg.seed,
        }

    def pretrain_blocks(self) -> list[dict]:
        if self._pretrain_blocks is None:
            texts = [d["text"] for d in self.split("pretraining")]
            self._pretrain_blocks = packed_text_blocks(
                self.tokenizer(), texts, self.cfg.model.pretrain.block_size
            )
        return self._pretrain_blocks

    def pretrain_schedule(self) -> tuple[list[int], int]:
        """The pretraining steps kept as checkpoints, and the total number of steps (known before training)."""
        pre = self.cfg.model.pretrain
        n_steps = total_steps(len(self.pretrain_blocks()), pre.recipe)
        saved = (
            list(range(pre.checkpoint_every, n_steps, pre.checkpoint_every))
            if pre.checkpoint_every > 0
            else []
        )
        return saved, n_steps

    def preflight(self) -> None:
        """Checks that need the data but no training, run before any model is trained."""
        self.forget_split  # noqa: B018  (validates the split name)
        if self.cfg.benchmark.kind != "synthetic_tofu":
            # Every split the run will read must be there before anything trains.
            folder = self.benchmark_source()[0]
            for name in tofu_hub_configs(self.forget_split):
                if not (folder / f"{name}.jsonl").is_file():
                    raise StageError(
                        f"benchmark split {name!r} not found: expected {folder / f'{name}.jsonl'} "
                        f"(benchmark.data_dir={folder}); the folder must hold one <hub config>.jsonl per split"
                    )
        if self.cfg.checkpoint.stage == "pretrain":
            self._check_saved_step(self.cfg.checkpoint.step)

    def history(self) -> Artifact:
        if self._history is not None:
            return self._history
        spec = self.history_spec()
        pre = self.cfg.model.pretrain
        self._announce("history", spec)

        def build(out: Path) -> dict:
            tokenizer = self.tokenizer()
            blocks = self.pretrain_blocks()
            saved, n_steps = self.pretrain_schedule()
            model = build_embedded_model(self.cfg.model, tokenizer, seed=self.cfg.seed)
            log.info(
                "pretraining %s parameters on %d blocks of %d tokens for %d steps (checkpoints at %s)",
                f"{count_parameters(model):,}",
                len(blocks),
                pre.block_size,
                n_steps,
                saved,
            )
            with CostMeter("pretrain", device=self.device) as meter:
                stats = run_training(
                    model,
                    ExampleDataset(blocks),
                    pre.recipe,
                    pad_token_id=tokenizer.pad_token_id,
                    seed=self.cfg.seed,
                    device=self.device,
                    progress=self.cfg.progress,
                    save_at_steps=saved,
                    save_fn=lambda step: save_model(model, tokenizer, out / "pretrain" / f"step-{step:06d}"),
                )
                meter.add_tokens(stats.tokens, count_parameters(model), training=True)
                save_model(model, tokenizer, out / "base")
            return {
                "cost": meter.cost.to_dict(),
                "saved_steps": saved,
                "total_steps": n_steps,
                "final_loss": stats.final_loss,
                "n_parameters": count_parameters(model),
            }

        self._history = self.record_stage("pretrain", self.store.get_or_build("history", spec, build))
        return self._history

    def _finetuned_model(
        self, stage: str, base: ModelRef, examples, recipe: TrainRecipe, spec_extra: dict
    ) -> ModelRef:
        """Fine-tune `base` on `examples` with `recipe`, cached under a key of everything that determines it."""
        spec = {"base": base.key, "recipe": _plain(recipe), "seed": self.cfg.seed} | spec_extra
        self._announce(f"finetune:{stage}", spec)

        def build(out: Path) -> dict:
            tokenizer = self.tokenizer()
            model = load_model(base.path, self.device, self.cfg.model.dtype)
            log.info("fine-tuning %s from %s on %d examples", stage, base.label, len(examples))
            with CostMeter(stage, device=self.device) as meter:
                stats = run_training(
                    model,
                    ExampleDataset(examples),
                    recipe,
                    pad_token_id=tokenizer.pad_token_id,
                    seed=self.cfg.seed,
                    device=self.device,
                    progress=self.cfg.progress,
                )
                meter.add_tokens(stats.tokens, count_parameters(model), training=True)
                save_model(model, tokenizer, out)
            return {"cost": meter.cost.to_dict(), "final_loss": stats.final_loss, "steps": stats.steps}

        artifact = self.store.get_or_build("finetune", spec, build)
        self.record_stage(stage, artifact)
        return ModelRef(artifact.path, artifact.key, stage)

    def base(self) -> ModelRef:
        h = self.history()
        return ModelRef(h.path / "base", f"{h.key}/base", "base")

    def _check_saved_step(self, step: int | None) -> None:
        saved, total = self.pretrain_schedule()
        if step not in saved:
            raise StageError(
                f"checkpoint.step={step} was never saved; the saved pretraining steps are {saved} "
                f"(of {total}); `checkpoint=base` is the end of pretraining"
            )

    def pretrain_checkpoint(self, step: int) -> ModelRef:
        self._check_saved_step(step)
        h = self.history()
        return ModelRef(
            h.path / "pretrain" / f"step-{step:06d}", f"{h.key}/step-{step}", f"pretrain step {step}"
        )

    def instruct(self) -> ModelRef:
        tokenizer = self.tokenizer()
        examples = qa_examples(tokenizer, self.split("instruct"), self.cfg.model.max_position_embeddings)
        return self._finetuned_model(
            "instruct", self.base(), examples, self.cfg.model.instruct, {"data": "instruct"}
        )

    def _replay_examples(self, n_benchmark: int) -> list[dict]:
        """Pretraining blocks and instruct QA replayed during the target/oracle fine-tune, half of each."""
        count = int(round(self.cfg.benchmark.replay_fraction * n_benchmark))
        if count <= 0:
            return []
        tokenizer = self.tokenizer()
        texts = [d["text"] for d in self.split("pretraining")]
        blocks = packed_text_blocks(tokenizer, texts, self.cfg.model.pretrain.block_size)
        instruct = qa_examples(tokenizer, self.split("instruct"), self.cfg.model.max_position_embeddings)
        return sample_examples(blocks, count // 2, seed=self.cfg.seed) + sample_examples(
            instruct, count - count // 2, seed=self.cfg.seed + 1
        )

    def _benchmark_model(self, stage: str, split: str) -> ModelRef:
        tokenizer = self.tokenizer()
        examples = qa_examples(tokenizer, self.split(split), self.cfg.model.max_position_embeddings)
        examples = examples + self._replay_examples(len(examples))
        extra = {"data": split, "replay_fraction": self.cfg.benchmark.replay_fraction}
        return self._finetuned_model(
            stage, self.instruct(), examples, self.cfg.benchmark.target_recipe, extra
        )

    def target(self) -> ModelRef:
        return self._benchmark_model("target", "full")

    def oracle(self) -> ModelRef:
        return self._benchmark_model("oracle", FORGET_TO_RETAIN[self.forget_split])

    def checkpoint(self, checkpoint: CheckpointConfig | None = None) -> ModelRef:
        """θ0: the model state the config's `checkpoint` names."""
        checkpoint = checkpoint or self.cfg.checkpoint
        if checkpoint.stage == "pretrain":
            if checkpoint.step is None:
                raise StageError("checkpoint.stage=pretrain needs checkpoint.step (a saved pretraining step)")
            return self.pretrain_checkpoint(checkpoint.step)
        if checkpoint.stage == "base":
            return self.base()
        if checkpoint.stage == "instruct":
            return self.instruct()
        if checkpoint.stage == "target":
            return self.target()
        raise StageError(
            f"checkpoint.stage={checkpoint.stage!r} is not valid; choose one of {list(CHECKPOINT_STAGES)}"
        )

    def finetune(
        self, stage: str, base: ModelRef, items: list[dict], recipe: TrainRecipe, data_id: str
    ) -> ModelRef:
        """Fine-tune a model state on QA items (the forget set, a retain subset, ...)."""
        examples = qa_examples(self.tokenizer(), items, self.cfg.model.max_position_embeddings)
        return self._finetuned_model(stage, base, examples, recipe, {"data": data_id})

    def retain_subset(self, size: int | None, seed: int) -> tuple[list[dict], str]:
        """A seeded random retain subset, by default the size of the forget set (as in the paper)."""
        retain = self.retain_items()
        size = len(self.forget_items()) if size is None else size
        if size <= 0 or size > len(retain):
            raise StageError(
                f"method.retain_size={size} must be between 1 and {len(retain)} (the retain split size)"
            )
        indices = sorted(random.Random(seed).sample(range(len(retain)), size))
        data_id = f"{FORGET_TO_RETAIN[self.forget_split]}[{size} seed {seed}]"
        return [retain[i] for i in indices], data_id
