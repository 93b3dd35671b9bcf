"""The splits of a TOFU-layout folder (<split>.jsonl, as the hub's locuslab/TOFU configs and the generated world
write them) and the fields each one's records must carry.

The fields are those the run reads: every QA split a question and an answer; the perturbed eval sets the answer
lists the truth ratio and the judged accuracies score (and, for forget/retain, the paraphrased answer); the
generated world's pretraining split a text.
"""

from __future__ import annotations

from pathlib import Path

from msa_bench.data.records import TEXT, TEXT_LIST, FieldKinds, read_jsonl

QA_FIELDS: FieldKinds = {"question": TEXT, "answer": TEXT}
PERTURBED_FIELDS: FieldKinds = QA_FIELDS | {"perturbed_answer": TEXT_LIST}
PARAPHRASED_PERTURBED_FIELDS: FieldKinds = PERTURBED_FIELDS | {"paraphrased_answer": TEXT}
TEXT_FIELDS: FieldKinds = {"text": TEXT}

# Perturbed sets without a paraphrased answer (real-world questions have no paraphrase in TOFU).
_WORLD_KNOWLEDGE_PERTURBED = ("real_authors_perturbed", "world_facts_perturbed")


def split_fields(name: str) -> FieldKinds:
    """The fields every record of split `name` must have."""
    if name == "pretraining":
        return TEXT_FIELDS
    if name in _WORLD_KNOWLEDGE_PERTURBED:
        return PERTURBED_FIELDS
    if name.endswith("_perturbed"):
        return PARAPHRASED_PERTURBED_FIELDS
    return QA_FIELDS


def load_benchmark_split(data_dir: Path, name: str) -> list[dict]:
    """The records of <data_dir>/<name>.jsonl, read in full and checked (see msa_bench/data/records.py): a missing
    file, a line that is not JSON, a record without a field the run reads, or an empty split raise a DataError naming
    the file (and line)."""
    return read_jsonl(Path(data_dir) / f"{name}.jsonl", split_fields(name), what=f"benchmark split {name!r}")
