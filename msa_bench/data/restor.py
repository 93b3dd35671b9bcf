"""RESTOR (Rezaei et al. 2025): Wikidata facts about people, and documents that corrupt them.

Read from a folder in the layout of the upstream `datasets/` directory (never copied into this repository):

- `facts.json`: {"dset": {entity: {wikidata_relation: {"question", "answers": [...]}}},
  "context": {relation: [{"question", "answer", "entity"}, ...]}}: 468 entities, 41 relations, 10 in-context
  examples per relation (one accepted answer each);
- `entities.json`: the 50 evaluation entities (a JSON list of names), 1,051 (entity, relation) questions in all;
- `mix_<name>.json` (a0..a3 here): the corruption documents, a JSON list of {"text"}; each document states several
  wrong facts about one evaluation entity, mixed with 0..3k correct facts about unrelated entities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from msa_bench.data.records import (
    RESTORE_HINT,
    TEXT,
    TEXT_LIST,
    check_record,
    read_json,
    read_json_list,
)
from msa_bench.errors import MalformedDataError

FACTS_FILE = "facts.json"
ENTITIES_FILE = "entities.json"
MIX_PREFIX = "mix_"


@dataclass(frozen=True)
class RestorQuestion:
    """One (entity, relation) fact question and the Wikidata answers accepted for it."""

    entity: str
    relation: str
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class RestorData:
    """The RESTOR evaluation questions, in-context examples, corruption documents and the full fact table."""

    mix: str
    entities: tuple[str, ...]  # the evaluation entities, in the order of entities.json
    eval_questions: tuple[RestorQuestion, ...]  # every question about them, by entity then facts.json order
    icl_examples: Mapping[str, tuple[dict, ...]]  # relation -> {"question", "answer", "entity"} examples
    corruption_texts: tuple[str, ...]  # the documents of mix_<mix>.json
    facts: Mapping[str, Mapping[str, dict]]  # facts.json "dset": every entity's questions and answers

    def clean_fact_texts(self) -> list[str]:
        """One sentence per fact of all 468 entities: "{question} {first answer}." (e.g. "What is the country of
        citizenship of Suthida? Thailand."), in facts.json order.

        This is the in-context-example layout the evaluation prompt uses (question, space, answer), so a small
        "clean" model trained on these texts answers the evaluation prompts in the format they expect."""
        return [
            f"{fact['question']} {fact['answers'][0]}."
            for relations in self.facts.values()
            for fact in relations.values()
            if fact["answers"]
        ]


# The fields facts.json's questions and in-context examples, and the corruption documents, must carry.
_FACT_FIELDS = {"question": TEXT, "answers": TEXT_LIST}
_EXAMPLE_FIELDS = {"question": TEXT, "answer": TEXT}
_DOCUMENT_FIELDS = {"text": TEXT}


def _read_facts(path: Path) -> tuple[dict, dict]:
    """facts.json's "dset" (entity -> relation -> fact) and "context" (relation -> examples), every record checked."""
    facts = read_json(path, what="RESTOR file")
    if (
        not isinstance(facts, dict)
        or not isinstance(facts.get("dset"), dict)
        or not isinstance(facts.get("context"), dict)
    ):
        raise MalformedDataError(
            f'{path}: must hold an object with "dset" and "context" objects (RESTOR\'s facts.json); '
            f"{RESTORE_HINT}"
        )
    dset, context = facts["dset"], facts["context"]
    for entity, relations in dset.items():
        if not isinstance(relations, dict):
            raise MalformedDataError(f"{path}: dset[{entity!r}] must map relations to facts; {RESTORE_HINT}")
        for relation, fact in relations.items():
            check_record(fact, _FACT_FIELDS, f"{path} dset[{entity!r}][{relation!r}]")
    for relation, examples in context.items():
        if not isinstance(examples, list):
            raise MalformedDataError(
                f"{path}: context[{relation!r}] must be a list of examples; {RESTORE_HINT}"
            )
        for index, example in enumerate(examples):
            check_record(example, _EXAMPLE_FIELDS, f"{path} context[{relation!r}] example {index}")
    return dset, context


def available_mixes(data_dir: Path) -> list[str]:
    """The mix names (a0, a1, ...) whose mix_<name>.json is in the folder."""
    return sorted(path.stem.removeprefix(MIX_PREFIX) for path in Path(data_dir).glob(f"{MIX_PREFIX}*.json"))


def load_restor(data_dir: Path, *, mix: str = "a0") -> RestorData:
    """Load the RESTOR folder: questions about the evaluation entities, in-context examples, and the corruption
    documents of `mix_<mix>.json`. Every file is read in full and every record checked: a DataError (a FileNotFoundError) names a missing file, a
    MalformedDataError (a ValueError) the file, record and field of a malformed one; ValueError for an unknown mix."""
    data_dir = Path(data_dir)
    mixes = available_mixes(data_dir)
    if data_dir.is_dir() and mix not in mixes:
        raise ValueError(f"unknown RESTOR mix {mix!r}; available in {data_dir.resolve()}: {mixes}")
    dset, context = _read_facts(data_dir / FACTS_FILE)
    entities_path = data_dir / ENTITIES_FILE
    entities = read_json_list(entities_path, what="RESTOR file")
    bad = next((e for e in entities if not isinstance(e, str) or not e.strip()), None)
    if bad is not None:
        raise MalformedDataError(
            f"{entities_path}: must list entity names (strings), got {bad!r:.60}; {RESTORE_HINT}"
        )
    documents = read_json_list(data_dir / f"{MIX_PREFIX}{mix}.json", _DOCUMENT_FIELDS, what="RESTOR file")

    unknown = [entity for entity in entities if entity not in dset]
    if unknown:
        raise MalformedDataError(
            f"{entities_path}: evaluation entities missing from {data_dir / FACTS_FILE}: {unknown}; {RESTORE_HINT}"
        )
    eval_questions = tuple(
        RestorQuestion(entity, relation, fact["question"], tuple(fact["answers"]))
        for entity in entities
        for relation, fact in dset[entity].items()
    )
    missing_context = sorted({q.relation for q in eval_questions} - set(context))
    if missing_context:
        raise MalformedDataError(
            f"{data_dir / FACTS_FILE}: relations without in-context examples: {missing_context}; {RESTORE_HINT}"
        )
    return RestorData(
        mix=mix,
        entities=tuple(entities),
        eval_questions=eval_questions,
        icl_examples={relation: tuple(examples) for relation, examples in context.items()},
        corruption_texts=tuple(document["text"] for document in documents),
        facts=dset,
    )
