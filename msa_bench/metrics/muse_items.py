"""Which MUSE eval set a per-item value list follows, for per_item.json.

A metric's values follow the first eval set it reads (for KnowMem, the QA set, not its in-context examples); a ROUGE
metric `<prefix>_ROUGE` keeps side values `<prefix>_rougeL_recall` and `<prefix>_rouge1_recall` on the same set; an
attack keeps `muse_mia_<attack>_forget` and `_holdout`, on the privleak forget and holdout sets.
"""

from __future__ import annotations

from collections.abc import Mapping

_ROUGE_SIDE_VALUES = ("_rougeL_recall", "_rouge1_recall")
_ATTACK_SIDES = {"_forget": 0, "_holdout": 1}  # the position of each side in an attack's required sets


def muse_item_eval_set(
    key: str, required_sets: Mapping[str, tuple[str, ...]], attack_metrics: Mapping[str, str]
) -> str | None:
    if key in required_sets and key not in attack_metrics:
        return required_sets[key][0]
    for suffix in _ROUGE_SIDE_VALUES:
        if key.endswith(suffix):
            metric = key.removesuffix(suffix) + "_ROUGE"
            return required_sets[metric][0] if metric in required_sets else None
    for suffix, position in _ATTACK_SIDES.items():
        metric = key.removesuffix(suffix)
        if key.endswith(suffix) and metric in attack_metrics:
            return required_sets[metric][position]
    return None
