"""MUSE's validation forget set (benchmark.forget_set=validation; docs/validation_protocol.md).

TOFU's validation set is a block of authors the target learnt and the test forget set does not hold. MUSE's is the
same idea on its corpora: the last `benchmark.validation_documents` texts of the retain corpus. The target learnt
them (it is the test runs' own target); the validation oracle is the target's recipe on the forget corpus and the
retain corpus less the block, so it never saw them; the retain pool and the retain terms leave the block out.

MUSE's eval sets are cut from its forget corpus, so the block gets eval sets of the same kinds, made from its own
texts:

- verbmem: each block text's first words as the prompt and the words after them as the continuation, as many as
  the median prompt and continuation of the test verbmem set (a text too short for both is left out);
- privleak members: the block texts (the non-members stay MUSE's holdout texts);
- knowmem: the retain QA whose answers the block teaches, found as the forget QA are found for sequential requests
  (msa_bench/data/muse_attribution.py: the texts that hold the answer and match the question), among the retain
  and forget corpora. A question the block and another text (a retain text or a forget article) both teach is in
  neither knowmem set: the validation oracle learnt the other text, so unlearning the block cannot remove it. The
  retain knowmem set keeps the questions the block does not teach.

The block is smaller than MUSE's forget corpus wherever the retain corpus is (cpu/muse_news: 50 of 100 retain texts
against 888 forget articles), so an epoch on it is fewer optimizer steps than an epoch on the test forget set:
docs/validation_protocol.md ("What does not carry over from TOFU") says how that bears on the baselines' training
length.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from msa_bench.benchmarks.base import BenchmarkError, items_digest
from msa_bench.data.muse import PRIVLEAK_HOLDOUT
from msa_bench.data.muse_attribution import QuestionMatcher


def validation_block(retain: list[dict], forget_documents: int, size: int | None) -> tuple[list[dict], int]:
    """The last `size` texts of the retain corpus (None: as many as the forget corpus has) and the first one's
    position; a BenchmarkError when the retain corpus cannot give them and keep one text to retain."""
    wanted = forget_documents if size is None else size
    if wanted < 1:
        raise BenchmarkError(
            f"benchmark.validation_documents={size} must be at least 1 (null: as many as the forget corpus's "
            f"{forget_documents} documents)"
        )
    if wanted >= len(retain):
        named = (
            f"benchmark.validation_documents={size}"
            if size is not None
            else (
                f"benchmark.validation_documents=null (as many as the forget corpus's {forget_documents} documents)"
            )
        )
        raise BenchmarkError(
            f"benchmark.forget_set=validation takes its forget set from the retain corpus, which has {len(retain)} "
            f"texts: {named} would leave none to retain; set benchmark.validation_documents below {len(retain)}"
        )
    start = len(retain) - wanted
    return retain[start:], start


def verbmem_items(block: Sequence[str], test_verbmem: Sequence[Mapping]) -> list[dict]:
    """{prompt, gt} from each block text's beginning, of the test verbmem set's median lengths in words."""
    if not test_verbmem:
        raise BenchmarkError(
            "benchmark.forget_set=validation sizes its verbmem items after MUSE's, and the verbmem forget set is "
            "empty; check verbmem/forget.json in benchmark.data_dir"
        )
    prompt_words = round(statistics.median(len(item["prompt"].split()) for item in test_verbmem))
    gt_words = max(1, round(statistics.median(len(item["gt"].split()) for item in test_verbmem)))
    items = []
    for text in block:
        words = text.split()
        if len(words) >= prompt_words + gt_words:
            items.append(
                {
                    "prompt": " ".join(words[:prompt_words]),
                    "gt": " ".join(words[prompt_words : prompt_words + gt_words]),
                }
            )
    return items


def split_retain_qa(
    retain_qa: Sequence[Mapping],
    retain_texts: Sequence[str],
    block_start: int,
    forget_texts: Sequence[str] = (),
) -> tuple[list[dict], list[dict]]:
    """The retain QA the block alone teaches (the validation knowmem set) and those it does not teach at all (the
    retain knowmem set), by the texts each question's answer comes from, among the retain corpus and the forget
    corpus: a question a forget article also teaches stays known to the validation oracle, which trained on the
    forget corpus, so it is no validation forget question."""
    matcher = QuestionMatcher([*retain_texts, *forget_texts])
    block = range(block_start, len(retain_texts))
    taught, kept = [], []
    for item in retain_qa:
        sources = matcher.sources(item["question"], item["answer"])
        in_block = {position in block for position in sources}
        if in_block == {True}:
            taught.append(dict(item))
        elif True not in in_block:
            kept.append(dict(item))
    return taught, kept


def check_disjoint(block: Sequence[str], forget: Sequence[str], holdout: Sequence[str]) -> None:
    """No block text is also a forget article or a privleak non-member."""
    texts = set(block)
    for name, others in (
        ("an article of the forget corpus", forget),
        (f"a non-member text of {PRIVLEAK_HOLDOUT}", holdout),
    ):
        shared = texts & set(others)
        if shared:
            raise BenchmarkError(
                f"benchmark.forget_set=validation: {len(shared)} validation text(s) of the retain corpus are also "
                f"{name} (first begins {next(iter(shared))[:60]!r}); the validation forget set must be disjoint "
                "from the test forget set and from the non-members: fix the retain corpus, or run "
                "benchmark.forget_set=test"
            )


def validation_id(retain_corpus: str, block: list[dict], start: int) -> str:
    """The validation forget set's name in cache keys and data ids; it follows the texts' content."""
    end = start + len(block) - 1
    return f"forget-validation[{retain_corpus} texts {start}-{end}, sha256 {items_digest(block)}]"


def required_nonempty(eval_sets: Mapping[str, list], required: set[str], validation_id_: str) -> None:
    """A validation eval set a metric reads that came out empty is an error naming the knob."""
    for name in sorted(required):
        if name in eval_sets and not eval_sets[name]:
            what = "retain QA the block teaches" if name.startswith("muse_knowmem") else "texts long enough"
            raise BenchmarkError(
                f"benchmark.forget_set=validation: the validation set {validation_id_} gives {name} no items (no "
                f"{what}); raise benchmark.validation_documents, or drop the metrics that read {name}"
            )
