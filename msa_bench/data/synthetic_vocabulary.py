"""The words of the synthetic world: question and answer templates per attribute, the word lists values are built
from, and the syllable forge that makes pronounceable proper nouns (see msa_bench/data/synthetic.py)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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


class NameForge:
    """Pronounceable proper nouns built from syllables, unique across everything one forge makes."""

    def __init__(self, rng: random.Random, reserved: Iterable[str] = ()) -> None:
        # `reserved`: words another forge made (the world's), which this one must not make again.
        self.world_rng = rng
        self._taken = _template_words() | {word.lower() for word in reserved}

    @property
    def taken(self) -> frozenset[str]:
        """Every word this forge must not make (lowercase): the templates' and word lists', and all it made."""
        return frozenset(self._taken)

    def word(self, endings: Sequence[str], syllables: tuple[int, int] = (1, 2), max_length: int = 10) -> str:
        for _ in range(10_000):
            n_syllables = self.world_rng.randint(*syllables)
            stem = "".join(
                self.world_rng.choice(ONSETS) + self.world_rng.choice(VOWELS) + self.world_rng.choice(CODAS)
                for _ in range(n_syllables)
            )
            word = (stem + self.world_rng.choice(endings)).capitalize()
            if 4 <= len(word) <= max_length and word.lower() not in self._taken:
                self._taken.add(word.lower())
                return word
        raise RuntimeError("the syllable space is exhausted; enlarge ONSETS/VOWELS/CODAS")

    def words(
        self, count: int, endings: Sequence[str], syllables: tuple[int, int] = (1, 2), max_length: int = 10
    ) -> list[str]:
        return [self.word(endings, syllables, max_length) for _ in range(count)]


def unique_values(count: int, make: Callable[[], str]) -> list[str]:
    """`count` distinct values from a generator that may repeat itself."""
    values: dict[str, None] = {}
    for _ in range(count * 100):
        values[make()] = None
        if len(values) == count:
            return list(values)
    raise RuntimeError(f"could not make {count} distinct values")
