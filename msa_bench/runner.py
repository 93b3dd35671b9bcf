"""One msa_bench job: build (or reuse) every stage the method needs, evaluate, write results.json, log, print.

The runner knows nothing about individual methods: it asks the registry for `method.name` and calls `produce`.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import msa_bench
from msa_bench.attacks.runner import AttackRunner, attack_stage_names
from msa_bench.config.schema import MSABenchConfig, ProgressMode
from msa_bench.distributed import broadcast_object, check_launch, init_process_group, is_main_process, rank
from msa_bench.methods.registry import get_method
from msa_bench.pipeline import dynamics, noise_floor
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.disk_space import RUN_DIR_FIX, RUN_FILES_BYTES, require_free_space
from msa_bench.pipeline.evaluation import (
    evaluate_model,
    evaluation_plan,
    final_metrics,
    required_eval_sets,
    undefined_reference_reasons,
)
from msa_bench.pipeline.stages import Pipeline
from msa_bench.progress import job_label, start_run_progress
from msa_bench.reporting.run_logger import make_run_logger
from msa_bench.reporting.table import comparison_table
from msa_bench.results import (
    PER_ITEM_FILE,
    RESULTS_FILE,
    ReferenceMetrics,
    RunResults,
    build_per_item_records,
)
from msa_bench.results.provenance import device_name, distribution_versions, git_commit
from msa_bench.sequential import (
    REQUEST_PREFIX,
    SequentialResults,
    checked_requests,
    request_stage_names,
    run_requests,
)

log = logging.getLogger("msa_bench.runner")


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return requested


# Libraries whose versions change computed numbers or how models are read, beside torch and transformers.
_RECORDED_DISTRIBUTIONS = {
    "peft": "peft",
    "lm_eval": "lm-eval",
    "datasets": "datasets",
    "safetensors": "safetensors",
}


def library_versions() -> dict[str, str]:
    """Versions of what computed the results, and the msa_bench commit ("<sha>-dirty" with uncommitted changes)."""
    import hydra
    import transformers

    return {
        "msa_bench": msa_bench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hydra": hydra.__version__,
        **distribution_versions(_RECORDED_DISTRIBUTIONS),
        "git_commit": git_commit(),
    }


def run(cfg: MSABenchConfig, resolved_config: dict, output_dir: Path) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    # Several processes (torchrun, accelerate, Slurm tasks) run this job in lockstep; rank 0 alone writes the run's
    # files (msa_bench/distributed.py). A launch they cannot split is refused before any stage.
    check_launch(cfg, device)
    init_process_group(device, cfg.dist_timeout_minutes)
    main_process = is_main_process()
    store = ArtifactStore(Path(cfg.paths.cache_dir), verify=cfg.cache.verify)
    if main_process:
        # What killed runs left behind: temporaries of dead builders and trainer scratch folders of dead processes.
        temporaries, scratch = store.sweep()
        log.info(
            "cache sweep: removed %d stale temporaries and %d stale scratch folders from %s",
            temporaries,
            scratch,
            store.root,
        )
    results_dir = broadcast_object(
        str(output_dir)
    )  # after rank 0's sweep: no rank has scratch folders before it
    if not main_process:
        log.info("rank %d follows rank 0, which writes the results in %s", rank(), results_dir)
    pipeline = Pipeline(cfg, store, device)
    method = get_method(cfg.method.name)(cfg.method)
    metric_names = list(cfg.metrics.names)
    log.info(
        "method=%s benchmark=%s checkpoint=%s device=%s cache=%s",
        cfg.method.name,
        cfg.benchmark.name,
        cfg.checkpoint.name,
        device,
        cfg.paths.cache_dir,
    )

    pipeline.preflight()
    method.preflight(pipeline)
    if (cfg.benchmark.requests or 1) > 1:
        checked_requests(pipeline)  # the split into requests and the forget metrics, before any training
    attack_runner = AttackRunner(pipeline)
    attack_runner.preflight()  # the attacks' data and settings, before any training
    if main_process:
        # The run's own files are written after all the training: a full output disk is refused now, not then.
        require_free_space(
            output_dir, RUN_FILES_BYTES, "the run's files (results.json, per_item.json)", fix=RUN_DIR_FIX
        )
    # The console display (msa_bench/progress.py): one line per stage while library output goes to the run's log
    # file, from here until `progress.close()` below (the W&B banner and summary included).
    # benchmark.requests > 1: the method runs request by request (msa_bench/sequential), one console stage each.
    sequential = (cfg.benchmark.requests or 1) > 1
    with_dynamics = dynamics.is_enabled(cfg.method)  # docs/unlearning_dynamics.md
    stages = [
        "target θ_D (fine-tune on the benchmark)",
        "oracle (fine-tune without the forget set)",
        *(request_stage_names(cfg) if sequential else method.planned_stages()),
        "evaluate the oracle",
        "evaluate the target",
        f"evaluate {cfg.method.name}",
        *([f"evaluate {cfg.method.name} at its dynamics points"] if with_dynamics else []),
        *noise_floor.stage_names(cfg),
        *attack_stage_names(cfg.attacks),
    ]
    # Ranks > 0 show nothing: their library output goes to their own log file.
    progress_mode = cfg.progress if main_process else ProgressMode.off
    progress = start_run_progress(progress_mode, stages, output_dir, label=job_label())
    try:
        run_logger = make_run_logger(cfg.logger, output_dir, run_name=_run_name(cfg), config=resolved_config)
    except BaseException:
        progress.close()
        raise
    try:
        with progress.stage():
            target = pipeline.target()
        with progress.stage():
            oracle = pipeline.oracle()
        requests = SequentialResults()
        if sequential:
            requests = run_requests(pipeline, method, progress, target)
            unlearned = requests.final  # the run's own metrics: the model after the last request
        else:
            with progress.method_stages(method.planned_stages()):
                unlearned = method.produce(pipeline)
        with progress.stage():
            oracle_eval = evaluate_model(pipeline, oracle)
        with progress.stage():
            target_eval = evaluate_model(pipeline, target)
        with progress.stage():
            method_eval = evaluate_model(pipeline, unlearned)
        plan = evaluation_plan(metric_names)
        all_sets = required_eval_sets(plan)

        def against_oracle(evaluation: dict, model: str) -> tuple[dict, dict]:
            return final_metrics(
                evaluation,
                oracle_eval,
                metric_names,
                cfg.metrics,
                lambda: pipeline.eval_sets(all_sets),
                model=model,
            )

        references = {
            "target": against_oracle(target_eval, "target"),
            "oracle": against_oracle(oracle_eval, "oracle"),
        }
        columns = {model: metrics for model, (metrics, _) in references.items()}
        method_metrics, provenance = against_oracle(method_eval, cfg.method.name)
        # Before the attacks' keys join the method's metrics: the dynamics' points have the plain metrics only.
        points = []
        if with_dynamics:
            with progress.stage():
                points = dynamics.evaluate_dynamics(pipeline, unlearned, method_metrics, against_oracle)
        floor = {}
        if noise_floor.is_enabled(cfg):  # before the attacks' keys join the oracle's metrics

            def score(evaluation, reference, names, label):
                return final_metrics(
                    evaluation,
                    reference,
                    names,
                    cfg.metrics,
                    lambda: pipeline.eval_sets(all_sets),
                    model=label,
                )

            floor = noise_floor.measure(pipeline, oracle, oracle_eval, columns["oracle"], score, progress)
        attacks = attack_runner.run(progress, {"method": unlearned, "target": target, "oracle": oracle})
        method_metrics |= attacks.metrics["method"]
        provenance |= attacks.provenance["method"]
        method_metrics |= requests.metrics["method"]
        provenance |= requests.provenance["method"]
        for model in ("target", "oracle"):
            references[model][0].update(attacks.metrics[model])
            references[model][1].update(attacks.provenance[model])
            references[model][0].update(requests.metrics[model])
            references[model][1].update(requests.provenance[model])
        provenance |= undefined_reference_reasons(references)
        if cfg.method.name not in columns:
            columns[cfg.method.name] = method_metrics

        record = RunResults(
            method=cfg.method.name,
            benchmark=cfg.benchmark.name,
            benchmark_kind=cfg.benchmark.kind,
            model=cfg.model.name,
            forget_split=cfg.benchmark.forget_split,
            checkpoint=cfg.checkpoint.name,
            metrics=method_metrics,
            metric_provenance=provenance,
            reference_metrics=ReferenceMetrics(target=columns["target"], oracle=columns["oracle"]),
            cost=pipeline.costs,
            seed=cfg.seed,
            device=device,
            device_name=device_name(device),
            wall_seconds=round(time.perf_counter() - started, 2),
            versions=library_versions(),
            artifacts={"model": str(unlearned.path), "target": str(target.path), "oracle": str(oracle.path)},
            config=resolved_config,
            attacks=attacks.records,
            requests=requests.requests,
            dynamics=points,
            noise_floor=floor,
        )
        results = record.to_json()
        if main_process:
            per_item = build_per_item_records(
                cfg.method.name,
                {"method": method_eval, "target": target_eval, "oracle": oracle_eval},
                pipeline.eval_sets(all_sets),
                suites=list(plan),
            )
            per_item.write(output_dir / PER_ITEM_FILE)
            record.write(output_dir / RESULTS_FILE)
            run_logger.log_results(results, columns)
    finally:
        run_logger.finish()
        progress.close()

    if not main_process:
        return results
    # The console table shows the plain metrics; the attacks' are in results.json and `msa-bench report`.
    table = comparison_table(
        columns,
        [name for name in method_metrics if not name.startswith(("attack/", REQUEST_PREFIX))],
    )
    print(
        f"\n{cfg.method.name} on {cfg.benchmark.name}/{cfg.benchmark.forget_split}"
        f"{' (validation forget set)' if cfg.benchmark.forget_set == 'validation' else ''} "
        f"(θ0 = {cfg.checkpoint.name}), results in {output_dir}\n{table}\n",
        flush=True,
    )
    return results


def _run_name(cfg: MSABenchConfig) -> str:
    parts = [cfg.method.name, cfg.benchmark.forget_split, cfg.checkpoint.name]
    if cfg.benchmark.forget_set == "validation":
        parts.insert(2, "validation")
    for key in ("alpha", "beta"):
        if hasattr(cfg.method, key):
            parts.append(f"{key}={getattr(cfg.method, key)}")
    return "-".join(str(p) for p in parts)


def resolved_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
