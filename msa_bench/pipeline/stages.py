"""The pipeline's stages, each a cached artifact keyed by the configuration it depends on.

Embedded model: world+tokenizer -> pretraining history (saved steps, base) -> instruct -> [clean] -> target / oracle.
Pretrained model: the hub model at `model.revision` -> target / oracle; its earlier states are hub revisions.
Then: fine-tunes of θ0 -> unlearned model -> evaluation. What the target and the oracle learn comes from the benchmark
(msa_bench/benchmarks). A second run with another method, α or β finds the earlier stages in the cache and retrains
nothing; a run killed mid-way resumes from the completed stages.

`Pipeline` is the facade; each concern lives in its own module:
- pipeline/benchmark_data.py: the benchmark's data, eval sets and training examples;
- pipeline/history.py: the embedded model's history (world, tokenizer, pretraining, instruct);
- pipeline/hub_models.py: pretrained models from the hub;
- pipeline/checkpoints.py: θ0 and its checks;
- pipeline/benchmark_models.py: fine-tunes, and the benchmark's clean, target and oracle models;
- pipeline/refs.py: ModelRef.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from msa_bench.benchmarks import Benchmark
from msa_bench.config.schema import CHECKPOINT_STAGES, EMBEDDED_STAGES, MSABenchConfig
from msa_bench.errors import StageError
from msa_bench.pipeline.artifacts import Artifact, ArtifactStore
from msa_bench.pipeline.benchmark_data import BenchmarkData
from msa_bench.pipeline.benchmark_models import BenchmarkModels
from msa_bench.pipeline.checkpoints import CheckpointResolution
from msa_bench.pipeline.history import PIPELINE_VERSION, EmbeddedHistory
from msa_bench.pipeline.hub_models import HubModels
from msa_bench.pipeline.refs import ModelRef

__all__ = [
    "CHECKPOINT_STAGES",
    "EMBEDDED_STAGES",
    "PIPELINE_VERSION",
    "ModelRef",
    "Pipeline",
    "StageError",
]

log = logging.getLogger("msa_bench.pipeline")


class Pipeline(BenchmarkData, EmbeddedHistory, HubModels, CheckpointResolution, BenchmarkModels):
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
        self._heldout_qa: tuple[list[dict], str] | None = None
        self._pretrain_blocks: list[dict] | None = None
        self._hub_models: dict[tuple[str, str], ModelRef] = {}

    @property
    def scratch_root(self) -> Path:
        """Where the trainer keeps its scratch folders: the artifact cache (see msa_bench/training/scratch.py)."""
        return self.store.root

    @property
    def embedded(self) -> bool:
        return self.cfg.model.source == "embedded"

    # ------------------------------------------------------------------ bookkeeping
    def record_stage(self, stage: str, artifact: Artifact) -> Artifact:
        """Remember a stage's cost for results.json; a stage built in this run stays recorded as built."""
        previous = self.costs.get(stage)
        if previous is not None and previous["artifact"] == f"{artifact.kind}/{artifact.key}":
            return artifact
        cost = dict(artifact.meta.get("cost", {}))
        cost["reused"] = artifact.reused
        cost["artifact"] = f"{artifact.kind}/{artifact.key}"
        # The digest of the entry's file list (each file's sha256): which bytes this run read or wrote for the stage.
        cost["content_sha256"] = artifact.content
        self.costs[stage] = cost
        return artifact

    def cached_model(
        self,
        stage: str,
        kind: str,
        spec: dict,
        build: Callable[[Path], dict],
        label: str | None = None,
        *,
        trains: bool = False,
    ) -> ModelRef:
        """The model of artifact `kind` keyed by `spec`, saved by `build(folder)` the first time; its cost is
        recorded as `stage`, and the reference is labelled `label` (default: the stage). `trains=True` says that
        `build` calls run_training: with several processes every rank runs it (ArtifactStore.get_or_build)."""
        artifact = self.store.get_or_build(kind, spec, build, collective=trains)
        self.record_stage(stage, artifact)
        return ModelRef.in_artifact(artifact, label or stage)

    def _announce(self, stage: str, spec: dict) -> None:
        if not self.store.contains(stage.split(":")[0], spec):
            log.info("building %s", stage)

    # ------------------------------------------------------------------ checks before training
    def preflight(self) -> None:
        """Checks that need the data but no training, run before any model is trained."""
        self.forget_split  # noqa: B018  (validates the forget set's name)
        self.benchmark.preflight()
        from msa_bench.metrics.registry import SUITES
        from msa_bench.pipeline.evaluation import evaluation_plan, required_eval_sets

        plan = evaluation_plan(list(self.cfg.metrics.names))
        self.preflight_eval_sets(required_eval_sets(plan))
        for suite_name, names in plan.items():
            SUITES[suite_name].preflight(names, self.cfg.metrics)
        self.check_checkpoint_choice(self.cfg.checkpoint)
        if not self.embedded:
            if self.cfg.benchmark.replay_fraction > 0:
                raise StageError(
                    f"benchmark.replay_fraction={self.cfg.benchmark.replay_fraction} replays the embedded model's "
                    "generated pretraining data; set benchmark.replay_fraction=0 for model.source=pretrained"
                )
            self.start()
        self.preflight_checkpoint()
