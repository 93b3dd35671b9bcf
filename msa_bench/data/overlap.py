"""Does one text share a passage with another? The test behind "relearning data are disjoint from the evaluated items".

An evaluated passage (a verbmem prompt or continuation, a privleak text) may start mid-article, run across two
articles, or differ from the raw corpus in whitespace, so a prefix test misses it. Texts are compared by their
12-word shingles instead: a relearned text overlaps an evaluated passage when they share any run of SHINGLE_WORDS
words.

News corpora repeat boilerplate ("This video can not be played. To play this video you need to enable JavaScript in
your browser." is in 210 of MUSE-News's 889 forget articles). A shingle found in at least BOILERPLATE_SHARE of a
corpus's texts (and in at least BOILERPLATE_MIN of them) is boilerplate and does not count as shared content.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

SHINGLE_WORDS = 12
BOILERPLATE_SHARE = 0.02
BOILERPLATE_MIN = 3


def shingles(text: str) -> set[tuple[str, ...]]:
    """Every run of SHINGLE_WORDS consecutive words of `text` (the whole text when it is shorter)."""
    words = text.split()
    if len(words) <= SHINGLE_WORDS:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def boilerplate(texts: Sequence[str]) -> frozenset[tuple[str, ...]]:
    """The shingles that recur across `texts`: in at least BOILERPLATE_SHARE of them, and at least BOILERPLATE_MIN."""
    counts = collections.Counter(shingle for text in texts for shingle in shingles(text))
    threshold = max(BOILERPLATE_MIN, BOILERPLATE_SHARE * len(texts))
    return frozenset(shingle for shingle, count in counts.items() if count >= threshold)


def content_shingles(texts: Iterable[str], ignored: frozenset[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """The shingles of all `texts`, boilerplate (`ignored`) left out."""
    return {shingle for text in texts for shingle in shingles(text)} - ignored


def shares_content(text: str, evaluated: set[tuple[str, ...]], ignored: frozenset[tuple[str, ...]]) -> bool:
    """Whether `text` shares a non-boilerplate shingle with the `evaluated` ones."""
    return any(shingle in evaluated for shingle in shingles(text) if shingle not in ignored)


def collapsed(text: str) -> str:
    """`text` with every run of whitespace made one space, stripped (for substring tests of short texts)."""
    return " ".join(text.split())
