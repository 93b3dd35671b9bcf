"""The embedded model's own history: the generated world, the tokenizer, pretraining (saved steps, base), instruct.

A pretrained model has none of these stages (its tokenizer is the hub's, its earlier states are hub revisions).
"""

from __future__ import annotations

import logging
from pathlib import Path

from msa_bench.config.schema import PromptConfig
from msa_bench.data.formatting import PromptFormat, format_answer, format_prompt, set_prompt_format
from msa_bench.data.synthetic import GENERATOR_VERSION, SyntheticWorldSpec, generate_world, write_benchmark
from msa_bench.data.tokenizer import train_bpe_tokenizer
from msa_bench.errors import StageError
from msa_bench.models.build import (
    build_embedded_model,
    count_parameters,
    load_tokenizer,
    save_model,
    trusts_remote_code,
)
from msa_bench.pipeline.artifacts import Artifact
from msa_bench.pipeline.cost import CostMeter
from msa_bench.pipeline.disk_space import require_space_for_states
from msa_bench.pipeline.refs import ModelRef, plain
from msa_bench.pipeline.stage_memory import check_built_model
from msa_bench.training.data import ExampleDataset, packed_text_blocks, qa_examples
from msa_bench.training.trainer import run_training, total_steps

log = logging.getLogger("msa_bench.pipeline")

# Bump when a change to training, data encoding or evaluation code should invalidate every cached artifact: every
# key depends on the world's key, which includes this.
PIPELINE_VERSION = 2


class EmbeddedHistory:
    """The stages of the embedded model's history (a mixin of Pipeline)."""

    def world_spec(self) -> dict:
        """The generated world behind the embedded model's history (and, for synthetic_tofu, the benchmark)."""
        return {
            "world": plain(self.cfg.benchmark.world),
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

    # ------------------------------------------------------------------ tokenizer
    def prompt_format(self) -> PromptFormat:
        return PromptFormat.from_config(self.cfg.model.prompt)

    def encoding_spec(self) -> dict:
        """What fixes the token sequences besides the tokenizer: the prompt format, when not the default."""
        prompt = plain(self.cfg.model.prompt)
        return {} if prompt == plain(PromptConfig()) else {"prompt": prompt}

    def tokenizer_spec(self) -> dict:
        return {
            "world": self.world().content_key,
            "benchmark": self.benchmark_source()[1],
            "vocab_size": self.cfg.model.vocab_size,
        }

    def _tokenizer_corpus(self) -> list[str]:
        if self.benchmark.uses_generated_world:
            # The benchmark is part of the world: the world's own corpus already holds its text.
            return generate_world(SyntheticWorldSpec(**self.world_spec()["world"])).corpus_texts()
        texts = [d["text"] for d in self.split("pretraining")]
        texts += [
            f"{format_prompt(x['question'])}{format_answer(x['answer'])}" for x in self.split("instruct")
        ]
        return texts + self.benchmark.tokenizer_texts()

    def tokenizer_artifact(self) -> Artifact:
        """The embedded model's BPE, trained on the world's corpus and the benchmark's text."""
        if self._tokenizer_artifact is not None:
            return self._tokenizer_artifact

        def build(out: Path) -> dict:
            texts = self._tokenizer_corpus()
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
            tokenizer = load_tokenizer(source, trust_remote_code=trusts_remote_code(self.cfg.model))
            set_prompt_format(tokenizer, self.prompt_format())
            self._tokenizer = tokenizer
        return self._tokenizer

    # ------------------------------------------------------------------ pretraining
    def history_spec(self) -> dict:
        # The hub fields had these fixed values in the key when one schema held both model variants; writing them
        # keeps the caches of that time valid.
        model = (
            {"hub_id": None, "revision": "main", "local_root": None}
            | plain(self.cfg.model)
            | {"instruct": None}
        )
        return {"tokenizer": self.tokenizer_artifact().content_key, "model": model, "seed": self.cfg.seed}

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

    def history(self) -> Artifact:
        if self._history is not None:
            return self._history
        self.require_embedded("the pretraining history")
        spec = self.history_spec()
        pre = self.cfg.model.pretrain
        self._announce("history", spec)

        def build(out: Path) -> dict:
            tokenizer = self.tokenizer()
            blocks = self.pretrain_blocks()
            saved, n_steps = self.pretrain_schedule()
            model = build_embedded_model(self.cfg.model, tokenizer, seed=self.cfg.seed)
            # Every saved step and the base are written.
            require_space_for_states(
                self.store.root, "pretraining", count_parameters(model), self.cfg.model.dtype, len(saved) + 1
            )
            log.info(
                "pretraining %s parameters on %d blocks of %d tokens for %d steps (checkpoints at %s)",
                f"{count_parameters(model):,}",
                len(blocks),
                pre.block_size,
                n_steps,
                saved,
            )
            estimated_mb = check_built_model(self, "pretrain", model, pre.recipe, blocks)  # memory preflight
            with CostMeter("pretrain", device=self.device, estimated_peak_memory_mb=estimated_mb) as meter:
                stats = run_training(
                    model,
                    ExampleDataset(blocks),
                    pre.recipe,
                    pad_token_id=tokenizer.pad_token_id,
                    seed=self.cfg.seed,
                    device=self.device,
                    progress=self.cfg.progress.library_bars,
                    save_at_steps=saved,
                    save_fn=lambda step: save_model(model, tokenizer, out / "pretrain" / f"step-{step:06d}"),
                    scratch_root=self.scratch_root,
                )
                meter.add_tokens(stats.tokens, count_parameters(model), training=True)
                save_model(model, tokenizer, out / "base", state_dict=stats.state_dict)
            return {
                "cost": meter.cost.to_dict(),
                "saved_steps": saved,
                "total_steps": n_steps,
                "final_loss": stats.final_loss,
                "n_parameters": count_parameters(model),
            }

        self._history = self.record_stage(
            "pretrain", self.store.get_or_build("history", spec, build, collective=True)
        )
        return self._history

    def require_embedded(self, what: str) -> None:
        if not self.embedded:
            raise StageError(
                f"{what} exists only for the embedded model (model.source=embedded); model {self.cfg.model.name!r} "
                "is pretrained: name its earlier states with checkpoint.stage=revision"
            )

    def base(self) -> ModelRef:
        return ModelRef.in_artifact(self.history(), "base", "base")

    def check_saved_step(self, step: int | None) -> None:
        saved, total = self.pretrain_schedule()
        if step not in saved:
            raise StageError(
                f"checkpoint.step={step} was never saved; the saved pretraining steps are {saved} "
                f"(of {total}); `checkpoint=base` is the end of pretraining"
            )

    def pretrain_checkpoint(self, step: int) -> ModelRef:
        self.check_saved_step(step)
        return ModelRef.in_artifact(self.history(), f"pretrain step {step}", f"pretrain/step-{step:06d}")

    def instruct(self) -> ModelRef:
        self.require_embedded("the instruct stage")
        examples = qa_examples(
            self.tokenizer(), self.split("instruct"), self.cfg.model.max_position_embeddings
        )
        return self.finetuned_model(
            "instruct", self.base(), examples, self.cfg.model.instruct, {"data": "instruct"}
        )
