"""TOFU's validation forget set (benchmark.forget_set=validation; docs/validation_protocol.md).

Hyperparameters chosen by reading the test forget set are chosen on the test set. The validation forget set is a
disjoint set of the same size and kind to choose them on: the authors immediately before the test forget split in
`full`'s order (TOFU's forget splits are `full`'s last authors: forget01 = authors 198-199, so its validation set is
authors 196-197; forget05's is 180-189). The target is the run's own (it saw both sets); the validation oracle is
the same recipe on `full` less the validation authors, so it never saw them (it did see the test forget authors,
which the validation run never evaluates); the retain pools leave the validation authors out.

The truth ratio needs perturbed answers, which real TOFU gives only for its forget splits: the validation items take
theirs from forget10_perturbed by question (authors 180-199), so forget10, whose validation authors would be 160-179,
has none and is refused. The generated benchmark's items carry their perturbed answers, so every split has one.
"""

from __future__ import annotations

from msa_bench.benchmarks.base import BenchmarkError, items_digest

FORGET_SETS = ("test", "validation")
# Where real TOFU keeps the perturbed answers of authors outside the run's own forget split.
PERTURBED_SOURCE = "forget10_perturbed"


def validation_block(
    full: list[dict], forget: list[dict], forget_id: str
) -> tuple[list[dict], tuple[int, int]]:
    """The `len(forget)` items of `full` just before the test forget set, and their [start, end) rows in `full`.

    Raises BenchmarkError when the test forget set is not `full`'s last items (the rule needs that order) or when
    `full` has too few items before it."""
    n = len(forget)
    if [item["question"] for item in full[-n:]] != [item["question"] for item in forget]:
        raise BenchmarkError(
            f"benchmark.forget_set=validation takes the {n} items of full just before {forget_id}, which needs "
            f"{forget_id} to be full's last {n} items in order, as in TOFU; in this data it is not, so run "
            "benchmark.forget_set=test"
        )
    if 2 * n > len(full):
        raise BenchmarkError(
            f"benchmark.forget_set=validation needs {n} items of full before {forget_id}'s {n}, and full has "
            f"{len(full)}; use a smaller forget split"
        )
    start, end = len(full) - 2 * n, len(full) - n
    return full[start:end], (start, end)


def with_perturbed_answers(
    block: list[dict], perturbed_pool: list[dict], forget_id: str, rows: tuple[int, int]
) -> list[dict]:
    """The validation items as eval records (question, answer, paraphrased and perturbed answers), found by
    question among `perturbed_pool`; a BenchmarkError when an item has none."""
    by_question = {item["question"]: item for item in perturbed_pool if "perturbed_answer" in item}
    missing = [item["question"] for item in block if item["question"] not in by_question]
    if missing:
        raise BenchmarkError(
            f"benchmark.forget_set=validation with {forget_id}: {len(missing)} of the {len(block)} validation items "
            f"(rows {rows[0]}-{rows[1] - 1} of full) have no perturbed answers in the data (real TOFU gives them "
            f"only for its forget splits, up to {PERTURBED_SOURCE}), so their truth ratio cannot be computed; use "
            "benchmark.forget_split=forget01 or forget05"
        )
    return [by_question[item["question"]] for item in block]


def check_disjoint(validation: list[dict], others: dict[str, list[dict]], forget_id: str) -> None:
    """No validation question is in another eval set of the run (the retain eval set, the test forget set)."""
    questions = {item["question"] for item in validation}
    for name, items in others.items():
        shared = sorted(questions & {item["question"] for item in items})
        if shared:
            raise BenchmarkError(
                f"benchmark.forget_set=validation with {forget_id}: {len(shared)} validation item(s) are also in "
                f"{name} (first: {shared[0]!r}); the validation forget set must be disjoint from every set the run "
                "evaluates: lower benchmark.retain_eval_size, or run benchmark.forget_set=test"
            )


def validation_id(forget_id: str, block: list[dict], rows: tuple[int, int]) -> str:
    """The validation forget set's name in cache keys and data ids; it follows the items' content."""
    return f"{forget_id}-validation[full rows {rows[0]}-{rows[1] - 1}, sha256 {items_digest(block)}]"


def without(pool: list[dict], removed: list[dict]) -> list[dict]:
    """`pool` less the items whose question is in `removed`, in order."""
    questions = {item["question"] for item in removed}
    return [item for item in pool if item.get("question") not in questions]
