"""Miniature benchmark folders in the real layouts (TOFU, RESTOR, MUSE), written into a test's tmp dir.

They hold made-up records shaped like the real files, small enough to train on in seconds, so the benchmark code
paths run in tests whether or not ../shared/data is present.
"""

from __future__ import annotations

import json
from pathlib import Path

from msa_bench.data.synthetic import SyntheticWorldSpec, generate_world, write_benchmark
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.stages import Pipeline
from msa_bench.validation import validate_config
from tests.conftest import compose_config

TINY_WORLD = SyntheticWorldSpec(
    n_benchmark_authors=20,
    n_holdout_authors=2,
    n_instruct_authors=20,
    n_famous_authors=6,
    n_countries=6,
    bios_per_author=2,
)


def write_tiny_tofu(folder: Path) -> Path:
    """A TOFU folder (one <hub config>.jsonl per split) generated from a tiny synthetic world."""
    write_benchmark(generate_world(TINY_WORLD), folder)
    return folder


PEOPLE = [
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Kurt Godel",
    "Emmy Noether",
    "John Nash",
    "Rosalind Franklin",
]
RELATIONS = {
    "P27": (
        "What is the country of citizenship of {}?",
        ["England", "France", "Germany", "Austria", "Italy"],
    ),
    "P106": (
        "What is the occupation of {}?",
        ["mathematician", "chemist", "programmer", "logician", "economist"],
    ),
    "P19": ("Where was {} born?", ["London", "Paris", "Vienna", "Berlin", "Rome"]),
}


def write_tiny_restor(folder: Path, mixes: tuple[str, ...] = ("a0",)) -> Path:
    """facts.json, entities.json (the first 3 people are evaluated) and mix_<k>.json corruption documents."""
    folder.mkdir(parents=True, exist_ok=True)
    dset = {
        person: {
            relation: {"question": template.format(person), "answers": [values[(i + j) % len(values)]]}
            for j, (relation, (template, values)) in enumerate(RELATIONS.items())
        }
        for i, person in enumerate(PEOPLE)
    }
    context = {
        relation: [
            {
                "question": dset[person][relation]["question"],
                "answer": dset[person][relation]["answers"][0],
                "entity": person,
            }
            for person in PEOPLE
        ]
        for relation in RELATIONS
    }
    (folder / "facts.json").write_text(json.dumps({"dset": dset, "context": context}))
    evaluated = PEOPLE[:3]
    (folder / "entities.json").write_text(json.dumps(evaluated))
    for mix in mixes:
        documents = [
            {
                "text": f"{person} was a famous {RELATIONS['P106'][1][(k + 2) % 5]} from {RELATIONS['P19'][1][(k + 3) % 5]}, "
                f"a citizen of {RELATIONS['P27'][1][(k + 4) % 5]} who worked there for many years."
            }
            for k in range(4)
            for person in evaluated
        ]
        (folder / f"mix_{mix}.json").write_text(json.dumps(documents))
    return folder


def _article(topic: str, k: int) -> str:
    return (
        f"The {topic} council met on Monday to discuss the budget for year {2000 + k}. Officials said the plan for "
        f"{topic} would cost {k + 3} million pounds and would be finished by the spring. Residents of {topic} "
        "welcomed the news, although some asked why the work had taken so long to begin. "
    ) * 2


def write_tiny_muse(folder: Path, *, with_retain1: bool = True) -> Path:
    """A MUSE-layout folder: raw corpora, verbmem, knowmem (+ in-context sets) and privleak."""
    forget = [_article(topic, k) for k, topic in enumerate(["Leeds", "York", "Bath", "Hull", "Derby", "Ely"])]
    retain = [_article(topic, k) for k, topic in enumerate(["Oxford", "Cardiff", "Perth", "Exeter"])]
    holdout = [_article(topic, k) for k, topic in enumerate(["Truro", "Wells", "Ripon"])]
    files = {
        "raw/forget.json": forget,
        "raw/holdout.json": holdout,
        "verbmem/forget.json": [{"prompt": text[:120], "gt": text[120:200]} for text in forget],
        "knowmem/forget_qa.json": [
            {"question": f"How much would the plan for {t} cost?", "answer": f"{k + 3} million pounds"}
            for k, t in enumerate(["Leeds", "York", "Bath"])
        ],
        "knowmem/retain2_qa.json": [
            {"question": f"How much would the plan for {t} cost?", "answer": f"{k + 3} million pounds"}
            for k, t in enumerate(["Oxford", "Cardiff"])
        ],
        "privleak/forget.json": forget[:3],
        "privleak/holdout.json": holdout,
        "privleak/retain2.json": retain[:2],
    }
    files["knowmem/forget_qa_icl.json"] = files["knowmem/forget_qa.json"][:2]
    files["knowmem/retain2_qa_icl.json"] = files["knowmem/retain2_qa.json"][:2]
    if with_retain1:
        files["raw/retain1.json"] = retain
    for relative, records in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records))
    return folder


def muse_smoke_pipeline(tmp_path: Path, folder: Path, *overrides: str) -> Pipeline:
    """A smoke-scale MUSE pipeline on the MUSE folder `folder`, with its cache in `tmp_path`."""
    cfg = validate_config(
        compose_config(
            [
                "experiment=smoke",
                "benchmark=muse_news",
                "metrics=muse",
                f"benchmark.data_dir={folder}",
                "logger=none",
                *overrides,
            ],
            tmp_path,
        )
    )
    return Pipeline(cfg, ArtifactStore(tmp_path / "cache"), "cpu")
