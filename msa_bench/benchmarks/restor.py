"""RESTOR (Rezaei et al. 2025): corrupt a model's knowledge of real people, then ask whether unlearning restores it.

- The forget set is the corruption documents of one mix (`benchmark.forget_split`, e.g. mix_a0).
- The ideal (oracle) is the clean model: the last state before the corruption. A pretrained model is its own clean
  model; the embedded model knows no Wikidata facts, so it first learns every clean fact of facts.json as
  "{question} {answer}." lines (`benchmark.clean_recipe`): that is its clean model.
- The target is the clean model after continued training on the corruption documents and, unless
  `benchmark.mix_retain_into_target=false`, the retain pool (correct facts about other people, which the clean model
  already knows). Without that mix the target would be the forget vector's own fine-tune, and MSA from the clean
  model would return the clean model exactly, by construction rather than by unlearning.
- The retain pool is the clean facts about entities outside the evaluation set.
- Evaluation: `restor_questions`, every (entity, relation) question about the 50 evaluation entities with in-context
  examples of the same relation (msa_bench/metrics/restor.py), scored by alias matching.

RESTOR is distributed on GitHub (k1rezaei/restor), not on the hub: it is read from `benchmark.data_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from msa_bench.benchmarks.base import Benchmark, BenchmarkError, ForgetSplits, register_benchmark
from msa_bench.config.schema import BenchmarkConfig, TrainRecipe
from msa_bench.data.restor import (
    ENTITIES_FILE,
    FACTS_FILE,
    MIX_PREFIX,
    RestorData,
    available_mixes,
    load_restor,
)
from msa_bench.data.sources import local_data_source
from msa_bench.metrics.restor import RESTOR_QUESTIONS, restor_question_items


@dataclass
class RestorConfig(BenchmarkConfig):
    # The target also trains on the retain pool (clean facts about people outside the evaluation set), as RESTOR's
    # mix_a<k> documents mix in correct facts. Without it, θ_D would be exactly the forget vector's fine-tune from
    # the clean model, and MSA from that checkpoint would return the clean model by construction.
    mix_retain_into_target: bool = True
    # With the embedded model, the clean model is the instruct model taught the clean facts with this recipe (a
    # pretrained model is its own clean model).
    clean_recipe: TrainRecipe = field(default_factory=lambda: TrainRecipe(epochs=10, learning_rate=1e-3))


@register_benchmark
class RestorBenchmark(Benchmark):
    kinds = ("restor",)
    config_class = RestorConfig
    # Any corruption mix file mix_a<k>.json; whether it is in benchmark.data_dir is checked by preflight.
    forget_splits = ForgetSplits(
        pattern=r"mix_a\d+",
        examples=("mix_a0", "mix_a1"),
        hint="(the corruption mix: the file mix_a<k>.json in benchmark.data_dir)",
    )
    family = "restor"
    default_metrics = "restor"
    forget_metrics = ("restor_accuracy",)
    default_eval_sets = (RESTOR_QUESTIONS,)

    def data_id(self, role: str) -> str:
        data_id = super().data_id(role)
        # The key must say when the target also learnt the retain pool.
        return f"{data_id}+retain" if role == "target" and self.cfg.mix_retain_into_target else data_id

    def source(self) -> tuple[Path, str]:
        if not self.cfg.data_dir:
            raise BenchmarkError(
                "RESTOR is read from a local folder: set benchmark.data_dir to a copy of the RESTOR datasets folder "
                "(facts.json, entities.json, mix_a*.json; github.com/k1rezaei/restor), or MSA_BENCH_DATA to a "
                "folder laid out like ../shared/data"
            )
        return local_data_source(Path(self.cfg.data_dir), "benchmark.data_dir")

    def preflight(self) -> None:
        folder = self.context.source_folder()
        mix_file = f"{self.forget_id}.json"
        missing = [name for name in (FACTS_FILE, ENTITIES_FILE, mix_file) if not (folder / name).is_file()]
        if missing:
            mixes = [f"{MIX_PREFIX}{m}" for m in available_mixes(folder)]
            raise BenchmarkError(
                f"RESTOR file(s) {missing} not found in {folder} (benchmark.data_dir); the corruption mixes there "
                f"are {mixes} (benchmark.forget_split)"
            )
        self.data  # noqa: B018  (every file parsed in full and every record checked, before any training)

    @cached_property
    def data(self) -> RestorData:
        folder = self.context.source_folder()
        return load_restor(folder, mix=self.forget_id.removeprefix(MIX_PREFIX))

    @cached_property
    def _clean_texts(self) -> list[str]:
        return self.data.clean_fact_texts()

    def tokenizer_texts(self) -> list[str]:
        icl_lines = [
            f"{example['question']} {example['answer']}"
            for examples in self.data.icl_examples.values()
            for example in examples
        ]
        return self._clean_texts + list(self.data.corruption_texts) + icl_lines

    def clean_items(self) -> list[dict] | None:
        return [{"text": text} for text in self._clean_texts]

    def target_items(self) -> list[dict]:
        return self.forget_items() + (self.retain_items() if self.cfg.mix_retain_into_target else [])

    def oracle_items(self) -> None:
        return None

    def forget_items(self) -> list[dict]:
        documents = list(self.data.corruption_texts)
        if self.cfg.max_documents is not None:
            documents = documents[: self.cfg.max_documents]
        return [{"text": text} for text in documents]

    def retain_items(self) -> list[dict]:
        evaluated = set(self.data.entities)
        return [
            {"text": f"{fact['question']} {fact['answers'][0]}."}
            for entity, relations in self.data.facts.items()
            if entity not in evaluated
            for fact in relations.values()
            if fact["answers"]
        ]

    def eval_sets(self, required: set[str]) -> dict[str, list[dict]]:
        return {RESTOR_QUESTIONS: restor_question_items(self.data)} if RESTOR_QUESTIONS in required else {}
