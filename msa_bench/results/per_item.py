"""per_item.json: one record per evaluated item, holding what the method's model, the target and the oracle did on it.

    {"schema_version": 1,
     "method": "<the method's name>",
     "eval_sets": {"<eval set>": [<record>, ...]},          # in item order
     "unaligned": {"<role>": {"<key>": {"eval_set": ..., "reason": ..., "values": [...]}}}}
                                       # generations that do not line up: key "generations/<eval set>"

A record:

    {"id": "<eval set>/<index>", "eval_set": ..., "index": <position in the eval set>,
     "data_keys": {...},          # the item's own identifying fields where it has them: id, uid, subject, attribute
                                  # (synthetic TOFU), entity, relation (RESTOR); {} otherwise
     "question": ...,             # the item's `question`, else its `prompt` (MUSE verbmem), else its `text` (privleak)
     "ground_truth": ...,         # its `answer`, else `gt` (verbmem), else `answers` (RESTOR, a list); null if none
     "method": {"generation": <greedy output or null>, "values": {<per-item key>: value}},
     "target": {...}, "oracle": {...}}

`values` holds every per-item list the evaluation produced for that eval set, under the evaluation's own key (a
metric name, or a suite's name for a side list such as `mia_loss_holdout` or `forget_knowmem_rougeL_recall`; the
truth-ratio metrics keep the raw ratios tr). `generation` is set where the suite generated on that set.

Alignment: a value list belongs to an eval set when its suite places it there (`msa_bench.results.item_sets`) *and*
it has exactly one value per item of that set; generations likewise. Anything else goes to `unaligned`, with the
reason, and no record holds it: built-in lm-eval tasks (their documents are not eval-set items), lm-eval tasks cut by
`metrics.lm_eval.limit` (fewer values than items), and any list whose length differs from its set's. MUSE's
truncated texts still give one value per item, so they align. Eval sets with no aligned value and no generation (the
in-context examples of MUSE knowmem) have no records.

per_item.json files without `schema_version` (version 0: `{"method": {key: [...]}, "target": ..., "oracle": ...,
"generations": {eval set: [...]}}`) are read as records-less files whose lists are all unaligned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msa_bench.errors import ReportError
from msa_bench.results.files import newer_version_error, read_json_object, write_json_atomically
from msa_bench.results.item_sets import eval_set_of

PER_ITEM_SCHEMA_VERSION = 1
PER_ITEM_FILE = "per_item.json"
ROLES = ("method", "target", "oracle")
GENERATIONS_PREFIX = "generations/"  # unaligned generations of eval set S are kept under "generations/S"
_WHAT = "per-item file"
_KEY_FIELDS = ("id", "uid", "subject", "attribute", "entity", "relation")
_QUESTION_FIELDS = ("question", "prompt", "text")
_GROUND_TRUTH_FIELDS = ("answer", "gt", "answers")


@dataclass(frozen=True)
class ModelOutput:
    """What one model did on one item: its generation (where the suite generated) and its per-item values."""

    generation: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemRecord:
    eval_set: str
    index: int
    question: Any = None
    ground_truth: Any = None
    data_keys: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, ModelOutput] = field(default_factory=dict)  # role -> output

    @property
    def id(self) -> str:
        return f"{self.eval_set}/{self.index}"

    def to_json(self) -> dict[str, Any]:
        record = {
            "id": self.id,
            "eval_set": self.eval_set,
            "index": self.index,
            "data_keys": self.data_keys,
            "question": self.question,
            "ground_truth": self.ground_truth,
        }
        for role, output in self.outputs.items():
            record[role] = {"generation": output.generation, "values": output.values}
        return record

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], source: Path | str) -> ItemRecord:
        for name in ("eval_set", "index"):
            if name not in payload:
                raise ReportError(f"{source}: a per-item record lacks the required field {name!r}")
        outputs = {}
        for role in ROLES:
            output = payload.get(role)
            if isinstance(output, Mapping):
                outputs[role] = ModelOutput(output.get("generation"), dict(output.get("values") or {}))
        return cls(
            eval_set=str(payload["eval_set"]),
            index=int(payload["index"]),
            question=payload.get("question"),
            ground_truth=payload.get("ground_truth"),
            data_keys=dict(payload.get("data_keys") or {}),
            outputs=outputs,
        )


@dataclass(frozen=True)
class UnalignedValues:
    """A per-item list that no eval set's items line up with (see the module docstring), kept with the reason."""

    role: str
    key: str
    values: list
    reason: str
    eval_set: str | None = None


@dataclass(frozen=True)
class PerItemRecords:
    """One per_item.json."""

    method: str
    eval_sets: dict[str, list[ItemRecord]] = field(default_factory=dict)
    unaligned: list[UnalignedValues] = field(default_factory=list)

    def values(self, role: str, key: str) -> list:
        """Every per-item value `key` of one model (role: method, target or oracle), in eval-set and item order,
        records first, then unaligned lists of that key."""
        found = [
            record.outputs[role].values[key]
            for records in self.eval_sets.values()
            for record in records
            if role in record.outputs and key in record.outputs[role].values
        ]
        for entry in self.unaligned:
            if entry.role == role and entry.key == key:
                found.extend(entry.values)
        return found

    def to_json(self) -> dict[str, Any]:
        unaligned: dict[str, dict[str, Any]] = {}
        for entry in self.unaligned:
            unaligned.setdefault(entry.role, {})[entry.key] = {
                "eval_set": entry.eval_set,
                "reason": entry.reason,
                "values": entry.values,
            }
        return {
            "schema_version": PER_ITEM_SCHEMA_VERSION,
            "method": self.method,
            "eval_sets": {name: [r.to_json() for r in records] for name, records in self.eval_sets.items()},
            "unaligned": unaligned,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], source: Path | str = "<per-item>") -> PerItemRecords:
        version = payload.get("schema_version", 0)
        if version == 0:
            return _from_version_0(payload)
        if version != PER_ITEM_SCHEMA_VERSION:
            raise newer_version_error(source, _WHAT, version, PER_ITEM_SCHEMA_VERSION)
        for name in ("method", "eval_sets"):
            if name not in payload:
                raise ReportError(f"{source}: the {_WHAT} lacks the required field {name!r}")
        eval_sets = {
            name: [ItemRecord.from_json(record, source) for record in records]
            for name, records in payload["eval_sets"].items()
        }
        unaligned = [
            UnalignedValues(role, key, list(entry["values"]), str(entry["reason"]), entry.get("eval_set"))
            for role, entries in (payload.get("unaligned") or {}).items()
            for key, entry in entries.items()
        ]
        return cls(method=str(payload["method"]), eval_sets=eval_sets, unaligned=unaligned)

    def write(self, path: Path) -> None:
        write_json_atomically(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> PerItemRecords:
        return cls.from_json(read_json_object(path, _WHAT), source=path)


def _from_version_0(payload: Mapping[str, Any]) -> PerItemRecords:
    reason = "written before per-item records (per_item.json version 0): not lined up with eval-set items"
    unaligned = []
    for role in ROLES:
        lists = payload.get(role)
        for key, values in lists.items() if isinstance(lists, Mapping) else ():
            if isinstance(values, list):
                unaligned.append(UnalignedValues(role, key, values, reason))
    # Version 0 kept the generations of the method's model only.
    generations = payload.get("generations")
    for eval_set, texts in generations.items() if isinstance(generations, Mapping) else ():
        if isinstance(texts, list):
            unaligned.append(
                UnalignedValues("method", GENERATIONS_PREFIX + eval_set, texts, reason, eval_set)
            )
    return PerItemRecords(method="unknown", unaligned=unaligned)


def _first_field(item: Mapping[str, Any], names: Iterable[str]) -> Any:
    return next((item[name] for name in names if item.get(name) is not None), None)


def build_per_item_records(
    method: str,
    evaluations: Mapping[str, Mapping[str, Any]],
    eval_sets: Mapping[str, Sequence[Mapping[str, Any]]],
    suites: Sequence[str],
) -> PerItemRecords:
    """The per-item records of one run.

    evaluations: role (method, target, oracle) -> that model's evaluation (`per_item` and `generations`, as
    `pipeline.evaluation.evaluate_model` returns it); eval_sets: eval set name -> its items, those the evaluation
    read; suites: the suites that were evaluated (the evaluation plan's keys), which place each per-item list."""
    aligned: dict[str, dict[str, dict[str, list]]] = {}  # eval set -> role -> key -> values
    generations: dict[str, dict[str, list]] = {}  # eval set -> role -> texts
    unaligned: list[UnalignedValues] = []

    def lines_up(role: str, key: str, values: list, eval_set: str | None) -> bool:
        if eval_set is None:
            reason = "no evaluated suite says which eval set these values are on"
        elif eval_set not in eval_sets:
            reason = f"they are on the eval set {eval_set!r}, which was not loaded"
        elif len(values) != len(eval_sets[eval_set]):
            reason = f"{len(values)} values for the {len(eval_sets[eval_set])} items of {eval_set!r}"
        else:
            return True
        unaligned.append(UnalignedValues(role, key, list(values), reason, eval_set))
        return False

    for role, evaluation in evaluations.items():
        for key, values in (evaluation.get("per_item") or {}).items():
            eval_set = eval_set_of(key, suites)
            if lines_up(role, key, values, eval_set):
                aligned.setdefault(eval_set, {}).setdefault(role, {})[key] = values
        for eval_set, texts in (evaluation.get("generations") or {}).items():
            if lines_up(role, GENERATIONS_PREFIX + eval_set, texts, eval_set):
                generations.setdefault(eval_set, {})[role] = texts

    records = {
        eval_set: [
            _record(
                eval_set,
                index,
                item,
                list(evaluations),
                aligned.get(eval_set, {}),
                generations.get(eval_set, {}),
            )
            for index, item in enumerate(eval_sets[eval_set])
        ]
        for eval_set in sorted(eval_sets)
        if eval_set in aligned or eval_set in generations
    }
    return PerItemRecords(method=method, eval_sets=records, unaligned=unaligned)


def _record(
    eval_set: str,
    index: int,
    item: Mapping[str, Any],
    roles: Sequence[str],
    values_by_role: Mapping[str, Mapping[str, list]],
    generations_by_role: Mapping[str, list],
) -> ItemRecord:
    outputs = {}
    for role in roles:
        texts = generations_by_role.get(role)
        values = values_by_role.get(role, {})
        outputs[role] = ModelOutput(
            generation=None if texts is None else texts[index],
            values={key: key_values[index] for key, key_values in values.items()},
        )
    return ItemRecord(
        eval_set=eval_set,
        index=index,
        question=_first_field(item, _QUESTION_FIELDS),
        ground_truth=_first_field(item, _GROUND_TRUTH_FIELDS),
        data_keys={name: item[name] for name in _KEY_FIELDS if name in item},
        outputs=outputs,
    )
