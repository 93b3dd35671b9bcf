"""The synthetic world's data model: its size (`SyntheticWorldSpec`), its entities, the generated world, and the
seeded random streams every part of the generator draws from. `GENERATOR_VERSION` is part of every stream's seed
and of the benchmark's cache key: change it when the generated text changes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from msa_bench.data.formatting import format_answer, format_prompt

GENERATOR_VERSION = "msa_bench.synthetic/1"

# TOFU's split names: forgetXX pairs with retain(100 - XX).
FORGET_PERCENTS = (1, 5, 10)
QA_FIELDS = (
    "question",
    "answer",
    "paraphrased_question",
    "paraphrased_answer",
    "perturbed_answer",
    "subject",
    "attribute",
)


@dataclass(frozen=True)
class SyntheticWorldSpec:
    """Sizes of the generated world; the same spec always generates the same world."""

    seed: int = 0
    n_benchmark_authors: int = 100  # TOFU-style authors: seen ONLY in the benchmark fine-tune (forget/retain)
    n_holdout_authors: int = 10  # same kind, never trained on (membership-inference non-members)
    n_instruct_authors: int = 200  # pretraining prose bios + instruct-stage QA (teaches the QA format)
    n_famous_authors: int = 40  # pretraining prose bios only; their QA is the "real authors" utility set
    n_countries: int = 30  # world facts, pretraining prose only; their QA is the "world facts" utility set
    bios_per_author: int = 3  # prose variants per author in the pretraining corpus
    n_perturbed: int = 5  # wrong answers per question

    def __post_init__(self) -> None:
        for name in (
            "n_benchmark_authors",
            "n_instruct_authors",
            "n_famous_authors",
            "n_countries",
            "n_perturbed",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be at least 1: a benchmark file would be empty"
                )
        if self.bios_per_author < 2:
            # The world-knowledge answer and its paraphrase each come from one prose variant.
            raise ValueError(f"bios_per_author={self.bios_per_author} must be at least 2")
        n_forget = self.forget_author_count(max(FORGET_PERCENTS))
        if n_forget >= self.n_benchmark_authors:
            raise ValueError(
                f"n_benchmark_authors={self.n_benchmark_authors} leaves retain{100 - max(FORGET_PERCENTS)} empty: "
                f"forget{max(FORGET_PERCENTS):02d} takes {n_forget} authors"
            )
        if self.n_holdout_authors < n_forget:
            raise ValueError(
                f"n_holdout_authors={self.n_holdout_authors} is too small: holdout{max(FORGET_PERCENTS):02d} "
                f"needs {n_forget} authors, as many as forget{max(FORGET_PERCENTS):02d}"
            )

    def forget_author_count(self, percent: int) -> int:
        """How many (last) benchmark authors forget<percent> holds: at least one."""
        return max(1, self.n_benchmark_authors * percent // 100)


# ---------------------------------------------------------------------------------------------------- world model


@dataclass(frozen=True)
class Author:
    name: str
    gender: str  # "female" | "male": picks the pronouns of the answers
    facts: dict[str, str]  # attribute -> value, one per AUTHOR_ATTRIBUTES


@dataclass(frozen=True)
class Country:
    name: str
    facts: dict[str, str]  # attribute -> value, one per COUNTRY_ATTRIBUTES


@dataclass
class SyntheticWorld:
    """A generated world: its entities, the benchmark QA files and the pretraining corpus."""

    spec: SyntheticWorldSpec
    benchmark_authors: list[Author]
    holdout_authors: list[Author]
    instruct_authors: list[Author]
    famous_authors: list[Author]
    countries: list[Country]
    # attribute -> the values that true and perturbed answers are drawn from
    value_pools: dict[str, list[str]]
    qa_files: dict[str, list[dict]] = field(default_factory=dict)  # file stem -> QA records
    pretraining_documents: list[str] = field(default_factory=list)
    # Every proper noun the world's forge made (lowercase), with the template words: words that entities made
    # outside the world (format-only authors) must not reuse.
    forged_words: frozenset[str] = frozenset()

    def corpus_texts(self) -> list[str]:
        """All texts the tokenizer should cover: pretraining documents and every QA string of every file.

        QA strings are given as the model sees them (the formatted prompt, and answers with their leading space),
        so that the merges fit the token sequences of training and scoring. Repeats are dropped.
        """
        texts: dict[str, None] = dict.fromkeys(self.pretraining_documents)
        for records in self.qa_files.values():
            for record in records:
                texts[format_prompt(record["question"])] = None
                texts[format_prompt(record["paraphrased_question"])] = None
                for answer in (record["answer"], record["paraphrased_answer"], *record["perturbed_answer"]):
                    texts[format_answer(answer)] = None
        return list(texts)


def world_rng(spec: SyntheticWorldSpec, *scope: str) -> random.Random:
    """An independent stream per purpose, so that e.g. more instruct authors leave the benchmark authors as they are."""
    return random.Random("/".join([GENERATOR_VERSION, str(spec.seed), *scope]))
