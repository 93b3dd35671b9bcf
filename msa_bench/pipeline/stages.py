"""The pipeline's stages, each a cached artifact keyed by the configuration it depends on.

Embedded model: world+tokenizer -> pretraining history (saved steps, base) -> instruct -> [clean] -> target / oracle.
Pretrained model: the hub model at `model.revision` -> target / oracle; its earlier states are hub revisions.
Then: fine-tunes of θ0 -> unlearned model -> evaluation. What the target and the oracle learn comes from the benchmark
(msa_bench/benchmarks). A second run with another method, α or β finds the earlier stages in the cache and retrains
nothing; a run killed mid-way resumes from the completed stages.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from msa_bench.benchmarks import Benchmark, BenchmarkError, make_benchmark
from msa_bench.config.schema import CheckpointConfig, MSABenchConfig, PromptConfig, TrainRecipe
from msa_bench.data.formatting import PromptFormat, format_answer, format_prompt, set_prompt_format
from msa_bench.data.synthetic import (
    GENERATOR_VERSION,
    SyntheticWorldSpec,
    generate_world,
    load_benchmark_split,
    write_benchmark,
)
from msa_bench.data.tokenizer import train_bpe_tokenizer
from msa_bench.errors import StageError  # noqa: F401  (re-exported)
from msa_bench.models.build import (
    build_embedded_model,
    count_parameters,
    load_model,
    load_tokenizer,
    save_model,
)
from msa_bench.models.sources import model_fingerprint, resolve_model_dir
from msa_bench.pipeline.artifacts import Artifact, ArtifactStore
from msa_bench.pipeline.cost import CostMeter
from msa_bench.training.data import ExampleDataset, packed_text_blocks, qa_examples, sample_examples
from msa_bench.training.trainer import run_training, total_steps

log = logging.getLogger("msa_bench.pipeline")

EMBEDDED_STAGES = ("pretrain", "base", "instruct")
CHECKPOINT_STAGES = (*EMBEDDED_STAGES, "closest", "target", "revision")
WORLD_SPLITS = ("pretraining", "instruct")
TOFU_KINDS = ("synthetic_tofu", "tofu")
# Bump when a change to training, data encoding or evaluation code should invalidate every cached artifact: every
# key depends on the world's key, which includes this.
PIPELINE_VERSION = 2


@dataclass(frozen=True)
class ModelRef:
    """A model directory (in the cache, or a hub snapshot) and the key that identifies how it was made."""

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
        self._benchmark: Benchmark | None = None
        self._pretrain_blocks: list[dict] | None = None
        self._hub_models: dict[tuple[str, str], ModelRef] = {}

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

    @property
    def embedded(self) -> bool:
        return self.cfg.model.source == "embedded"

    # ------------------------------------------------------------------ data
    @property
    def benchmark(self) -> Benchmark:
        if self._benchmark is None:
            try:
                self._benchmark = make_benchmark(self)
            except BenchmarkError as error:
                raise StageError(str(error)) from error
        return self._benchmark

    def world_spec(self) -> dict:
        """The generated world behind the embedded model's history (and, for synthetic_tofu, the benchmark)."""
        return {
            "world": _plain(self.cfg.benchmark.world),
            "generator": GENERATOR_VERSION,
            "pipeline": PIPELINE_VERSION,
        }

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
        """The folder the benchmark's data is read from, and a fingerprint of its contents."""
        if self._benchmark_source is None:
            try:
                self._benchmark_source = self.benchmark.source()
            except BenchmarkError as error:
                raise StageError(str(error)) from error
        return self._benchmark_source

    def split(self, name: str) -> list[dict]:
        """A TOFU-layout split: the embedded model's pretraining and instruct data always come from the generated
        world; the others from the benchmark's folder."""
        if name not in self._split_cache:
            folder = self.world().path / "data" if name in WORLD_SPLITS else self.benchmark_source()[0]
            self._split_cache[name] = load_benchmark_split(folder, name)
        return self._split_cache[name]

    @property
    def forget_split(self) -> str:
        """The forget set's name (forget01, mix_a0, forget): part of cache keys and run names."""
        try:
            return self.benchmark.forget_id
        except BenchmarkError as error:
            raise StageError(str(error)) from error

    def forget_items(self) -> list[dict]:
        return self.benchmark.forget_items()

    def retain_items(self) -> list[dict]:
        return self.benchmark.retain_items()

    def eval_sets(self, required: set[str] | None = None) -> dict[str, list[dict]]:
        """The evaluation sets by name, loading only those `required` (all the benchmark has when None)."""
        available = self.benchmark.eval_set_names()
        if required is None:
            required = available - {name for name in available if name.startswith("muse_")} - {"holdout"}
        self._check_eval_sets(set(required))
        try:
            return self.benchmark.eval_sets(set(required))
        except BenchmarkError as error:
            raise StageError(str(error)) from error

    def _check_eval_sets(self, required: set[str]) -> None:
        unknown = required - self.benchmark.eval_set_names()
        if unknown:
            kind = self.cfg.benchmark.kind
            raise StageError(
                f"metrics.names={list(self.cfg.metrics.names)} need the eval set(s) {sorted(unknown)}, which "
                f"benchmark {self.cfg.benchmark.name!r} (kind {kind}) does not have; use its metrics "
                f"(`metrics={_METRICS_HINT.get(kind, 'tofu')}`)"
            )

    def training_examples(self, items: list[dict], what: str = "training data") -> list[dict]:
        """Question-answer items train on the answer; text items are packed into benchmark.block_size blocks."""
        tokenizer = self.tokenizer()
        qa = [item for item in items if "question" in item]
        texts = [item["text"] for item in items if "question" not in item]
        examples = qa_examples(tokenizer, qa, self.cfg.model.max_position_embeddings) if qa else []
        if texts:
            block_size = min(self.cfg.benchmark.block_size, self.cfg.model.max_position_embeddings)
            blocks = packed_text_blocks(tokenizer, texts, block_size)
            if not blocks:
                raise StageError(
                    f"{what}: {len(texts)} text(s) hold fewer tokens than one block of benchmark.block_size="
                    f"{block_size}; lower it or add data"
                )
            examples += blocks
        if not examples:
            raise StageError(f"{what} is empty")
        return examples

    # ------------------------------------------------------------------ tokenizer
    def prompt_format(self) -> PromptFormat:
        try:
            return PromptFormat.from_config(self.cfg.model.prompt)
        except ValueError as error:
            raise StageError(str(error)) from error

    def encoding_spec(self) -> dict:
        """What fixes the token sequences besides the tokenizer: the prompt format, when not the default."""
        prompt = _plain(self.cfg.model.prompt)
        return {} if prompt == _plain(PromptConfig()) else {"prompt": prompt}

    def tokenizer_spec(self) -> dict:
        return {
            "world": self.world().key,
            "benchmark": self.benchmark_source()[1],
            "vocab_size": self.cfg.model.vocab_size,
        }

    def tokenizer_artifact(self) -> Artifact:
        """The embedded model's BPE, trained on the world's corpus and the benchmark's text."""
        if self._tokenizer_artifact is not None:
            return self._tokenizer_artifact

        def build(out: Path) -> dict:
            if self.cfg.benchmark.kind == "synthetic_tofu":
                texts = generate_world(SyntheticWorldSpec(**self.world_spec()["world"])).corpus_texts()
            else:
                texts = [d["text"] for d in self.split("pretraining")]
                texts += [
                    f"{format_prompt(x['question'])}{format_answer(x['answer'])}"
                    for x in self.split("instruct")
                ]
                texts += self.benchmark.tokenizer_texts()
            with CostMeter("tokenizer", device="cpu") as meter:
                tokenizer = train_bpe_tokenizer(
                    texts,
                    vocab_size=self.cfg.model.vocab_size,
                    model_max_length=self.cfg.model.max_position_embeddings,
                )
                tokenizer.save_pretrained(out)
            return {"cost": meter.cost.to_dict()}

        self._tokenizer_artifact = self.record_stage(
            "tokenizer", self.store.get_or_build("tokenizer", self.tokenizer_spec(), build)
        )
        return self._tokenizer_artifact

    def tokenizer(self):
        if self._tokenizer is None:
            source = self.tokenizer_artifact().path if self.embedded else self.start().path
            tokenizer = load_tokenizer(source)
            try:
                set_prompt_format(tokenizer, self.prompt_format())
            except ValueError as error:
                raise StageError(str(error)) from error
            self._tokenizer = tokenizer
        return self._tokenizer

    # ------------------------------------------------------------------ model history (embedded)
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
        self.forget_split  # noqa: B018  (validates the forget set's name)
        try:
            self.benchmark.preflight()
        except (BenchmarkError, FileNotFoundError) as error:
            raise StageError(str(error)) from error
        from msa_bench.pipeline.evaluation import evaluation_plan, required_eval_sets

        self._check_eval_sets(required_eval_sets(evaluation_plan(list(self.cfg.metrics.names))))
        stage = self.cfg.checkpoint.stage
        if not self.embedded:
            if stage in EMBEDDED_STAGES:
                raise StageError(
                    f"checkpoint.stage={stage!r} names a stage of the embedded model's own history; with "
                    f"model.source=pretrained use checkpoint.stage=revision (a hub revision), closest or target"
                )
            if self.cfg.benchmark.replay_fraction > 0:
                raise StageError(
                    f"benchmark.replay_fraction={self.cfg.benchmark.replay_fraction} replays the embedded model's "
                    "generated pretraining data; set benchmark.replay_fraction=0 for model.source=pretrained"
                )
            self.start()
            if stage == "revision":
                self.checkpoint()
        elif stage == "revision":
            raise StageError(
                "checkpoint.stage=revision names a hub revision, which needs model.source=pretrained; the embedded "
                "model's states are pretrain (with checkpoint.step), base, instruct, closest and target"
            )
        elif stage == "pretrain":
            self._check_saved_step(self.cfg.checkpoint.step)

    def history(self) -> Artifact:
        if self._history is not None:
            return self._history
        self._require_embedded("the pretraining history")
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

    def _require_embedded(self, what: str) -> None:
        if not self.embedded:
            raise StageError(
                f"{what} exists only for the embedded model (model.source=embedded); model {self.cfg.model.name!r} "
                "is pretrained: name its earlier states with checkpoint.stage=revision"
            )

    def _finetuned_model(
        self, stage: str, base: ModelRef, examples, recipe: TrainRecipe, spec_extra: dict
    ) -> ModelRef:
        """Fine-tune `base` on `examples` with `recipe`, cached under a key of everything that determines it."""
        spec = (
            {"base": base.key, "recipe": _plain(recipe), "seed": self.cfg.seed}
            | spec_extra
            | self.encoding_spec()
        )
        if not self.embedded:
            spec["training"] = {
                "dtype": self.cfg.model.dtype,
                "max_length": self.cfg.model.max_position_embeddings,
            }
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
        self._require_embedded("the instruct stage")
        examples = qa_examples(
            self.tokenizer(), self.split("instruct"), self.cfg.model.max_position_embeddings
        )
        return self._finetuned_model(
            "instruct", self.base(), examples, self.cfg.model.instruct, {"data": "instruct"}
        )

    # ------------------------------------------------------------------ pretrained models
    def hub_model(self, hub_id: str, revision: str) -> ModelRef:
        """A pretrained model state: `hub_id` at `revision`, from model.local_root or the hub, stored in model.dtype
        (a copy is cached when the hub stores another dtype: arithmetic needs every state in one dtype)."""
        if (hub_id, revision) not in self._hub_models:
            try:
                path = resolve_model_dir(hub_id, revision, self.cfg.model.local_root)
            except FileNotFoundError as error:
                raise StageError(str(error)) from error
            ref = ModelRef(path, f"hub/{hub_id}@{revision}/{model_fingerprint(path)}", f"{hub_id}@{revision}")
            self._hub_models[(hub_id, revision)] = self._in_model_dtype(ref)
        return self._hub_models[(hub_id, revision)]

    def _in_model_dtype(self, ref: ModelRef) -> ModelRef:
        config = json.loads((ref.path / "config.json").read_text(encoding="utf-8"))
        stored = config.get("dtype") or config.get("torch_dtype")
        wanted = self.cfg.model.dtype
        if stored is None or stored == wanted:
            return ref

        def build(out: Path) -> dict:
            log.info("converting %s from %s to %s", ref.label, stored, wanted)
            save_model(load_model(ref.path, "cpu", wanted), load_tokenizer(ref.path), out)
            return {}

        artifact = self.store.get_or_build("hub_model", {"model": ref.key, "dtype": wanted}, build)
        return ModelRef(artifact.path, f"{ref.key}/{wanted}", ref.label)

    def start(self) -> ModelRef:
        """The model the benchmark's stages start from: the pretrained model, or the embedded instruct model."""
        if self.embedded:
            return self.instruct()
        if not self.cfg.model.hub_id:
            raise StageError(f"model.source=pretrained needs model.hub_id (model {self.cfg.model.name!r})")
        return self.hub_model(self.cfg.model.hub_id, self.cfg.model.revision)

    # ------------------------------------------------------------------ benchmark models
    def closest(self) -> ModelRef:
        """The last state before the forget set was seen: the model the target is fine-tuned from."""
        start = self.start()
        clean = self.benchmark.clean_items() if self.embedded else None
        if not clean:
            return start
        examples = self.training_examples(clean, "the clean data")
        extra = {"data": self.benchmark.data_id("clean")} | self._data_spec()
        return self._finetuned_model("clean", start, examples, self.cfg.benchmark.clean_recipe, extra)

    def _replay_examples(self, n_benchmark: int) -> list[dict]:
        """Pretraining blocks and instruct QA replayed during the target/oracle fine-tune, half of each."""
        count = int(round(self.cfg.benchmark.replay_fraction * n_benchmark))
        if count <= 0 or not self.embedded:
            return []
        tokenizer = self.tokenizer()
        texts = [d["text"] for d in self.split("pretraining")]
        blocks = packed_text_blocks(tokenizer, texts, self.cfg.model.pretrain.block_size)
        instruct = qa_examples(tokenizer, self.split("instruct"), self.cfg.model.max_position_embeddings)
        return sample_examples(blocks, count // 2, seed=self.cfg.seed) + sample_examples(
            instruct, count - count // 2, seed=self.cfg.seed + 1
        )

    def _data_spec(self) -> dict:
        """What identifies the benchmark data a fine-tune reads, beyond its data id."""
        b = self.cfg.benchmark
        if self.embedded and b.kind in TOFU_KINDS:
            return {}  # the embedded tokenizer's key already covers the TOFU files (and keeps old caches valid)
        return {
            "source": self.benchmark_source()[1],
            "max_documents": b.max_documents,
            "block_size": b.block_size,
        }

    def _benchmark_model(self, stage: str, items: list[dict], data_id: str) -> ModelRef:
        examples = self.training_examples(items, f"the {stage}'s data")
        examples = examples + self._replay_examples(len(examples))
        extra = {"data": data_id, "replay_fraction": self.cfg.benchmark.replay_fraction} | self._data_spec()
        return self._finetuned_model(stage, self.closest(), examples, self.cfg.benchmark.target_recipe, extra)

    def target(self) -> ModelRef:
        return self._benchmark_model(
            "target", self.benchmark.target_items(), self.benchmark.data_id("target")
        )

    def oracle(self) -> ModelRef:
        items = self.benchmark.oracle_items()
        if items is None:
            closest = self.closest()
            return ModelRef(closest.path, closest.key, "oracle")
        return self._benchmark_model("oracle", items, self.benchmark.data_id("oracle"))

    def checkpoint(self, checkpoint: CheckpointConfig | None = None) -> ModelRef:
        """θ0: the model state the config's `checkpoint` names."""
        checkpoint = checkpoint or self.cfg.checkpoint
        stage = checkpoint.stage
        if stage in EMBEDDED_STAGES:
            self._require_embedded(f"checkpoint.stage={stage}")
        if stage == "pretrain":
            if checkpoint.step is None:
                raise StageError("checkpoint.stage=pretrain needs checkpoint.step (a saved pretraining step)")
            return self.pretrain_checkpoint(checkpoint.step)
        if stage == "base":
            return self.base()
        if stage == "instruct":
            return self.instruct()
        if stage == "closest":
            return self.closest()
        if stage == "target":
            return self.target()
        if stage == "revision":
            if self.embedded:
                raise StageError(
                    "checkpoint.stage=revision names a hub revision, which needs model.source=pretrained"
                )
            hub_id = checkpoint.hub_id or self.cfg.model.hub_id
            if not checkpoint.revision or not hub_id:
                raise StageError(
                    "checkpoint.stage=revision needs checkpoint.revision (a hub branch, tag or commit) and a hub id "
                    "(checkpoint.hub_id or model.hub_id)"
                )
            return self.hub_model(hub_id, checkpoint.revision)
        raise StageError(f"checkpoint.stage={stage!r} is not valid; choose one of {list(CHECKPOINT_STAGES)}")

    def finetune(
        self, stage: str, base: ModelRef, items: list[dict], recipe: TrainRecipe, data_id: str
    ) -> ModelRef:
        """Fine-tune a model state on benchmark items (the forget set, a retain subset, ...)."""
        examples = self.training_examples(items, f"the {stage}'s data")
        return self._finetuned_model(stage, base, examples, recipe, {"data": data_id} | self._data_spec())

    def retain_subset(self, size: int | None, seed: int) -> tuple[list[dict], str]:
        """A seeded random retain subset, by default the size of the forget set (as in the paper), capped at the
        retain pool's size."""
        retain = self.retain_items()
        if size is None:
            size = min(len(self.forget_items()), len(retain))
        if size <= 0 or size > len(retain):
            raise StageError(
                f"method.retain_size={size} must be between 1 and {len(retain)} (the retain pool's size)"
            )
        indices = sorted(random.Random(seed).sample(range(len(retain)), size))
        return [retain[i] for i in indices], f"{self.benchmark.data_id('retain')}[{size} seed {seed}]"


_METRICS_HINT = {"restor": "restor", "muse": "muse"}
