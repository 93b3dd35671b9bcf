"""Which forget articles each MUSE forget eval item comes from, and so which deletion request evaluates it.

Sequential requests (benchmark.requests=K, docs/sequential_requests.md) cut MUSE's forget corpus into K contiguous
blocks of articles; after request k the forget metrics are read on request k's items and on those of requests
1..k-1. MUSE's eval items name no article, so each is traced back to the articles it comes from (its *sources*):

- **Passages** (verbmem {prompt, gt}, privleak {text}). MUSE cut them from the forget articles joined end to end, so
  one passage runs across 1 to 6 articles of MUSE-News, and its text differs from the corpus in the whitespace next to
  punctuation ("Last updated on.From" for "Last updated on .From"). A passage (verbmem: prompt then gt) is looked up
  in the corpus's articles joined with every whitespace character removed; its sources are the articles every
  occurrence of it overlaps (every copy of an article the corpus repeats).
- **Questions** (knowmem {question, answer}). The candidates are the articles that contain the answer (case,
  whitespace and the punctuation around the answer aside). They are ranked by the TF-IDF cosine of the question
  with the article (scikit-learn, fitted on the forget corpus). The sources are the best candidate and every
  candidate within RELATED_SHARE of its score (a copy of the article, a later report of the same story that states
  the same fact): each of them teaches the answer. A best candidate below SIMILARITY_FLOOR is a coincidental
  occurrence of the answer (a year, a percentage), and the question has no source. Nothing falls back to the
  articles that match the question best without holding its answer, nor to those holding the answer's words apart:
  on MUSE-News the questions whose answer no article holds are mostly about stories the forget corpus does not have
  (Westray, the Declaration of Arbroath, Galileo), and the answer's words apart pick wrong articles ("18.3%" finds
  an article saying "18.2%").

An item is in request k's evaluation when all its sources are articles of request k. Every other item is left out of
every request, and counted by reason: NO_SOURCE (no article holds it), DROPPED (a source is an article that
benchmark.max_documents drops) or SPANS_REQUESTS (its sources lie in more than one request: a passage across the
boundary between two requests, a fact stated in articles of two requests).
"""

from __future__ import annotations

import bisect
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from msa_bench.data.muse_eval_sets import KNOWMEM_FORGET, PRIVLEAK_FORGET, RECORD_FIELDS, VERBMEM_FORGET

# The forget eval sets whose items are read per request. The in-context examples (muse_knowmem_forget_icl) are
# not: they are part of every knowmem prompt, and the same prompt for every request keeps the requests comparable.
ATTRIBUTED_SETS: tuple[str, ...] = (VERBMEM_FORGET, KNOWMEM_FORGET, PRIVLEAK_FORGET)

# The lowest cosine of a question with an article holding its answer for that article to be a source. Measured on
# MUSE-News: an article that reports the question's story scores 0.1 to 0.5; an answer that is only a common number
# or date found in an unrelated article mostly scores below 0.05 (e.g. "20%" for a question on VAT, 0.016). Between
# 0.05 and 0.1 the two are mixed, and the floor leaves those questions out rather than risk a wrong request.
SIMILARITY_FLOOR = 0.1
# Candidates scoring at least this share of the best one are sources too (copies and reports of the same story).
RELATED_SHARE = 0.8

NO_SOURCE = "no_source"
DROPPED = "dropped_by_max_documents"
SPANS_REQUESTS = "spans_requests"


def item_key(eval_set: str, item: Mapping) -> tuple[str, ...]:
    """What identifies an item of `eval_set` (its record fields), whichever dict holds it."""
    return tuple(item[field_name] for field_name in RECORD_FIELDS[eval_set])


def _squeezed(text: str) -> str:
    return "".join(text.split())


def passage_sources(passages: Sequence[str], articles: Sequence[str]) -> list[frozenset[int]]:
    """For each passage, the positions of the articles that its occurrences in the joined corpus overlap."""
    squeezed = [_squeezed(article) for article in articles]
    starts = np.cumsum([0] + [len(text) for text in squeezed[:-1]]).tolist()
    corpus = "".join(squeezed)
    sources = []
    for passage in passages:
        needle = _squeezed(passage)
        found: set[int] = set()
        position = corpus.find(needle) if needle else -1
        while position >= 0:
            first = bisect.bisect_right(starts, position) - 1
            last = bisect.bisect_right(starts, position + len(needle) - 1) - 1
            found.update(range(first, last + 1))
            position = corpus.find(needle, position + 1)
        sources.append(frozenset(found))
    return sources


def _normalised(text: str) -> str:
    return " ".join(text.split()).lower()


class QuestionMatcher:
    """Ranks the forget articles for a knowmem question (module docstring)."""

    def __init__(self, articles: Sequence[str]):
        self.vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(articles)
        self.texts = [_normalised(article) for article in articles]

    def candidates(self, answer: str) -> list[int]:
        """The articles that contain `answer`, case and whitespace aside."""
        # Punctuation around an answer ("2005.", a quoted phrase) is the sentence's, not the answer's.
        needle = _normalised(answer).strip(string.punctuation + " ")
        return [i for i, text in enumerate(self.texts) if needle and needle in text]

    def sources(self, question: str, answer: str) -> frozenset[int]:
        candidates = self.candidates(answer)
        if not candidates:
            return frozenset()
        scores = (self.matrix[candidates] @ self.vectorizer.transform([question]).T).toarray().ravel()
        best = float(scores.max())
        if best < SIMILARITY_FLOOR:
            return frozenset()
        return frozenset(
            c for c, score in zip(candidates, scores, strict=True) if score >= RELATED_SHARE * best
        )


def eval_item_sources(
    eval_sets: Mapping[str, Sequence[Mapping]], articles: Sequence[str]
) -> dict[str, dict[tuple[str, ...], frozenset[int]]]:
    """The sources (article positions in `articles`, the whole forget corpus) of every item of the attributed sets
    present in `eval_sets`, by item key."""
    sources: dict[str, dict[tuple[str, ...], frozenset[int]]] = {}
    for name in ATTRIBUTED_SETS:
        items = eval_sets.get(name)
        if items is None:
            continue
        if name == KNOWMEM_FORGET:
            matcher = QuestionMatcher(articles)
            found = [matcher.sources(item["question"], item["answer"]) for item in items]
        else:
            texts = [
                item["text"] if name == PRIVLEAK_FORGET else item["prompt"] + item["gt"] for item in items
            ]
            found = passage_sources(texts, articles)
        sources[name] = {
            item_key(name, item): documents for item, documents in zip(items, found, strict=True)
        }
    return sources


@dataclass(frozen=True)
class RequestAttribution:
    """Each attributed item's request (by item key), and how many of each set no request holds, by reason."""

    request_of: dict[str, dict[tuple[str, ...], int]]
    left_out: dict[str, dict[str, int]]

    def counts(self, index: int) -> dict[str, int]:
        """How many items of each set request `index` holds."""
        return {name: sum(k == index for k in items.values()) for name, items in self.request_of.items()}


def attribute_to_requests(
    sources: Mapping[str, Mapping[tuple[str, ...], frozenset[int]]], request_of_article: Sequence[int]
) -> RequestAttribution:
    """Each item's request from its sources; `request_of_article[p]` is the request of article p, for the articles
    the run keeps (the first len(request_of_article) of the corpus; benchmark.max_documents drops the rest)."""
    request_of: dict[str, dict[tuple[str, ...], int]] = {}
    left_out: dict[str, dict[str, int]] = {}
    for name, items in sources.items():
        reasons: Counter[str] = Counter()
        request_of[name] = {}
        for key, documents in items.items():
            if not documents:
                reasons[NO_SOURCE] += 1
            elif max(documents) >= len(request_of_article):
                reasons[DROPPED] += 1
            elif len({request_of_article[p] for p in documents}) > 1:
                reasons[SPANS_REQUESTS] += 1
            else:
                request_of[name][key] = request_of_article[min(documents)]
        if reasons:
            left_out[name] = dict(sorted(reasons.items()))
    return RequestAttribution(request_of, left_out)
