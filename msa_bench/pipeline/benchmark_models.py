"""Fine-tuned model states: the clean, target and oracle models a benchmark defines, and fine-tunes of any state.

Every fine-tune is cached under a key of everything that determines it (base model, recipe, seed, data, encoding).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from msa_bench.config.schema import TrainRecipe
from msa_bench.errors import StageError
from msa_bench.models.build import count_parameters, load_model, save_model, trusts_remote_code
from msa_bench.pipeline.cost import CostMeter
from msa_bench.pipeline.disk_space import require_space_for_states, stored_parameter_count
from msa_bench.pipeline.refs import ModelRef, plain
from msa_bench.pipeline.stage_memory import check_finetune
from msa_bench.training.data import ExampleDataset, packed_text_blocks, qa_examples, sample_examples
from msa_bench.training.lora import LoraPlan, lora_plan, save_trained, with_lora
from msa_bench.training.trainer import run_training

log = logging.getLogger("msa_bench.pipeline")


class BenchmarkModels:
    """Fine-tunes and the benchmark's models (a mixin of Pipeline)."""

    def finetuned_model(
        self,
        stage: str,
        base: ModelRef,
        examples,
        recipe: TrainRecipe,
        spec_extra: dict,
        lora: LoraPlan | None = None,
        seed: int | None = None,
    ) -> ModelRef:
        """Fine-tune `base` on `examples` with `recipe`, cached under a key of everything that determines it.

        With a LoRA plan, only adapters train; the plan (settings and storage) joins the key, which without one
        stays as it always was. `seed` (default: the run's) orders the data and seeds the adapters."""
        seed = self.cfg.seed if seed is None else seed
        spec = {"base": base.key, "recipe": plain(recipe), "seed": seed} | spec_extra | self.encoding_spec()
        if lora is not None:
            spec["peft"] = lora.key()
        if not self.embedded:
            spec["training"] = {
                "dtype": self.cfg.model.dtype,
                "max_length": self.cfg.model.max_position_embeddings,
            }
        self._announce(f"finetune:{stage}", spec)

        def build(out: Path) -> dict:
            n_parameters = stored_parameter_count(base.path)
            require_space_for_states(
                self.store.root, f"fine-tune {stage}", n_parameters, self.cfg.model.dtype
            )
            tokenizer = self.tokenizer()
            estimated_mb = check_finetune(self, stage, base.path, recipe, examples, lora)  # memory preflight
            model = load_model(
                base.path,
                self.device,
                self.cfg.model.dtype,
                trust_remote_code=trusts_remote_code(self.cfg.model),
            )
            if lora is not None:
                model = with_lora(model, lora.settings, seed)
            log.info("fine-tuning %s from %s on %d examples", stage, base.label, len(examples))
            with CostMeter(stage, device=self.device, estimated_peak_memory_mb=estimated_mb) as meter:
                stats = run_training(
                    model,
                    ExampleDataset(examples),
                    recipe,
                    pad_token_id=tokenizer.pad_token_id,
                    seed=seed,
                    device=self.device,
                    progress=self.cfg.progress.library_bars,
                    scratch_root=self.scratch_root,
                )
                meter.add_tokens(stats.tokens, count_parameters(model), training=True)
                if lora is None:
                    save_model(
                        model, tokenizer, out, state_dict=stats.state_dict
                    )  # gathered under FSDP/ZeRO-3
                else:  # what the adapters learnt goes into the stage's cost, and so into results.json
                    adapters = save_trained(model, tokenizer, out, lora)
            cost = meter.cost.to_dict()
            if lora is not None:
                cost["lora"] = adapters
            return {"cost": cost, "final_loss": stats.final_loss, "steps": stats.steps}

        return self.cached_model(stage, "finetune", spec, build, trains=True)

    def start(self) -> ModelRef:
        """The model the benchmark's stages start from: the pretrained model, or the embedded instruct model."""
        if self.embedded:
            return self.instruct()
        return self.hub_model(self.cfg.model.hub_id, self.cfg.model.revision)

    def closest(self) -> ModelRef:
        """The last state before the forget set was seen: the model the target is fine-tuned from."""
        start = self.start()
        clean = self.benchmark.clean_items() if self.embedded else None
        if not clean:
            return start
        examples = self.training_examples(clean, "the clean data")
        extra = {"data": self.benchmark.data_id("clean")} | self.data_spec()
        lora = lora_plan(self.cfg.peft, "benchmark_model")
        return self.finetuned_model("clean", start, examples, self.cfg.benchmark.clean_recipe, extra, lora)

    def _replay_examples(self, n_benchmark: int, seed: int) -> list[dict]:
        """Pretraining blocks and instruct QA replayed during the target/oracle fine-tune, half of each, drawn
        with `seed`."""
        count = int(round(self.cfg.benchmark.replay_fraction * n_benchmark))
        if count <= 0 or not self.embedded:
            return []
        tokenizer = self.tokenizer()
        texts = [d["text"] for d in self.split("pretraining")]
        blocks = packed_text_blocks(tokenizer, texts, self.cfg.model.pretrain.block_size)
        instruct = qa_examples(tokenizer, self.split("instruct"), self.cfg.model.max_position_embeddings)
        return sample_examples(blocks, count // 2, seed=seed) + sample_examples(
            instruct, count - count // 2, seed=seed + 1
        )

    def _benchmark_model(
        self, stage: str, items: list[dict], data_id: str, seed: int | None = None
    ) -> ModelRef:
        """A model of the benchmark's recipe from the closest state; `seed` (default: the run's) draws its replay
        data and orders its training data."""
        seed = self.cfg.seed if seed is None else seed
        examples = self.training_examples(items, f"the {stage}'s data")
        examples = examples + self._replay_examples(len(examples), seed)
        extra = {"data": data_id, "replay_fraction": self.cfg.benchmark.replay_fraction} | self.data_spec()
        lora = lora_plan(self.cfg.peft, "benchmark_model")
        return self.finetuned_model(
            stage, self.closest(), examples, self.cfg.benchmark.target_recipe, extra, lora, seed=seed
        )

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

    def oracle_with_seed(self, seed: int) -> ModelRef:
        """The benchmark's oracle trained again from the same closest state on the same data with another seed
        (the noise floor, msa_bench/pipeline/noise_floor.py); with the run's seed it is the run's oracle."""
        items = self.benchmark.oracle_items()
        if items is None:
            raise StageError(
                f"benchmark.kind={self.benchmark.kind}'s oracle is the model the target started from: no seed "
                "changes it, so it has no noise floor; run benchmark.oracle_seeds=1"
            )
        if seed == self.cfg.seed:
            return self.oracle()
        label = f"oracle (seed {seed})"
        oracle = self._benchmark_model(label, items, self.benchmark.data_id("oracle"), seed=seed)
        return ModelRef(oracle.path, oracle.key, label)

    def oracle_after_requests(self, requests, k: int) -> ModelRef:
        """The oracle of sequential step k: the benchmark's oracle recipe from the same starting point, on its oracle
        data plus the forget items of the requests after k, so it never saw requests 1..k. After the last request
        that is the benchmark's own oracle, the same cached model."""
        if k == len(requests):
            return self.oracle()
        items = self.benchmark.oracle_items()
        if items is None:
            raise StageError(
                f"benchmark.requests={len(requests)}: benchmark.kind={self.benchmark.kind}'s oracle is the model "
                "the target started from, which no request changes; sequential oracles need an oracle data set"
            )
        later = [item for request in requests[k:] for item in request.items]
        # Content-addressed by its data: the digest of the added items joins the oracle's data id.
        digest = hashlib.sha256(json.dumps(later, sort_keys=True).encode()).hexdigest()[:16]
        data_id = (
            f"{self.benchmark.data_id('oracle')}+{self.forget_split}[requests {k + 1}-{len(requests)} of "
            f"{len(requests)}, {len(later)} items, sha256 {digest}]"
        )
        oracle = self._benchmark_model(f"oracle (request {k})", items + later, data_id)
        return ModelRef(oracle.path, oracle.key, f"oracle (request {k})")

    def finetune(
        self, stage: str, base: ModelRef, items: list[dict], recipe: TrainRecipe, data_id: str
    ) -> ModelRef:
        """Fine-tune a model state on benchmark items (the forget set, a retain subset, ...)."""
        examples = self.training_examples(items, f"the {stage}'s data")
        extra = {"data": data_id} | self.data_spec()
        return self.finetuned_model(stage, base, examples, recipe, extra, lora_plan(self.cfg.peft, "vector"))
