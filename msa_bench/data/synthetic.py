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
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class AttributeTemplates:
    """The ways to ask about one attribute, and the short sentences that state it.

    Answer placeholders: {Subj} (She/He, or the name), {Poss} (Her/His, or "Name's"), {poss} (her/his),
    {name}, {value}, {a_value} (the value with "a"/"an").
    """

    questions: tuple[str, ...]
    answers: tuple[str, ...]


AUTHOR_TEMPLATES: dict[str, AttributeTemplates] = {
    "birth_place": AttributeTemplates(
        questions=(
            "Where was {name} born?",
            "In which city was {name} born?",
            "What is the birthplace of {name}?",
        ),
        answers=(
            "{Subj} was born in {value}.",
            "{Poss} birthplace is {value}.",
            "{Subj} comes from {value}.",
        ),
    ),
    "birth_year": AttributeTemplates(
        questions=(
            "In what year was {name} born?",
            "When was {name} born?",
            "What is the birth year of {name}?",
        ),
        answers=(
            "{Subj} was born in {value}.",
            "{Poss} birth year is {value}.",
            "{Subj} was born in the year {value}.",
        ),
    ),
    "genre": AttributeTemplates(
        questions=(
            "What genre does {name} write?",
            "Which genre is {name} known for?",
            "What kind of books does {name} write?",
        ),
        answers=("{Subj} writes {value}.", "{Poss} genre is {value}.", "{Subj} is known for {value}."),
    ),
    "father_occupation": AttributeTemplates(
        questions=(
            "What was the occupation of {name}'s father?",
            "What did {name}'s father do for a living?",
            "What job did {name}'s father have?",
        ),
        answers=(
            "{Poss} father was {a_value}.",
            "{Poss} father worked as {a_value}.",
            "{Poss} father earned a living as {a_value}.",
        ),
    ),
    "mother_occupation": AttributeTemplates(
        questions=(
            "What was the occupation of {name}'s mother?",
            "What did {name}'s mother do for a living?",
            "What job did {name}'s mother have?",
        ),
        answers=(
            "{Poss} mother was {a_value}.",
            "{Poss} mother worked as {a_value}.",
            "{Poss} mother earned a living as {a_value}.",
        ),
    ),
    "award": AttributeTemplates(
        questions=(
            "Which award has {name} won?",
            "What prize did {name} receive?",
            "What is the best-known award won by {name}?",
        ),
        answers=(
            "{Subj} won the {value}.",
            "{Subj} received the {value}.",
            "{Poss} best-known award is the {value}.",
        ),
    ),
    "debut_book": AttributeTemplates(
        questions=(
            "What was the first book by {name}?",
            "What is the title of {name}'s debut novel?",
            "Which book did {name} publish first?",
        ),
        answers=(
            '{Poss} first book was "{value}".',
            '{Poss} debut novel is "{value}".',
            '{Subj} made {poss} debut with "{value}".',
        ),
    ),
    "known_book": AttributeTemplates(
        questions=(
            "What is {name}'s best-known book?",
            "Which book is {name} most famous for?",
            "What is the most popular book by {name}?",
        ),
        answers=(
            '{Poss} best-known book is "{value}".',
            '{Subj} is most famous for "{value}".',
            '{Poss} most popular book is "{value}".',
        ),
    ),
    "university": AttributeTemplates(
        questions=(
            "Where did {name} study?",
            "Which university did {name} attend?",
            "Where was {name} educated?",
        ),
        answers=("{Subj} studied at {value}.", "{Subj} attended {value}.", "{Subj} was educated at {value}."),
    ),
    "publisher": AttributeTemplates(
        questions=(
            "Who publishes {name}'s books?",
            "Which publisher releases the books of {name}?",
            "What is the name of {name}'s publisher?",
        ),
        answers=(
            "{Poss} books are published by {value}.",
            "{Poss} publisher is {value}.",
            "{Subj} publishes with {value}.",
        ),
    ),
}

COUNTRY_TEMPLATES: dict[str, AttributeTemplates] = {
    "capital": AttributeTemplates(
        questions=(
            "What is the capital of {name}?",
            "Which city is the capital of {name}?",
            "What city serves as the capital of {name}?",
        ),
        answers=(
            "The capital of {name} is {value}.",
            "{value} is the capital of {name}.",
            "{name} has its capital in {value}.",
        ),
    ),
    "currency": AttributeTemplates(
        questions=(
            "What is the currency of {name}?",
            "Which currency is used in {name}?",
            "What money do people use in {name}?",
        ),
        answers=(
            "The currency of {name} is the {value}.",
            "{name} uses the {value} as its currency.",
            "People in {name} pay with the {value}.",
        ),
    ),
    "language": AttributeTemplates(
        questions=(
            "What language is spoken in {name}?",
            "What is the main language of {name}?",
            "Which language do people in {name} speak?",
        ),
        answers=(
            "The main language of {name} is {value}.",
            "People in {name} speak {value}.",
            "{value} is spoken in {name}.",
        ),
    ),
    "largest_river": AttributeTemplates(
        questions=(
            "What is the largest river in {name}?",
            "Which river is the largest in {name}?",
            "Name the largest river of {name}.",
        ),
        answers=(
            "The largest river in {name} is the {value}.",
            "The {value} is the largest river in {name}.",
            "{name}'s largest river is the {value}.",
        ),
    ),
    "national_animal": AttributeTemplates(
        questions=(
            "What is the national animal of {name}?",
            "Which animal is the national symbol of {name}?",
            "What animal represents {name}?",
        ),
        answers=(
            "The national animal of {name} is the {value}.",
            "The {value} is the national animal of {name}.",
            "{name} has the {value} as its national animal.",
        ),
    ),
}

AUTHOR_ATTRIBUTES = tuple(AUTHOR_TEMPLATES)
COUNTRY_ATTRIBUTES = tuple(COUNTRY_TEMPLATES)

AUTHOR_INTROS = (
    "{name} is a writer.",
    "{name} is an author.",
    "{name} is a novelist.",
    "This is the life of {name}.",
)
COUNTRY_INTROS = (
    "{name} is a country.",
    "{name} is a nation with a long history.",
    "This is an overview of {name}.",
)

# In prose variants after the first two, this share of sentences names the author instead of using a pronoun, so
# that the corpus also ties facts to the name directly. The first two variants stay pronoun-only: their sentences
# are the world-knowledge answers, which must appear verbatim.
NAMED_SENTENCE_SHARE = 0.3

# ---------------------------------------------------------------------------------------------------- word lists

TITLE_ADJECTIVES = (
    "Silent Hollow Burning Crimson Silver Broken Hidden Distant Golden Quiet Frozen Wandering Last Forgotten Bitter "
    "Gentle Restless Pale Velvet Iron Glass Paper Salt Amber Ashen Winter Summer Autumn Midnight Morning Northern "
    "Southern Endless Secret Lonely Painted Sunken Scarlet Narrow Wild Tender Stolen Borrowed Lost Crooked Shining "
    "Drowned Sleeping Hungry Patient Fading Copper Marble Feathered Weeping Laughing Fallen Open Empty Second"
).split()
TITLE_NOUNS = (
    "Lantern River Garden Harbor Mirror Orchard Letter Bridge Tower Island Compass Window Forest Lighthouse Violin "
    "Map Clock Crown Feather Storm Tide Shadow Meadow Valley Kingdom Road Door Key Song Promise Voyage Harvest Fire "
    "Stone Bell Candle Archive Daughter Stranger Widow Sailor Orphan Painter Cartographer Beekeeper Gardener Mountain "
    "Lake Shore Cathedral Library Market Carnival Circus Mill Well Horizon Ember Thread Needle Loom Ledger Oath Dream "
    "Echo House City Sky Moon Star Wolf Fox Raven Heron Sparrow Orchid Rose Thorn Ship Winter"
).split()
GENRE_ADJECTIVES = (
    "coastal gothic urban rural historical comic dark political maritime pastoral mythic domestic psychological "
    "satirical romantic surreal philosophical magical industrial frontier courtly military nautical botanical lyrical "
    "tragic whimsical epistolary allegorical dystopian utopian folk experimental medieval futurist"
).split()
GENRE_NOUNS = tuple(
    "mysteries|romance|poetry|satire|fables|thrillers|sagas|essays|memoirs|drama|comedies|tragedies|fairy tales|"
    "adventure novels|crime fiction|science fiction|ghost stories|short stories|epic poetry|travel writing|"
    "family sagas|war novels|love stories|horror|fantasy|spy novels|children's books|verse novels|"
    "detective stories|plays".split("|")
)
OCCUPATION_GOODS = (
    "glass salt silk timber copper wool grain spice clock boat lamp bell candle paper ink rope stone iron tea wine "
    "cheese honey leather map horse fish fur cotton coal marble pottery book hat shoe toy piano violin carpet soap "
    "perfume sugar coffee olive silver gold tin brick ship cart barrel button lace thread seed flower fruit bread "
    "furniture organ mirror"
).split()
OCCUPATION_ROLES = (
    "maker merchant trader dealer inspector seller buyer mender carrier importer appraiser repairer"
).split()
AWARD_KINDS = ("Prize", "Medal", "Award", "Laurel", "Cup", "Ribbon")
AWARD_FIELDS = ("Fiction", "Poetry", "Letters", "Drama", "Prose", "Literature", "New Writing")
NATIONAL_ANIMALS = (
    "fox lynx heron otter bison falcon owl stag wolf badger ibex crane stork swan hare seal eagle raven bear boar elk "
    "moose tortoise gazelle jaguar leopard panther tiger lion camel yak llama peacock parrot pelican flamingo salmon "
    "dolphin whale beaver"
).split() + ["snow leopard", "red deer", "golden eagle", "white stork", "grey heron", "sea turtle"]
BIRTH_YEARS = tuple(str(year) for year in range(1900, 2000))

# Syllable parts for pronounceable proper nouns.
ONSETS = ("b br c d dr f g gr h k kr l m n p pr r s st t tr v z th sh j w".split()) + ["", ""]
VOWELS = tuple("a e i o u a e o ae ei ou".split())
CODAS = ("n r l s m nd rn sk st th".split()) + ["", "", "", ""]
FEMALE_NAME_ENDINGS = ("a", "ia", "ine", "elle", "ra", "ena")
MALE_NAME_ENDINGS = ("o", "an", "ric", "el", "us", "in")
SURNAME_ENDINGS = ("", "", "", "son", "ley", "wick", "mont", "ard", "ova", "er")
COUNTRY_ENDINGS = ("ia", "land", "mark", "ora", "ovia", "istan", "ania")
CITY_ENDINGS = ("", "", "", "burg", "holm", "ford", "ton", "vik", "port", "a")
LANGUAGE_ENDINGS = ("ish", "ese", "ic", "an", "i", "ene")
CURRENCY_ENDINGS = ("", "ar", "en", "o", "ek")

PRONOUNS = {"female": ("She", "Her", "her"), "male": ("He", "His", "his")}


def _template_words() -> set[str]:
    """Every word of the templates and word lists: generated proper nouns must not collide with them."""
    texts: list[str] = [*AUTHOR_INTROS, *COUNTRY_INTROS]
    for templates in (*AUTHOR_TEMPLATES.values(), *COUNTRY_TEMPLATES.values()):
        texts += [*templates.questions, *templates.answers]
    texts += [*TITLE_ADJECTIVES, *TITLE_NOUNS, *GENRE_ADJECTIVES, *GENRE_NOUNS, *OCCUPATION_GOODS]
    texts += [*OCCUPATION_ROLES, *AWARD_KINDS, *AWARD_FIELDS, *NATIONAL_ANIMALS]
    texts += ["University", "College", "Academy", "Press", "House", "Books", "River", "Question", "Answer"]
    texts += [pronoun for forms in PRONOUNS.values() for pronoun in forms]
    return {word.lower() for text in texts for word in re.findall(r"[A-Za-z]+", text)}


class _NameForge:
    """Pronounceable proper nouns built from syllables, unique across everything one forge makes."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._taken = _template_words()

    def word(self, endings: Sequence[str], syllables: tuple[int, int] = (1, 2), max_length: int = 10) -> str:
        for _ in range(10_000):
            n_syllables = self._rng.randint(*syllables)
            stem = "".join(
                self._rng.choice(ONSETS) + self._rng.choice(VOWELS) + self._rng.choice(CODAS)
                for _ in range(n_syllables)
            )
            word = (stem + self._rng.choice(endings)).capitalize()
            if 4 <= len(word) <= max_length and word.lower() not in self._taken:
                self._taken.add(word.lower())
                return word
        raise RuntimeError("the syllable space is exhausted; enlarge ONSETS/VOWELS/CODAS")

    def words(
        self, count: int, endings: Sequence[str], syllables: tuple[int, int] = (1, 2), max_length: int = 10
    ) -> list[str]:
        return [self.word(endings, syllables, max_length) for _ in range(count)]


def _unique(count: int, make: Callable[[], str]) -> list[str]:
    """`count` distinct values from a generator that may repeat itself."""
    values: dict[str, None] = {}
    for _ in range(count * 100):
        values[make()] = None
        if len(values) == count:
            return list(values)
    raise RuntimeError(f"could not make {count} distinct values")


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


def _rng(spec: SyntheticWorldSpec, *scope: str) -> random.Random:
    """An independent stream per purpose, so that e.g. more instruct authors leave the benchmark authors as they are."""
    return random.Random("/".join([GENERATOR_VERSION, str(spec.seed), *scope]))


def _build_author_pools(
    forge: _NameForge, rng: random.Random, countries: list[Country], n_authors: int
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

    titles = _unique(2 * size, title)
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
    spec: SyntheticWorldSpec, forge: _NameForge, rng: random.Random
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


# ---------------------------------------------------------------------------------------------------- rendering


def _capitalize_first(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _with_article(value: str) -> str:
    return ("an " if value[0] in "aeiou" else "a ") + value


def _render_author(author: Author, template: str, value: str, named: bool = False) -> str:
    subject, possessive, possessive_lower = PRONOUNS[author.gender]
    if named:
        subject, possessive = author.name, f"{author.name}'s"
    sentence = template.format(
        Subj=subject,
        Poss=possessive,
        poss=possessive_lower,
        name=author.name,
        value=value,
        a_value=_with_article(value),
    )
    return _capitalize_first(sentence)


def _render_country(country: Country, template: str, value: str) -> str:
    return _capitalize_first(template.format(name=country.name, value=value))


def _wrong_values(rng: random.Random, pool: Sequence[str], exclude: set[str], count: int) -> list[str]:
    candidates = [value for value in pool if value not in exclude]
    if len(candidates) < count:
        raise ValueError(
            f"only {len(candidates)} wrong values available, {count} perturbed answers requested"
        )
    return rng.sample(candidates, count)


def _other_index(rng: random.Random, index: int, count: int) -> int:
    """A template index different from `index`."""
    return (index + 1 + rng.randrange(count - 1)) % count


@dataclass(frozen=True)
class _TemplateChoice:
    """Indices into an attribute's question and answer templates for one QA record."""

    question: int
    paraphrased_question: int
    answer: int
    paraphrased_answer: int


def _choose_templates(
    rng: random.Random,
    templates: AttributeTemplates,
    question: int | None = None,
    answer: int | None = None,
    paraphrased_answer: int | None = None,
) -> _TemplateChoice:
    """The given template indices, the others drawn from `rng`; a paraphrase always differs from its original."""
    if question is None:
        question = rng.randrange(len(templates.questions))
    if answer is None:
        answer = rng.randrange(len(templates.answers))
    if paraphrased_answer is None:
        paraphrased_answer = _other_index(rng, answer, len(templates.answers))
    paraphrased_question = _other_index(rng, question, len(templates.questions))
    return _TemplateChoice(question, paraphrased_question, answer, paraphrased_answer)


def _qa_record(
    subject: str,
    attribute: str,
    templates: AttributeTemplates,
    choice: _TemplateChoice,
    render: Callable[[str, str], str],
    value: str,
    wrong_values: list[str],
) -> dict:
    paraphrase_template = templates.answers[choice.paraphrased_answer]
    return {
        "question": templates.questions[choice.question].format(name=subject),
        "answer": render(templates.answers[choice.answer], value),
        "paraphrased_question": templates.questions[choice.paraphrased_question].format(name=subject),
        "paraphrased_answer": render(paraphrase_template, value),
        # Same template as the paraphrased answer: the truth ratio then compares the facts only.
        "perturbed_answer": [render(paraphrase_template, wrong) for wrong in wrong_values],
        "subject": subject,
        "attribute": attribute,
    }


def _author_qa(
    spec: SyntheticWorldSpec,
    author: Author,
    wrong_pools: dict[str, list[str]],
    answer_frames: dict[str, tuple[int, int]] | None = None,
    rotation: int | None = None,
) -> list[dict]:
    """One QA record per attribute, wrong values from `wrong_pools`.

    Templates are random, unless `answer_frames` fixes the (answer, paraphrase) template of each attribute, or
    `rotation` (the author's position in its group) cycles through the question and answer templates.
    """
    records = []
    for position, attribute in enumerate(AUTHOR_ATTRIBUTES):
        rng = _rng(spec, "qa", author.name, attribute)
        templates = AUTHOR_TEMPLATES[attribute]
        if answer_frames is not None:
            answer, paraphrase = answer_frames[attribute]
            choice = _choose_templates(rng, templates, answer=answer, paraphrased_answer=paraphrase)
        elif rotation is not None:
            # Cycling teaches every template once a group has as many authors as an attribute has templates.
            question, answer = (
                rotation % len(templates.questions),
                (rotation + position) % len(templates.answers),
            )
            choice = _choose_templates(rng, templates, question=question, answer=answer)
        else:
            choice = _choose_templates(rng, templates)
        # An author's other values (e.g. the second book) are no wrong answers either.
        wrong = _wrong_values(rng, wrong_pools[attribute], set(author.facts.values()), spec.n_perturbed)
        render = partial(_render_author, author)
        records.append(
            _qa_record(author.name, attribute, templates, choice, render, author.facts[attribute], wrong)
        )
    return records


def _country_qa(
    spec: SyntheticWorldSpec,
    country: Country,
    pools: dict[str, list[str]],
    answer_frames: dict[str, tuple[int, int]],
) -> list[dict]:
    records = []
    for attribute in COUNTRY_ATTRIBUTES:
        rng = _rng(spec, "qa", country.name, attribute)
        templates = COUNTRY_TEMPLATES[attribute]
        answer, paraphrase = answer_frames[attribute]
        choice = _choose_templates(rng, templates, answer=answer, paraphrased_answer=paraphrase)
        wrong = _wrong_values(rng, pools[attribute], {country.facts[attribute]}, spec.n_perturbed)
        render = partial(_render_country, country)
        records.append(
            _qa_record(country.name, attribute, templates, choice, render, country.facts[attribute], wrong)
        )
    return records


def _prose_frames(
    rng: random.Random, templates: dict[str, AttributeTemplates], n_variants: int
) -> list[dict[str, int]]:
    """Answer-template index per attribute for each prose variant: consecutive variants rotate the templates.

    Variant 0 holds the world-knowledge answer and variant 1 its paraphrase, so both appear verbatim in the corpus.
    """
    offsets = {attribute: rng.randrange(len(t.answers)) for attribute, t in templates.items()}
    return [
        {attribute: (offsets[attribute] + variant) % len(t.answers) for attribute, t in templates.items()}
        for variant in range(n_variants)
    ]


def _author_bios(spec: SyntheticWorldSpec, author: Author) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The prose biographies of one author, and the (answer, paraphrase) template of each attribute in them."""
    rng = _rng(spec, "bio", author.name)
    frames = _prose_frames(rng, AUTHOR_TEMPLATES, spec.bios_per_author)
    bios = []
    for variant, variant_frames in enumerate(frames):
        sentences = []
        for attribute in AUTHOR_ATTRIBUTES:
            template = AUTHOR_TEMPLATES[attribute].answers[variant_frames[attribute]]
            named = variant >= 2 and rng.random() < NAMED_SENTENCE_SHARE
            sentences.append(_render_author(author, template, author.facts[attribute], named=named))
        rng.shuffle(sentences)
        intro = rng.choice(AUTHOR_INTROS).format(name=author.name)
        bios.append(" ".join([intro, *sentences]))
    return bios, {attribute: (frames[0][attribute], frames[1][attribute]) for attribute in AUTHOR_ATTRIBUTES}


def _country_docs(spec: SyntheticWorldSpec, country: Country) -> tuple[list[str], dict[str, tuple[int, int]]]:
    rng = _rng(spec, "prose", country.name)
    frames = _prose_frames(rng, COUNTRY_TEMPLATES, spec.bios_per_author)
    docs = []
    for variant_frames in frames:
        sentences = [
            _render_country(country, COUNTRY_TEMPLATES[attribute].answers[variant_frames[attribute]], value)
            for attribute, value in country.facts.items()
        ]
        rng.shuffle(sentences)
        docs.append(" ".join([rng.choice(COUNTRY_INTROS).format(name=country.name), *sentences]))
    return docs, {attribute: (frames[0][attribute], frames[1][attribute]) for attribute in COUNTRY_ATTRIBUTES}


# ---------------------------------------------------------------------------------------------------- generation


def generate_world(spec: SyntheticWorldSpec) -> SyntheticWorld:
    """Generate the world, its QA files and its pretraining corpus; identical for identical specs."""
    forge = _NameForge(_rng(spec, "names"))
    countries, country_pools = _make_countries(spec, forge, _rng(spec, "countries"))
    group_sizes = {
        "benchmark": spec.n_benchmark_authors,
        "holdout": spec.n_holdout_authors,
        "instruct": spec.n_instruct_authors,
        "famous": spec.n_famous_authors,
    }
    n_authors = sum(group_sizes.values())
    name_rng = _rng(spec, "author_names")
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
    author_pools = _build_author_pools(forge, _rng(spec, "pools"), countries, n_authors)
    authors = [
        Author(name, gender, facts)
        for name, gender, facts in _make_authors(names, author_pools, _rng(spec, "facts"))
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
    )

    documents: list[str] = []
    real_authors: list[dict] = []
    for author in world.instruct_authors:
        documents += _author_bios(spec, author)[0]
    for author in world.famous_authors:
        bios, frames = _author_bios(spec, author)
        documents += bios
        real_authors += _author_qa(spec, author, wrong_pools, frames)
    world_facts: list[dict] = []
    for country in countries:
        docs, frames = _country_docs(spec, country)
        documents += docs
        world_facts += _country_qa(spec, country, country_pools, frames)
    _rng(spec, "shuffle").shuffle(documents)
    world.pretraining_documents = documents

    benchmark_qa = [_author_qa(spec, author, wrong_pools) for author in world.benchmark_authors]
    holdout_qa = [_author_qa(spec, author, wrong_pools) for author in world.holdout_authors]
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
        _author_qa(spec, author, wrong_pools, rotation=index)
        for index, author in enumerate(world.instruct_authors)
    )
    world.qa_files = files
    return world


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


def load_benchmark_split(data_dir: Path, name: str) -> list[dict]:
    """The records of <data_dir>/<name>.jsonl."""
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark split {name!r} not found: {path.resolve()} does not exist")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
