"""A deterministic, seeded generator of a small TOFU-style world.

The world has four kinds of authors and a set of countries:

- benchmark authors: seen only in the benchmark fine-tune (full / forgetXX / retainXX),
- holdout authors: never trained on (the non-members of membership-inference metrics),
- instruct authors: prose biographies in pretraining and QA in the instruct stage (teaches the QA format),
- famous authors and countries: prose in pretraining only; their QA is the "real authors" / "world facts" utility set.

Two properties matter for unlearning metrics and shape the design:

- An oracle that never saw a forget author must not be able to guess its answers. Values therefore come from large
  generated pools (pronounceable syllable names, word-list combinations), most of them unique per author, and
  answers are short sentences in which the value is a large share of the tokens.
- The truth ratio must compare facts only. The paraphrased answer and every perturbed answer share one sentence
  template and differ only in the value. Wrong values of the per-author-unique attributes are values no author
  holds, so that to a model that never saw the author the true and the wrong values are equally unfamiliar.

All randomness comes from `random.Random` instances seeded with strings derived from `spec.seed` (string seeds are
hashed with SHA-512 by `random`, so they do not depend on PYTHONHASHSEED).

This module generates the world and reads and writes its files; the data model is in synthetic_world.py, the
templates and word lists in synthetic_vocabulary.py, the QA and prose rendering in synthetic_text.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from msa_bench.data.synthetic_text import author_bios, author_qa, country_docs, country_qa
from msa_bench.data.synthetic_vocabulary import (
    AUTHOR_ATTRIBUTES,
    AWARD_FIELDS,
    AWARD_KINDS,
    BIRTH_YEARS,
    CITY_ENDINGS,
    COUNTRY_ATTRIBUTES,
    COUNTRY_ENDINGS,
    CURRENCY_ENDINGS,
    FEMALE_NAME_ENDINGS,
    GENRE_ADJECTIVES,
    GENRE_NOUNS,
    LANGUAGE_ENDINGS,
    MALE_NAME_ENDINGS,
    NATIONAL_ANIMALS,
    OCCUPATION_GOODS,
    OCCUPATION_ROLES,
    SURNAME_ENDINGS,
    TITLE_ADJECTIVES,
    TITLE_NOUNS,
    NameForge,
    unique_values,
)
from msa_bench.data.synthetic_world import (
    FORGET_PERCENTS,
    GENERATOR_VERSION,
    QA_FIELDS,
    Author,
    Country,
    SyntheticWorld,
    SyntheticWorldSpec,
    world_rng,
)
from msa_bench.data.tofu_splits import load_benchmark_split

# The generator's public API; the data model is re-exported here because callers import it with the generator.
__all__ = [
    "FORGET_PERCENTS",
    "GENERATOR_VERSION",
    "QA_FIELDS",
    "UNIQUE_AUTHOR_ATTRIBUTES",
    "Author",
    "Country",
    "SyntheticWorld",
    "SyntheticWorldSpec",
    "format_only_authors_qa",
    "generate_world",
    "load_benchmark_split",
    "write_benchmark",
]


def _build_author_pools(
    forge: NameForge, rng: random.Random, countries: list[Country], n_authors: int
) -> dict:
    # Pools several times larger than the number of authors: values drawn without replacement stay unique per
    # author, and perturbed answers still have plenty of unseen values to choose from.
    size = max(800, 3 * n_authors)
    country_names = [country.name for country in countries]
    cities = forge.words(size, CITY_ENDINGS, max_length=9)
    stems_for = {
        kind: forge.words(size, ("",), syllables=(2, 2)) for kind in ("award", "university", "publisher")
    }
    awards = [
        f"{stem} {rng.choice(AWARD_KINDS)}"
        + (f" for {rng.choice(AWARD_FIELDS)}" if rng.random() < 0.5 else "")
        for stem in stems_for["award"]
    ]
    university_forms = ("{} University", "the University of {}", "{} College", "the {} Academy")
    universities = [rng.choice(university_forms).format(stem) for stem in stems_for["university"]]
    publishers = [f"{stem} {rng.choice(('Press', 'House', 'Books'))}" for stem in stems_for["publisher"]]
    title_places = forge.words(size, CITY_ENDINGS)

    def title() -> str:
        adjective = rng.choice(TITLE_ADJECTIVES)
        noun, other = rng.sample(TITLE_NOUNS, 2)
        # No form is a word span of another ("Silent Harbor" would be one of "The Silent Harbor"): a title the
        # oracle learnt for a retain author then never contains a forget author's title.
        forms = (
            f"The {adjective} {noun}",
            f"The {noun} of {rng.choice(title_places)}",
            f"The {noun} and the {other}",
            f"A {noun} for {rng.choice(title_places)}",
        )
        return rng.choice(forms)

    titles = unique_values(2 * size, title)
    occupations = [f"{good} {role}" for good in OCCUPATION_GOODS for role in OCCUPATION_ROLES]
    return {
        "birth_place": [f"{city}, {rng.choice(country_names)}" for city in cities],
        "birth_year": list(BIRTH_YEARS),
        "genre": [f"{adjective} {noun}" for adjective in GENRE_ADJECTIVES for noun in GENRE_NOUNS],
        "father_occupation": occupations,
        "mother_occupation": occupations,
        "award": awards,
        "debut_book": titles,
        "known_book": titles,
        "university": universities,
        "publisher": publishers,
    }


# Attributes whose values no two authors share: a retained author's value is never the right answer for a forget
# author. The others (years, genres, occupations) are combinatorial pools drawn with replacement.
UNIQUE_AUTHOR_ATTRIBUTES = ("birth_place", "award", "debut_book", "known_book", "university", "publisher")


def _make_authors(
    names: list[tuple[str, str]], pools: dict[str, list[str]], rng: random.Random
) -> Iterator[tuple[str, str, dict[str, str]]]:
    # Shuffled copies to pop from: the unique attributes are drawn without replacement across all authors.
    # debut_book and known_book share the deck of titles, so an author's two books differ.
    deck_names = {
        attribute: "title" if attribute.endswith("_book") else attribute for attribute in AUTHOR_ATTRIBUTES
    }
    decks: dict[str, list[str]] = {}
    for attribute in UNIQUE_AUTHOR_ATTRIBUTES:
        if deck_names[attribute] not in decks:
            decks[deck_names[attribute]] = rng.sample(pools[attribute], len(pools[attribute]))
    for name, gender in names:
        facts = {}
        for attribute in AUTHOR_ATTRIBUTES:
            if attribute in UNIQUE_AUTHOR_ATTRIBUTES:
                facts[attribute] = decks[deck_names[attribute]].pop()
            else:
                facts[attribute] = rng.choice(pools[attribute])
        yield name, gender, facts


def _make_countries(
    spec: SyntheticWorldSpec, forge: NameForge, rng: random.Random
) -> tuple[list[Country], dict]:
    # Beyond the countries' own values, each pool holds extra values that only perturbed answers use.
    size = max(spec.n_countries, spec.n_perturbed + 1, 60)
    pools = {
        "capital": forge.words(size, CITY_ENDINGS),
        "currency": [word.lower() for word in forge.words(size, CURRENCY_ENDINGS)],
        "language": forge.words(size, LANGUAGE_ENDINGS),
        "largest_river": [f"{word} River" for word in forge.words(size, ("",), syllables=(2, 2))],
        "national_animal": list(NATIONAL_ANIMALS),
    }
    names = forge.words(spec.n_countries, COUNTRY_ENDINGS)
    decks = {attribute: rng.sample(pool, len(pool)) for attribute, pool in pools.items()}
    countries = []
    for name in names:
        facts = {}
        for attribute in COUNTRY_ATTRIBUTES:
            deck = decks[attribute]
            # Animals are a fixed list: once it runs out, countries share animals.
            facts[attribute] = deck.pop() if deck else rng.choice(pools[attribute])
        countries.append(Country(name=name, facts=facts))
    return countries, pools


# ---------------------------------------------------------------------------------------------------- generation


def generate_world(spec: SyntheticWorldSpec) -> SyntheticWorld:
    """Generate the world, its QA files and its pretraining corpus; identical for identical specs."""
    forge = NameForge(world_rng(spec, "names"))
    countries, country_pools = _make_countries(spec, forge, world_rng(spec, "countries"))
    group_sizes = {
        "benchmark": spec.n_benchmark_authors,
        "holdout": spec.n_holdout_authors,
        "instruct": spec.n_instruct_authors,
        "famous": spec.n_famous_authors,
    }
    n_authors = sum(group_sizes.values())
    name_rng = world_rng(spec, "author_names")
    first_names = {
        "female": forge.words(max(60, n_authors // 2), FEMALE_NAME_ENDINGS, max_length=8),
        "male": forge.words(max(60, n_authors // 2), MALE_NAME_ENDINGS, max_length=8),
    }
    # Surnames come from the forge, so every author's full name is unique and shares no word with another entity.
    names = []
    for _ in range(n_authors):
        gender = name_rng.choice(("female", "male"))
        names.append(
            (f"{name_rng.choice(first_names[gender])} {forge.word(SURNAME_ENDINGS, max_length=9)}", gender)
        )
    author_pools = _build_author_pools(forge, world_rng(spec, "pools"), countries, n_authors)
    authors = [
        Author(name, gender, facts)
        for name, gender, facts in _make_authors(names, author_pools, world_rng(spec, "facts"))
    ]
    # Wrong values of the unique attributes come from the values no author holds: for a model that never saw an
    # author (the oracle, a holdout author), the true and the wrong values are then equally unfamiliar.
    assigned = {author.facts[attribute] for author in authors for attribute in UNIQUE_AUTHOR_ATTRIBUTES}
    wrong_pools = {
        attribute: [value for value in pool if value not in assigned]
        if attribute in UNIQUE_AUTHOR_ATTRIBUTES
        else pool
        for attribute, pool in author_pools.items()
    }

    groups: dict[str, list[Author]] = {}
    start = 0
    for group, size in group_sizes.items():
        groups[group] = authors[start : start + size]
        start += size

    world = SyntheticWorld(
        spec=spec,
        benchmark_authors=groups["benchmark"],
        holdout_authors=groups["holdout"],
        instruct_authors=groups["instruct"],
        famous_authors=groups["famous"],
        countries=countries,
        value_pools=author_pools | country_pools,
        forged_words=forge.taken,
    )

    documents: list[str] = []
    real_authors: list[dict] = []
    for author in world.instruct_authors:
        documents += author_bios(spec, author)[0]
    for author in world.famous_authors:
        bios, frames = author_bios(spec, author)
        documents += bios
        real_authors += author_qa(spec, author, wrong_pools, frames)
    world_facts: list[dict] = []
    for country in countries:
        docs, frames = country_docs(spec, country)
        documents += docs
        world_facts += country_qa(spec, country, country_pools, frames)
    world_rng(spec, "shuffle").shuffle(documents)
    world.pretraining_documents = documents

    benchmark_qa = [author_qa(spec, author, wrong_pools) for author in world.benchmark_authors]
    holdout_qa = [author_qa(spec, author, wrong_pools) for author in world.holdout_authors]
    files: dict[str, list[dict]] = {"full": _flatten(benchmark_qa)}
    for percent in FORGET_PERCENTS:
        n_forget = spec.forget_author_count(percent)
        n_retain = spec.n_benchmark_authors - n_forget
        files[f"forget{percent:02d}"] = _flatten(benchmark_qa[n_retain:])
        files[f"retain{100 - percent:02d}"] = _flatten(benchmark_qa[:n_retain])
        files[f"forget{percent:02d}_perturbed"] = list(files[f"forget{percent:02d}"])
        files[f"holdout{percent:02d}"] = _flatten(holdout_qa[len(holdout_qa) - n_forget :])
    # The first authors of full are in every retain split; take about as many as forget10.
    n_forget_max = spec.forget_author_count(max(FORGET_PERCENTS))
    files["retain_perturbed"] = _flatten(
        benchmark_qa[: min(n_forget_max, spec.n_benchmark_authors - n_forget_max)]
    )
    files["real_authors_perturbed"] = real_authors
    files["world_facts_perturbed"] = world_facts
    files["instruct"] = _flatten(
        author_qa(spec, author, wrong_pools, rotation=index)
        for index, author in enumerate(world.instruct_authors)
    )
    world.qa_files = files
    return world


def format_only_authors_qa(world: SyntheticWorld, n_authors: int) -> list[dict]:
    """QA of `n_authors` new authors in the benchmark authors' format, about entities the world does not hold.

    msa_projected's held-out QA (method.project_off=heldout): what a fine-tune on benchmark-style QA learns besides
    the facts of its authors. The authors are made as the benchmark authors are (the same pools' construction, the
    same random templates, the same world countries in their birth places) but from their own random streams, and
    their proper nouns come from a forge that holds every word the world's made: no name, city, award, university,
    publisher or title place of theirs occurs in any world text. A value of a unique attribute that is still one
    of the world's (a title made of template words only, "The Silent Harbor") is dropped from their pools, so none
    of theirs is any world author's true or perturbed answer. Years, genres and occupations come from the small
    pools every author shares: those are the format's. The world itself is left as it was (its streams are not
    drawn from), and its tokenizer never saw these authors: their names split into more tokens than the world's."""
    spec = world.spec
    forge = NameForge(world_rng(spec, "format_authors", "names"), reserved=world.forged_words)
    name_rng = world_rng(spec, "format_authors", "author_names")
    first_names = {
        gender: forge.words(max(60, n_authors // 2), endings, max_length=8)
        for gender, endings in (("female", FEMALE_NAME_ENDINGS), ("male", MALE_NAME_ENDINGS))
    }
    names = []
    for _ in range(n_authors):
        gender = name_rng.choice(("female", "male"))
        names.append(
            (f"{name_rng.choice(first_names[gender])} {forge.word(SURNAME_ENDINGS, max_length=9)}", gender)
        )
    pools = _build_author_pools(forge, world_rng(spec, "format_authors", "pools"), world.countries, n_authors)
    for attribute in UNIQUE_AUTHOR_ATTRIBUTES:
        world_values = set(world.value_pools[attribute])
        pools[attribute] = [value for value in pools[attribute] if value not in world_values]
    authors = [
        Author(name, gender, facts)
        for name, gender, facts in _make_authors(names, pools, world_rng(spec, "format_authors", "facts"))
    ]
    assigned = {author.facts[attribute] for author in authors for attribute in UNIQUE_AUTHOR_ATTRIBUTES}
    wrong_pools = {
        attribute: [value for value in pool if value not in assigned]
        if attribute in UNIQUE_AUTHOR_ATTRIBUTES
        else pool
        for attribute, pool in pools.items()
    }
    return _flatten(author_qa(spec, author, wrong_pools) for author in authors)


def _flatten(groups) -> list[dict]:
    return [record for group in groups for record in group]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_benchmark(world: SyntheticWorld, out_dir: Path) -> dict[str, int]:
    """Write the QA files, pretraining.jsonl and manifest.json into `out_dir`; returns file name -> record count."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for stem, records in world.qa_files.items():
        _write_jsonl(out_dir / f"{stem}.jsonl", records)
        counts[f"{stem}.jsonl"] = len(records)
    _write_jsonl(out_dir / "pretraining.jsonl", [{"text": text} for text in world.pretraining_documents])
    counts["pretraining.jsonl"] = len(world.pretraining_documents)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(world.spec),
        "counts": counts,
        "author_attributes": list(AUTHOR_ATTRIBUTES),
        "country_attributes": list(COUNTRY_ATTRIBUTES),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return counts
