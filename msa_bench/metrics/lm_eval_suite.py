"""lm-evaluation-harness tasks on the in-memory model (`metrics=lm_eval`).

The suite provides one metric name, "lm_eval", meaning "every task in metrics.lm_eval.tasks". Its result holds
    lm_eval/<task>/<metric>            e.g. lm_eval/msa_world_facts_mc/acc, lm_eval/msa_world_facts_mc/acc_stderr
    lm_eval/<task>/<metric>/<filter>   for metrics of a filter other than lm-eval's "none"
    lm_eval                            the mean "acc" over the configured tasks that report one
and per item (sorted by document) each per-document metric, plus for multiple-choice tasks the chosen choice index
(`.../choice`) and the true one (`.../target`).

Local tasks, built at run time from the benchmark's eval sets (TOFU-format items):
    msa_world_facts_mc   <- eval set "world_facts"
    msa_real_authors_mc  <- eval set "real_authors"
Each is multiple choice between the answer and the perturbed answers, scored by summed log-likelihood (lm-eval's
acc) in the tokenizer's prompt format (msa_bench/data/formatting.py), without the eos that `encode_qa` adds (lm-eval
scores the choice text only):
    plain   context "Question: {q}\\nAnswer:", continuation " {answer}" (lm-eval's tokenizer copy prepends bos)
    chat    context the rendered chat template (it starts with the bos text, so lm-eval adds no second bos),
            continuation "{answer}". lm-eval moves the context's trailing whitespace (Llama-3: the "\\n\\n" after the
            assistant header) into the continuation; with Llama-3's tokenizer it stays one token of its own, whose
            log-probability is then added to every choice of a document alike: acc is unchanged, the reported
            log-likelihoods include it (and acc_norm, which divides by the choice length, barely moves).
The true answer sits at position (item index mod number of choices), so that exact ties, which lm-eval breaks towards
the first choice, do not systematically favour it. Built-in and include_path tasks keep their own prompts.

Any other task name is looked up in metrics.lm_eval.include_path (a folder of task YAMLs), and only then in lm-eval's
built-in index, whose construction takes ~10-13 s. lm-eval runs offline unless the user set HF_HUB_OFFLINE,
HF_DATASETS_OFFLINE or TRANSFORMERS_OFFLINE, so a built-in task must find its dataset in the Hugging Face cache. That
is also why HF_HOME is left alone: the local tasks' throw-away datasets cache goes to a temporary folder through their
`cache_dir` instead, while built-in tasks keep finding the user's cached datasets.

The caller's state is left as it was: the model's train/eval mode, the tokenizer (lm-eval gets a copy) and the global
RNGs of python, numpy and torch (lm-eval seeds them).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import os
import random
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msa_bench.data.formatting import format_prompt, prompt_format_of, prompt_text
from msa_bench.errors import LmEvalTaskError  # noqa: F401  (re-exported)
from msa_bench.metrics.core.batches import evaluation_mode
from msa_bench.metrics.core.result import EvalResult
from msa_bench.metrics.registry import Direction, MetricInfo, Suite, register_suite

logger = logging.getLogger(__name__)

SUITE_NAME = "lm_eval"
METRIC_PREFIX = "lm_eval/"
# Local task name -> the eval set it is built from.
LOCAL_TASKS: Mapping[str, str] = {"msa_world_facts_mc": "world_facts", "msa_real_authors_mc": "real_authors"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def required_sets(names: Sequence[str], settings=None) -> set[str]:
    """The eval sets the local tasks are built from: those of the configured tasks when `settings` (the
    MetricsConfig) is given, otherwise of every local task."""
    if settings is None:
        return set(LOCAL_TASKS.values())
    return {LOCAL_TASKS[task] for task in settings.lm_eval.tasks if task in LOCAL_TASKS}


# --- local tasks -----------------------------------------------------------------------------------------------------


def multiple_choice_docs(items: Sequence[dict], eval_set: str, tokenizer=None) -> list[dict]:
    """One lm-eval document per TOFU item: the formatted prompt, the choices and the index of the true one.

    The prompt is in the tokenizer's format (`prompt_text`); without a tokenizer, the plain one."""
    docs = []
    for index, item in enumerate(items):
        for field_name in ("question", "answer", "perturbed_answer"):
            if item.get(field_name) is None:
                raise ValueError(f"item {index} of eval set '{eval_set}' lacks '{field_name}'")
        wrong = item["perturbed_answer"]
        if isinstance(wrong, str) or len(wrong) == 0:
            raise ValueError(
                f"item {index} of eval set '{eval_set}': 'perturbed_answer' must be a non-empty list, got {wrong!r}"
            )
        wrong = [answer.strip() for answer in wrong]
        label = index % (len(wrong) + 1)
        choices = wrong[:label] + [item["answer"].strip()] + wrong[label:]
        question = item["question"]
        prompt = format_prompt(question) if tokenizer is None else prompt_text(tokenizer, question)
        docs.append({"prompt": prompt, "choices": choices, "label": label})
    return docs


def target_delimiter(tokenizer=None) -> str:
    """What lm-eval puts between the prompt and a (stripped) choice: the space `format_answer` puts before a plain
    answer; nothing for a chat answer (`answer_text`)."""
    return "" if tokenizer is not None and prompt_format_of(tokenizer).kind == "chat" else " "


def local_task_config(task_name: str, items: Sequence[dict], folder: Path, tokenizer=None) -> dict:
    """An inline lm-eval task config for a local task, its documents written to JSONL under `folder`, in the
    tokenizer's prompt format (plain without a tokenizer)."""
    eval_set = LOCAL_TASKS[task_name]
    if len(items) == 0:
        raise ValueError(f"lm-eval task {task_name} is built from eval set '{eval_set}', which is empty")
    data_file = (folder / f"{task_name}.jsonl").resolve()
    with data_file.open("w", encoding="utf-8") as handle:
        for doc in multiple_choice_docs(items, eval_set, tokenizer):
            handle.write(json.dumps(doc) + "\n")
    return {
        "task": task_name,
        "dataset_path": "json",
        # An explicit cache_dir keeps the datasets cache of these throw-away files in the temporary folder.
        "dataset_kwargs": {
            "data_files": {"test": str(data_file)},
            "cache_dir": str(folder / "datasets_cache"),
        },
        "test_split": "test",
        "output_type": "multiple_choice",
        # Field names, not Jinja templates: the texts are used verbatim.
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        # The continuation is answer_text: " {answer}" (plain) or "{answer}" (chat).
        "target_delimiter": target_delimiter(tokenizer),
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "eval_set": eval_set},
    }


# --- environment -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def offline_unless_configured() -> Iterator[None]:
    """Hugging Face hub and datasets offline for the duration, unless the user set any offline variable.

    huggingface_hub and datasets read these variables once, when imported; their module constants are set too if
    they are already imported, and reset afterwards (to online, the value the unset variables mean).
    """
    if any(name in os.environ for name in OFFLINE_VARIABLES):
        yield
        return
    constants = (
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_DATASETS_OFFLINE"),
    )
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    for module_name, attribute in constants:
        if module_name in sys.modules:
            setattr(sys.modules[module_name], attribute, True)
    try:
        yield
    finally:
        del os.environ["HF_HUB_OFFLINE"], os.environ["HF_DATASETS_OFFLINE"]
        for module_name, attribute in constants:
            if module_name in sys.modules:  # also when first imported during the call, with offline baked in
                setattr(sys.modules[module_name], attribute, False)


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore python's, numpy's and torch's global RNGs afterwards: lm-eval seeds them all (for its own
    reproducibility), which would otherwise change whatever the caller draws next."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# --- tasks -----------------------------------------------------------------------------------------------------------


@functools.cache
def default_task_manager(include_path: str | None):
    """A TaskManager that also indexes lm-eval's ~14k built-in tasks (slow: ~10-13 s, so built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=True)


def task_manager_for(task_names: Sequence[str], include_path: str | None):
    """A TaskManager that knows every non-local task name, indexing the built-in tasks only if it must."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"metrics.lm_eval.include_path={include_path!r} is not a folder")
    manager = TaskManager(include_path=include_path, include_defaults=False)
    external = [name for name in task_names if name not in LOCAL_TASKS]
    if all(name in manager.all_tasks for name in external):
        return manager
    logger.info(
        "lm-eval: indexing the built-in tasks for %s", [n for n in external if n not in manager.all_tasks]
    )
    manager = default_task_manager(include_path)
    unknown = [name for name in external if name not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown lm-eval task(s) {unknown}: not a local msa_bench task ({', '.join(LOCAL_TASKS)}), not in "
            f"metrics.lm_eval.include_path ({include_path}), and not an lm-eval built-in task"
        )
    return manager


def load_tasks(manager, specs: Mapping[str, str | dict]) -> list:
    """lm-eval Task/Group objects, one spec at a time so that a failure names its task."""
    loaded = []
    for name, spec in specs.items():
        try:
            result = manager.load([spec])
        except Exception as error:
            raise LmEvalTaskError(
                f"lm-eval task {name!r} could not be loaded ({type(error).__name__}: {error}). lm-eval runs offline "
                "unless HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set: put the task's dataset in the Hugging Face "
                "cache first, or set HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 to allow downloads"
            ) from error
        # A task or group is passed on whole; a tag (a set of tasks under one name) as its tasks.
        top_level = result["groups"].get(name, result["tasks"].get(name))
        loaded.extend([top_level] if top_level is not None else result["tasks"].values())
    return loaded


# --- the model -------------------------------------------------------------------------------------------------------


def tokenizer_adding_bos(tokenizer):
    """A copy of the tokenizer that prepends bos by default, as msa_bench's `encode_prompt` does.

    lm-eval encodes with the tokenizer's default special tokens; msa_bench's own tokenizer adds none, so without this
    lm-eval would score sequences without the bos every training and scoring sequence starts with. A text that already
    starts with the bos text (a chat prompt) gets no second one: lm-eval then encodes without special tokens. A copy
    also keeps lm-eval's pad-token set-up away from the caller's tokenizer (the prompt format is copied along).
    """
    copied = copy.deepcopy(tokenizer)
    bos = copied.bos_token_id
    if bos is not None and copied("x")["input_ids"][:1] != [bos]:
        copied.add_bos_token = True  # transformers 5 rebuilds the post-processor
        if copied("x")["input_ids"][:1] != [bos]:
            raise ValueError(f"could not make {type(tokenizer).__name__} prepend its bos token for lm-eval")
    return copied


def context_length(model: torch.nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def make_lm(model: torch.nn.Module, tokenizer, batch_size: int):
    """lm-eval's HFLM around the in-memory model; the log-softmax in float32, as msa_bench's scoring."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=model,
        tokenizer=tokenizer_adding_bos(tokenizer),
        batch_size=batch_size,
        max_length=context_length(model),
        softmax_dtype="float32",
    )


# --- results ---------------------------------------------------------------------------------------------------------


def _metric_name(task: str, metric: str, filter_name: str) -> str:
    suffix = "" if filter_name == "none" else f"/{filter_name}"
    return f"{METRIC_PREFIX}{task}/{metric}{suffix}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _collect_metrics(lm_results: Mapping, result: EvalResult) -> None:
    for task, values in lm_results["results"].items():
        for key, value in values.items():
            if "," not in key:  # name, alias, sample_len
                continue
            metric, filter_name = key.split(",", 1)
            name = _metric_name(task, metric, filter_name)
            if not _is_number(value):
                result.skipped[name] = f"lm-eval reported {value!r}"
            elif not math.isfinite(value):
                result.skipped[name] = (
                    f"lm-eval reported {value} (e.g. a standard error of a single document)"
                )
            else:
                result.metrics[name] = float(value)


def _collect_per_item(lm_results: Mapping, output_types: Mapping[str, str], result: EvalResult) -> None:
    for task, samples in lm_results.get("samples", {}).items():
        for sample in sorted(samples, key=lambda s: s["doc_id"]):
            filter_name = sample.get("filter", "none")
            for metric in sample.get("metrics", []):
                if _is_number(sample.get(metric)):
                    name = _metric_name(task, metric, filter_name)
                    result.per_item.setdefault(name, []).append(float(sample[metric]))
            if output_types.get(task) == "multiple_choice" and filter_name == "none":
                loglikelihoods = [response[0] for response in sample["filtered_resps"]]
                choice = int(np.argmax(loglikelihoods))  # the first of ties, as lm-eval's acc
                result.per_item.setdefault(f"{METRIC_PREFIX}{task}/choice", []).append(float(choice))
                if _is_number(sample.get("target")):
                    result.per_item.setdefault(f"{METRIC_PREFIX}{task}/target", []).append(
                        float(sample["target"])
                    )


def output_types(tasks: Sequence) -> dict[str, str]:
    """Task name -> lm-eval output type (multiple_choice, generate_until, ...), groups expanded.

    Reading `Task.task_name` draws from python's global RNG in lm-eval 0.4.13, so call it with the state preserved.
    """
    leaves = []
    for task in tasks:
        leaves.extend(task.get_all_tasks() if hasattr(task, "get_all_tasks") else [task])
    return {task.task_name: task.config.output_type for task in leaves}


def _count_tokens(lm_results: Mapping, tokenizer) -> int:
    """Approximate tokens through the model: every request's text (and generated text), without lm-eval's reuse of
    shared contexts."""
    total = 0
    for samples in lm_results.get("samples", {}).values():
        for sample in samples:
            texts = [part for argument in sample["arguments"] for part in argument if isinstance(part, str)]
            texts += [part for response in sample["resps"] for part in response if isinstance(part, str)]
            total += sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    return total


# --- the suite -------------------------------------------------------------------------------------------------------


def evaluate_lm_eval(
    model: torch.nn.Module,
    tokenizer,
    eval_sets: Mapping[str, Sequence[dict]],
    metric_names: Sequence[str],
    settings,
    progress: bool = False,
) -> EvalResult:
    """Run every task of settings.lm_eval (a MetricsConfig) on the in-memory model; see the module docstring."""
    unknown = [name for name in metric_names if name != SUITE_NAME]
    if unknown:
        raise ValueError(f"the lm_eval suite provides only the metric {SUITE_NAME!r}, not {unknown}")
    config = settings.lm_eval
    task_names = list(config.tasks)
    if not task_names:
        raise ValueError("metrics.lm_eval.tasks is empty")
    missing = {
        task: LOCAL_TASKS[task]
        for task in task_names
        if task in LOCAL_TASKS and LOCAL_TASKS[task] not in eval_sets
    }
    if missing:
        raise ValueError(
            f"lm-eval tasks need eval sets that were not given: {missing}; given: {sorted(eval_sets)}"
        )

    result = EvalResult()
    with (
        tempfile.TemporaryDirectory(prefix="msa_lm_eval_") as work_dir,
        offline_unless_configured(),
        preserved_random_state(),
    ):
        import lm_eval  # slow to import (~2-5 s), hence here

        specs: dict[str, str | dict] = {
            task: local_task_config(task, eval_sets[LOCAL_TASKS[task]], Path(work_dir), tokenizer)
            if task in LOCAL_TASKS
            else task
            for task in task_names
        }
        manager = task_manager_for(task_names, config.include_path)
        tasks = load_tasks(manager, specs)
        types = output_types(tasks)
        if progress:
            logger.info("lm-eval: %s", ", ".join(task_names))
        # HFLM puts the model in eval mode when wrapping it: inside, so the caller's mode comes back afterwards.
        with evaluation_mode(model):
            lm = make_lm(model, tokenizer, config.batch_size)
            lm_results = lm_eval.simple_evaluate(
                model=lm, tasks=tasks, task_manager=manager, limit=config.limit, log_samples=True
            )
    if lm_results is None:  # lm-eval returns None on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results (is this a non-zero rank of a distributed run?)")

    _collect_metrics(lm_results, result)
    _collect_per_item(lm_results, types, result)
    accuracy_names = [f"{METRIC_PREFIX}{task}/acc" for task in task_names]
    accuracies = [result.metrics[name] for name in accuracy_names if name in result.metrics]
    if accuracies:
        result.metrics[SUITE_NAME] = sum(accuracies) / len(accuracies)
    else:
        result.skipped[SUITE_NAME] = f"none of the tasks {task_names} reports 'acc'"
    result.tokens_processed = _count_tokens(lm_results, lm.tokenizer)
    return result


register_suite(
    Suite(
        name=SUITE_NAME,
        # The mean acc over the configured tasks; its breakdown lm_eval/<task>/<metric> takes this metadata too
        # (registry.metric_info), acc being lm-eval's higher-is-better.
        metrics=(MetricInfo(SUITE_NAME, Direction.HIGHER, "lm-eval mean acc"),),
        evaluate=evaluate_lm_eval,
        required_sets=required_sets,
        # A local task's values follow the eval set it is built from; a built-in task's documents are no eval set.
        item_eval_set=lambda key: (
            LOCAL_TASKS.get(key.removeprefix(METRIC_PREFIX).split("/")[0])
            if key.startswith(METRIC_PREFIX)
            else None
        ),
    )
)
