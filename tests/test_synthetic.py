"""The generated TOFU-style world: determinism, split layout, answer templates, leakage, and the tokenizer."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from msa_bench.data.synthetic import (
    FORGET_PERCENTS,
    QA_FIELDS,
    UNIQUE_AUTHOR_ATTRIBUTES,
    SyntheticWorld,
    SyntheticWorldSpec,
    generate_world,
    load_benchmark_split,
    write_benchmark,
)
from msa_bench.data.synthetic_vocabulary import AUTHOR_TEMPLATES, COUNTRY_TEMPLATES
from msa_bench.data.tokenizer import train_bpe_tokenizer

SMALL_SPEC = SyntheticWorldSpec(
    seed=3,
    n_benchmark_authors=20,
    n_holdout_authors=2,
    n_instruct_authors=8,
    n_famous_authors=4,
    n_countries=4,
    bios_per_author=3,
    n_perturbed=3,
)
QA_FILE_STEMS = (
    ["full", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed", "instruct"]
    + [f"forget{p:02d}" for p in FORGET_PERCENTS]
    + [f"forget{p:02d}_perturbed" for p in FORGET_PERCENTS]
    + [f"retain{100 - p:02d}" for p in FORGET_PERCENTS]
    + [f"holdout{p:02d}" for p in FORGET_PERCENTS]
)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return generate_world(SMALL_SPEC)


@pytest.fixture(scope="module")
def data_dir(world: SyntheticWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_benchmark(world, out)
    return out


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _subjects(records: list[dict]) -> set[str]:
    return {record["subject"] for record in records}


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_writes_identical_files(world: SyntheticWorld, data_dir: Path, tmp_path: Path) -> None:
    write_benchmark(generate_world(SMALL_SPEC), tmp_path)
    assert _file_bytes(tmp_path) == _file_bytes(data_dir)


def test_other_seed_writes_other_files(data_dir: Path, tmp_path: Path) -> None:
    other = dataclasses.replace(SMALL_SPEC, seed=SMALL_SPEC.seed + 1)
    write_benchmark(generate_world(other), tmp_path)
    ours, theirs = _file_bytes(data_dir), _file_bytes(tmp_path)
    assert ours.keys() == theirs.keys()
    assert ours["full.jsonl"] != theirs["full.jsonl"]
    assert ours["pretraining.jsonl"] != theirs["pretraining.jsonl"]


# ------------------------------------------------------------------------------------------------ files and splits


def test_files_counts_and_manifest(world: SyntheticWorld, data_dir: Path) -> None:
    counts = write_benchmark(world, data_dir)
    expected = {f"{stem}.jsonl" for stem in QA_FILE_STEMS} | {"pretraining.jsonl"}
    assert set(counts) == expected
    assert {path.name for path in data_dir.iterdir()} == expected | {"manifest.json"}
    for name, count in counts.items():
        assert len(load_benchmark_split(data_dir, name.removesuffix(".jsonl"))) == count > 0
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["spec"] == dataclasses.asdict(SMALL_SPEC)
    assert manifest["counts"] == counts
    assert manifest["generator_version"]
    assert load_benchmark_split(data_dir, "forget05") == world.qa_files["forget05"]
    assert all(set(doc) == {"text"} for doc in load_benchmark_split(data_dir, "pretraining"))


def test_every_qa_record_has_all_fields(world: SyntheticWorld) -> None:
    for records in world.qa_files.values():
        for record in records:
            assert tuple(record) == QA_FIELDS
            assert len(record["perturbed_answer"]) == SMALL_SPEC.n_perturbed
            assert record["paraphrased_question"] != record["question"]
            assert record["paraphrased_answer"] != record["answer"]


def test_split_relations(world: SyntheticWorld) -> None:
    files = world.qa_files
    full = files["full"]
    n_attributes = len(AUTHOR_TEMPLATES)
    assert len(full) == SMALL_SPEC.n_benchmark_authors * n_attributes
    # Author by author: each author's records are contiguous.
    subjects_in_order = [record["subject"] for record in full]
    assert len(set(subjects_in_order)) == SMALL_SPEC.n_benchmark_authors
    assert all(
        subjects_in_order[i] == subjects_in_order[i - i % n_attributes] for i in range(len(subjects_in_order))
    )
    previous: list[dict] = []
    for percent in FORGET_PERCENTS:
        forget, retain = files[f"forget{percent:02d}"], files[f"retain{100 - percent:02d}"]
        n_forget = SMALL_SPEC.forget_author_count(percent)
        assert len(forget) == n_forget * n_attributes
        assert forget == full[len(full) - len(forget) :]
        assert retain == full[: len(full) - len(forget)]
        assert not _subjects(forget) & _subjects(retain)
        assert files[f"forget{percent:02d}_perturbed"] == forget
        assert forget[len(forget) - len(previous) :] == previous  # forget01 ⊂ forget05 ⊂ forget10
        previous = forget
        holdout = files[f"holdout{percent:02d}"]
        assert len(holdout) == len(forget)
        assert _subjects(holdout) <= {author.name for author in world.holdout_authors}
    retain_perturbed = files["retain_perturbed"]
    assert retain_perturbed == full[: len(retain_perturbed)]
    assert len(retain_perturbed) == len(files["forget10"])
    assert _subjects(retain_perturbed) <= _subjects(files["retain90"])
    assert _subjects(files["real_authors_perturbed"]) == {author.name for author in world.famous_authors}
    assert _subjects(files["world_facts_perturbed"]) == {country.name for country in world.countries}
    assert _subjects(files["instruct"]) == {author.name for author in world.instruct_authors}


def test_forget10_edge_cases_are_rejected() -> None:
    with pytest.raises(ValueError, match="retain90"):
        SyntheticWorldSpec(n_benchmark_authors=1, n_holdout_authors=1)
    with pytest.raises(ValueError, match="n_holdout_authors"):
        SyntheticWorldSpec(n_benchmark_authors=30, n_holdout_authors=2)
    with pytest.raises(ValueError, match="n_countries"):
        SyntheticWorldSpec(n_countries=0)
    # Small benchmarks still get one forget author per split.
    assert SyntheticWorldSpec(n_benchmark_authors=5, n_holdout_authors=1).forget_author_count(1) == 1


def test_missing_split_file_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_benchmark_split(tmp_path, "forget42")
    assert str((tmp_path / "forget42.jsonl").resolve()) in str(error.value)


# ------------------------------------------------------------------------------------------------ answers


def _template_regex(template: str, subject: str) -> re.Pattern[str]:
    """A template as a regex whose `value` group captures the value (articles and pronouns left open)."""
    pattern = re.escape(template)
    for placeholder, alternatives in {
        "Subj": ["She", "He", subject],
        "Poss": ["Her", "His", f"{subject}'s"],
        "poss": ["her", "his"],
        "name": [subject],
    }.items():
        pattern = pattern.replace(
            re.escape(f"{{{placeholder}}}"), f"(?:{'|'.join(map(re.escape, alternatives))})"
        )
    pattern = pattern.replace(re.escape("{a_value}"), "an? (?P<value>.+)")
    pattern = pattern.replace(re.escape("{value}"), "(?P<value>.+)")
    return re.compile(pattern)


def _value_in(sentence: str, template: str, subject: str) -> str | None:
    match = _template_regex(template, subject).fullmatch(sentence)
    return match["value"] if match else None


def test_perturbed_answers_swap_only_the_value(world: SyntheticWorld) -> None:
    facts = {entity.name: entity.facts for entity in world.benchmark_authors + world.holdout_authors}
    facts |= {entity.name: entity.facts for entity in world.famous_authors + world.instruct_authors}
    facts |= {country.name: country.facts for country in world.countries}
    for stem, records in world.qa_files.items():
        for record in records:
            subject, attribute = record["subject"], record["attribute"]
            value = facts[subject][attribute]
            perturbed = record["perturbed_answer"]
            assert len(set(perturbed)) == len(perturbed), stem
            assert record["answer"] not in perturbed and record["paraphrased_answer"] not in perturbed
            templates = (AUTHOR_TEMPLATES | COUNTRY_TEMPLATES)[attribute].answers
            # The paraphrase template: it states the true value in the paraphrased answer...
            shared = [t for t in templates if _value_in(record["paraphrased_answer"], t, subject) == value]
            assert shared, record
            # ...and a wrong value of the same pool in every perturbed answer.
            wrong_values = [_value_in(answer, shared[0], subject) for answer in perturbed]
            assert None not in wrong_values and value not in wrong_values, record
            assert set(wrong_values) <= set(world.value_pools[attribute]), record
            assert any(_value_in(record["answer"], t, subject) == value for t in templates), record


def test_answers_are_short_and_avoid_the_author_name(world: SyntheticWorld) -> None:
    for record in world.qa_files["full"] + world.qa_files["instruct"]:
        for answer in (record["answer"], record["paraphrased_answer"], *record["perturbed_answer"]):
            assert record["subject"] not in answer
            assert len(answer.split()) <= 10, answer


def test_instruct_teaches_every_benchmark_template(world: SyntheticWorld) -> None:
    def frames(records: list[dict], field: str) -> set[str]:
        return {record[field].replace(record["subject"], "{name}") for record in records}

    def answer_frames(records: list[dict]) -> set[tuple[str, int]]:
        return {
            (record["attribute"], index)
            for record in records
            for index, template in enumerate(AUTHOR_TEMPLATES[record["attribute"]].answers)
            if _value_in(record["answer"], template, record["subject"]) is not None
        }

    full, instruct = world.qa_files["full"], world.qa_files["instruct"]
    assert frames(full, "question") <= frames(instruct, "question")
    assert answer_frames(full) <= answer_frames(instruct)
    all_questions = {question for templates in AUTHOR_TEMPLATES.values() for question in templates.questions}
    assert frames(instruct, "question") == all_questions


# ------------------------------------------------------------------------------------------------ leakage


def test_names_are_unique(world: SyntheticWorld) -> None:
    authors = world.benchmark_authors + world.holdout_authors + world.instruct_authors + world.famous_authors
    names = [author.name for author in authors] + [country.name for country in world.countries]
    assert len(set(names)) == len(names)
    surnames = [author.name.split()[-1] for author in authors]
    assert len(set(surnames)) == len(surnames)


def test_benchmark_and_holdout_authors_never_reach_pretraining_or_instruct(world: SyntheticWorld) -> None:
    pretraining = "\n".join(world.pretraining_documents)
    instruct = "\n".join(json.dumps(record) for record in world.qa_files["instruct"])
    for author in world.benchmark_authors + world.holdout_authors:
        assert not _mentions(pretraining, author.name) and not _mentions(instruct, author.name), author.name
        # Their unique values (birthplace, books, ...) are no one else's either: the oracle cannot guess them.
        for attribute in UNIQUE_AUTHOR_ATTRIBUTES:
            assert not _mentions(pretraining, author.facts[attribute])
            assert not _mentions(instruct, author.facts[attribute])


def test_forget_values_are_not_retain_values(world: SyntheticWorld) -> None:
    retain_text = "\n".join(record["answer"] for record in world.qa_files["retain90"])
    for author in world.benchmark_authors[-SMALL_SPEC.forget_author_count(10) :]:
        for attribute in UNIQUE_AUTHOR_ATTRIBUTES:
            assert not _mentions(retain_text, author.facts[attribute])


def test_world_knowledge_answers_appear_verbatim_in_pretraining(world: SyntheticWorld) -> None:
    records = world.qa_files["real_authors_perturbed"] + world.qa_files["world_facts_perturbed"]
    assert records
    for record in records:
        # Pronoun sentences must come from this subject's own documents.
        documents = [doc for doc in world.pretraining_documents if _mentions(doc, record["subject"])]
        for answer in (record["answer"], record["paraphrased_answer"]):
            assert any(answer in doc for doc in documents), answer


def test_pretraining_documents_state_every_fact(world: SyntheticWorld) -> None:
    n_documents = (SMALL_SPEC.n_instruct_authors + SMALL_SPEC.n_famous_authors + SMALL_SPEC.n_countries) * (
        SMALL_SPEC.bios_per_author
    )
    assert len(world.pretraining_documents) == n_documents
    for author in world.famous_authors:
        bios = [doc for doc in world.pretraining_documents if _mentions(doc, author.name)]
        assert len(bios) == SMALL_SPEC.bios_per_author
        assert len(set(bios)) == len(bios)
        for bio in bios:
            assert all(value in bio for value in author.facts.values()), bio


def test_corpus_texts_cover_benchmark_names(world: SyntheticWorld) -> None:
    corpus = "\n".join(world.corpus_texts())
    assert all(author.name in corpus for author in world.benchmark_authors + world.holdout_authors)


# ------------------------------------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def tokenizer(world: SyntheticWorld):
    return train_bpe_tokenizer(world.corpus_texts(), vocab_size=400, model_max_length=128)


def test_tokenizer_is_deterministic(world: SyntheticWorld, tokenizer) -> None:
    again = train_bpe_tokenizer(world.corpus_texts(), vocab_size=400, model_max_length=128)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert len(tokenizer) == 400


def test_tokenizer_round_trips_text(world: SyntheticWorld, tokenizer) -> None:
    samples = [
        world.pretraining_documents[0],
        "Question: "
        + world.qa_files["forget10"][0]["question"]
        + "\nAnswer: "
        + world.qa_files["forget10"][0]["answer"],
        "  odd  spacing , punctuation ! and ünïcödé ✓ \t tabs\n",
    ]
    for text in samples:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_tokenizer_save_and_load(tokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Question: Where was she born?\nAnswer: She was born in Tarsk."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text
    for token in ("bos", "eos", "pad"):
        assert getattr(loaded, f"{token}_token_id") == getattr(tokenizer, f"{token}_token_id") is not None
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|bos|>", "<|endoftext|>", "<|pad|>")
    assert loaded.model_max_length == 128
