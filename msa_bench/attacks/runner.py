"""Run the configured robustness attacks on the method's model, the target and the oracle, and give their metrics
under `attack/<name>/<metric>` (docs/attacks.md).

- Quantization and relearning make an attacked model (a cached stage, msa_bench/attacks/stages.py) and evaluate it
  with the run's metrics: the benchmark's forget metrics and its utility summary.
- leak@k evaluates the unattacked model again with sampled decoding (metrics.sampling) on the benchmark's
  generation forget metrics.
- Cross-model metrics (forget quality, privleak) under an attack compare with the oracle under the same attack: a
  method is robust when, attacked, it is indistinguishable from the retrained model attacked the same way.
- Relearning evaluates the forget items it did not train on, so the unattacked values on those items are given too,
  as `attack/<name>/unattacked/<metric>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field

from msa_bench.attacks.stages import quantized_model, refuse_overlap, relearned_model
from msa_bench.benchmarks.base import RelearningData
from msa_bench.config.attacks import GROUPED_SCHEMES, QUANTIZATION_SCHEMES
from msa_bench.config.schema import SamplingConfig
from msa_bench.errors import AttackError, BenchmarkError
from msa_bench.pipeline.evaluation import (
    EvalView,
    evaluate_model,
    evaluation_plan,
    final_metrics,
    required_eval_sets,
)
from msa_bench.pipeline.refs import ModelRef, plain

log = logging.getLogger("msa_bench.attacks")

ROLES = ("method", "target", "oracle")
ATTACK_PREFIX = "attack"


def attack_key(attack: str, metric: str, *, unattacked: bool = False) -> str:
    """results.json's key of `metric` under `attack` (or of its unattacked value on the attack's items)."""
    return (
        f"{ATTACK_PREFIX}/{attack}/unattacked/{metric}"
        if unattacked
        else f"{ATTACK_PREFIX}/{attack}/{metric}"
    )


def attack_stage_names(attacks) -> list[str]:
    """The console's stage lines for the configured attacks, one per attack, in the order they run."""
    return [f"attack {name} (method, target, oracle)" for name in attacks.names()]


@dataclass
class AttackResults:
    """What the attacks add to results.json: metrics and provenance per role, and the `attacks` section."""

    metrics: dict[str, dict] = field(default_factory=lambda: {role: {} for role in ROLES})
    provenance: dict[str, dict] = field(default_factory=lambda: {role: {} for role in ROLES})
    records: dict[str, dict] = field(default_factory=dict)

    def add(self, attack: str, evaluations: dict, oracle_evaluation, names, settings, eval_sets_for, **key):
        for role in ROLES:
            values, provenance = final_metrics(
                evaluations[role],
                oracle_evaluation,
                names,
                settings,
                eval_sets_for,
                model=f"{role} [{attack}]",
            )
            for metric, value in values.items():
                self.metrics[role][attack_key(attack, metric, **key)] = value
            for metric, reason in provenance.items():
                self.provenance[role][attack_key(attack, metric, **key)] = reason


class AttackRunner:
    """The attacks of one run, over its three models."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.cfg = pipeline.cfg
        self.models: dict[str, ModelRef] = {}
        self.names = list(self.cfg.metrics.names)
        self.benchmark = pipeline.benchmark
        self.results = AttackResults()
        self._relearning_inputs: dict[str, tuple[RelearningData, EvalView, dict] | None] = {}

    def preflight(self) -> None:
        """Before any training: each relearning attack's data (drawn, and checked for overlap with the evaluated
        items) and each grouped quantization's group size against the embedded model's layer widths."""
        for name, settings in self.cfg.attacks.relearning.items():
            self._relearning_inputs[name] = self._relearning_input(name, settings)
        model = self.cfg.model
        if self.pipeline.embedded:
            widths = {
                "model.hidden_size": model.hidden_size,
                "model.intermediate_size": model.intermediate_size,
            }
            for name, settings in self.cfg.attacks.quantization.items():
                if settings.scheme not in GROUPED_SCHEMES:
                    continue
                for key, width in widths.items():
                    if width % settings.group_size:
                        raise AttackError(
                            f"attack {name}: attacks.quantization.{name}.group_size={settings.group_size} does not "
                            f"divide {key}={width}, the input width of some of the model's linear layers; choose a "
                            f"group_size that divides {sorted(widths.values())}"
                        )

    def run(self, progress, models: dict[str, ModelRef]) -> AttackResults:
        """Every configured attack on `models` (method, target, oracle), one console stage each."""
        self.models = models
        attacks = self.cfg.attacks
        for name, settings in attacks.quantization.items():
            with progress.stage():
                self._quantization(name, settings)
        for name, settings in attacks.relearning.items():
            with progress.stage():
                self._relearning(name, settings)
        for name, settings in attacks.sampling.items():
            with progress.stage():
                self._sampling(name, settings)
        return self.results

    def _relabelled(self, role: str, what: str) -> ModelRef:
        """The unattacked model of `role`, labelled for a stage of its own (`eval:<role> [<what>]` in the costs)."""
        model = self.models[role]
        return ModelRef(model.path, model.key, f"{role} [{what}]")

    def _recovery_metrics(self, candidates) -> list[str]:
        return [metric for metric in candidates if metric in self.names]

    def _record(self, name: str, kind: str, settings, **fields) -> dict:
        record = {"kind": kind, "settings": plain(settings), "skipped": None} | fields
        self.results.records[name] = record
        return record

    def _skip(self, name: str, kind: str, settings, reason: str) -> None:
        log.warning("attack %s skipped: %s", name, reason)
        self._record(name, kind, settings, recovery_metrics=[], evaluated="nothing", skipped=reason)

    def _quantization(self, name: str, settings) -> None:
        attacked, sizes = {}, {}
        for role, model in self.models.items():
            attacked[role], report = quantized_model(self.pipeline, name, settings, model, role)
            sizes[role] = report["model_size_bytes"]
        evaluations = {role: evaluate_model(self.pipeline, ref) for role, ref in attacked.items()}
        self.results.add(
            name, evaluations, evaluations["oracle"], self.names, self.cfg.metrics, self._all_eval_sets
        )
        library = QUANTIZATION_SCHEMES[settings.scheme][0]
        self._record(
            name,
            "quantization",
            settings,
            library=f"{library} {report['library_version']}",
            recovery_metrics=self._recovery_metrics(self.benchmark.forget_metrics),
            evaluated="every eval item",
            model_size_bytes=sizes,
            full_size_bytes=report["full_size_bytes"],
        )

    def _all_eval_sets(self):
        return self.pipeline.eval_sets(required_eval_sets(evaluation_plan(self.names)))

    def _relearning_input(self, name: str, settings) -> tuple[RelearningData, EvalView, dict] | None:
        """The attack's data, the view of the eval sets it is read on, and those eval sets; None when the benchmark
        defines no relearning."""
        try:
            data = self.benchmark.relearning_data(settings.data, settings.fraction, self.cfg.seed)
        except BenchmarkError as error:
            raise AttackError(
                f"attack {name} (attacks.relearning.{name}.data={settings.data}, fraction={settings.fraction}): "
                f"{error}"
            ) from error
        if data is None:
            return None
        excluded = data.excluded_questions
        digest = hashlib.sha256(json.dumps(sorted(excluded)).encode()).hexdigest()[:16]
        view = EvalView(
            names=tuple(self.names),
            settings=self.cfg.metrics,
            key={"without_questions": len(excluded), "digest": digest} if excluded else {},
            narrow=(lambda sets: self.benchmark.without_relearned(sets, excluded)) if excluded else None,
        )
        eval_sets = view.eval_sets(self.pipeline)
        refuse_overlap(name, data, eval_sets)
        return data, view, eval_sets

    def _relearning(self, name: str, settings) -> None:
        if name not in self._relearning_inputs:
            self._relearning_inputs[name] = self._relearning_input(name, settings)
        inputs = self._relearning_inputs[name]
        if inputs is None:
            self._skip(
                name,
                "relearning",
                settings,
                f"benchmark kind {self.benchmark.kind} defines no relearning split (Benchmark.relearning_data)",
            )
            return
        data, view, eval_sets = inputs
        excluded = data.excluded_questions
        attacked = {
            role: relearned_model(self.pipeline, name, settings, data, model, role)
            for role, model in self.models.items()
        }
        evaluations = {role: evaluate_model(self.pipeline, ref, view) for role, ref in attacked.items()}
        self.results.add(
            name, evaluations, evaluations["oracle"], self.names, self.cfg.metrics, lambda: eval_sets
        )
        if excluded:  # the unattacked models on the same items, the baseline of this attack's recovery
            plain_on_items = {
                role: evaluate_model(
                    self.pipeline, self._relabelled(role, f"unattacked, {name}'s items"), view
                )
                for role in self.models
            }
            self.results.add(
                name,
                plain_on_items,
                plain_on_items["oracle"],
                self.names,
                self.cfg.metrics,
                lambda: eval_sets,
                unattacked=True,
            )
        self._record(
            name,
            "relearning",
            settings,
            recovery_metrics=self._recovery_metrics(self.benchmark.forget_metrics),
            evaluated=data.evaluated,
            relearned=data.relearned,
            relearned_items=len(data.items),
        )

    def _sampling(self, name: str, settings) -> None:
        # Only the generation metrics the run computes greedily too: leak@k is read against their greedy value.
        names = [metric for metric in self.benchmark.generation_forget_metrics if metric in self.names]
        if not names:
            declared = list(self.benchmark.generation_forget_metrics)
            self._skip(
                name,
                "sampling",
                settings,
                f"metrics.names holds none of benchmark kind {self.benchmark.kind}'s generation forget metrics "
                f"{declared or '(it declares none)'}; add one to metrics.names to sample it",
            )
            return
        sampling = SamplingConfig(
            num_samples=settings.k, temperature=settings.temperature, top_p=settings.top_p, seed=self.cfg.seed
        )
        metrics_settings = dataclasses.replace(self.cfg.metrics, names=names, sampling=sampling)
        view = EvalView(names=tuple(names), settings=metrics_settings)
        evaluations = {
            role: evaluate_model(self.pipeline, self._relabelled(role, name), view) for role in self.models
        }
        self.results.add(
            name,
            evaluations,
            evaluations["oracle"],
            names,
            metrics_settings,
            lambda: view.eval_sets(self.pipeline),
        )
        self._record(
            name,
            "sampling",
            settings,
            recovery_metrics=names,
            evaluated=f"every forget item (best of {settings.k} samples at temperature {settings.temperature})",
        )
