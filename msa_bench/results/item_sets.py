"""Which eval set each per-item value list of an evaluation belongs to.

An evaluation's `per_item` maps a key to one value per item, but the key names a metric, not an eval set; the
suites' own metadata says which set the values were computed on. This module reads that metadata, suite by suite,
and knows each suite's naming of the per-item lists that are not metric names:

- TOFU: a metric's values are on its `MetricSpec.eval_set`; the attacks keep theirs as `mia_<attack>_<eval set>`
  (forget and holdout).
- MUSE: a metric's values are on the first eval set it reads (`REQUIRED_SETS`: the QA set of knowmem, not its
  in-context examples); ROUGE metrics `<prefix>_ROUGE` keep side values `<prefix>_rougeL_recall` and
  `<prefix>_rouge1_recall` on the same set; the attacks keep `muse_mia_<attack>_forget` / `_holdout`, on the privleak
  forget and holdout sets.
- RESTOR: its one metric reads its one eval set.
- lm-eval: `lm_eval/<task>/...` of a local task are on the eval set the task is built from (`LOCAL_TASKS`); a
  built-in task's documents are not eval-set items, so its values belong to no eval set.

A key no rule places returns None: the caller keeps those values apart, never guesses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence


def _tofu_eval_set(key: str) -> str | None:
    from msa_bench.metrics.suite import TOFU_METRICS

    spec = TOFU_METRICS.get(key)
    if spec is not None:
        return spec.eval_set if len(spec.eval_sets) == 1 else None
    for spec in TOFU_METRICS.values():
        for eval_set in spec.eval_sets if spec.extra_sets else ():
            if key == f"{spec.name}_{eval_set}":
                return eval_set
    return None


_MUSE_ROUGE_SIDE_VALUES = ("_rougeL_recall", "_rouge1_recall")
_MUSE_ATTACK_SIDES = {"_forget": 0, "_holdout": 1}  # position in REQUIRED_SETS of the attack metrics


def _muse_eval_set(key: str) -> str | None:
    from msa_bench.metrics.muse import MIA_METRICS, REQUIRED_SETS

    if key in REQUIRED_SETS and key not in MIA_METRICS:
        return REQUIRED_SETS[key][0]
    for side_suffix in _MUSE_ROUGE_SIDE_VALUES:
        if key.endswith(side_suffix):
            metric = key.removesuffix(side_suffix) + "_ROUGE"
            return REQUIRED_SETS[metric][0] if metric in REQUIRED_SETS else None
    for side_suffix, position in _MUSE_ATTACK_SIDES.items():
        metric = key.removesuffix(side_suffix)
        if key.endswith(side_suffix) and metric in MIA_METRICS:
            return REQUIRED_SETS[metric][position]
    return None


def _restor_eval_set(key: str) -> str | None:
    from msa_bench.metrics.restor import RESTOR_METRIC_NAMES, required_sets

    if key not in RESTOR_METRIC_NAMES:
        return None
    sets = required_sets([key])
    return next(iter(sets)) if len(sets) == 1 else None


def _lm_eval_eval_set(key: str) -> str | None:
    from msa_bench.metrics.lm_eval_suite import LOCAL_TASKS, METRIC_PREFIX

    if not key.startswith(METRIC_PREFIX):
        return None
    task = key.removeprefix(METRIC_PREFIX).split("/")[0]
    return LOCAL_TASKS.get(task)


# Suite name -> where that suite's per-item keys come from.
_LOCATORS: Mapping[str, Callable[[str], str | None]] = {
    "tofu": _tofu_eval_set,
    "muse": _muse_eval_set,
    "restor": _restor_eval_set,
    "lm_eval": _lm_eval_eval_set,
}


def eval_set_of(key: str, suites: Sequence[str]) -> str | None:
    """The eval set whose items the per-item values `key` are in order of, among the suites that were evaluated
    (`suites`: the keys of the evaluation plan), or None when no suite places them."""
    found = {_LOCATORS[suite](key) for suite in suites if suite in _LOCATORS} - {None}
    return found.pop() if len(found) == 1 else None
