"""The text of the synthetic world: QA records with paraphrases and perturbed answers, and prose biographies and
country documents, rendered from the templates of msa_bench/data/synthetic_vocabulary.py."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from msa_bench.data.synthetic_vocabulary import (
    AUTHOR_ATTRIBUTES,
    AUTHOR_INTROS,
    AUTHOR_TEMPLATES,
    COUNTRY_ATTRIBUTES,
    COUNTRY_INTROS,
    COUNTRY_TEMPLATES,
    NAMED_SENTENCE_SHARE,
    PRONOUNS,
    AttributeTemplates,
)
from msa_bench.data.synthetic_world import Author, Country, SyntheticWorldSpec, world_rng

# ---------------------------------------------------------------------------------------------------- rendering


def capitalize_first(sentence: str) -> str:
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
    return capitalize_first(sentence)


def _render_country(country: Country, template: str, value: str) -> str:
    return capitalize_first(template.format(name=country.name, value=value))


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


def author_qa(
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
        rng = world_rng(spec, "qa", author.name, attribute)
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


def country_qa(
    spec: SyntheticWorldSpec,
    country: Country,
    pools: dict[str, list[str]],
    answer_frames: dict[str, tuple[int, int]],
) -> list[dict]:
    records = []
    for attribute in COUNTRY_ATTRIBUTES:
        rng = world_rng(spec, "qa", country.name, attribute)
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


def author_bios(spec: SyntheticWorldSpec, author: Author) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The prose biographies of one author, and the (answer, paraphrase) template of each attribute in them."""
    rng = world_rng(spec, "bio", author.name)
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


def country_docs(spec: SyntheticWorldSpec, country: Country) -> tuple[list[str], dict[str, tuple[int, int]]]:
    rng = world_rng(spec, "prose", country.name)
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
