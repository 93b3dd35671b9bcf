"""Per-item scores of the membership-inference attacks, and the one dispatch from an attack's name to its score.

Every score is loss-like: higher means "looks less like training data". `privacy.mia_auc(forget, holdout)` then gives
an AUC near 1 for a model that memorised the forget set and near 0.5 for one that never saw it (open-unlearning's
convention: forget labelled 0, holdout labelled 1).

Which target tokens an attack reads is the suite's choice, given as `drop_eos`. On TOFU's answers (open-unlearning's
TOFU suite), loss and zlib use the mean NLL over every labelled token (the answer and the closing eos, i.e. TOFU's
answer NLL), while min-k%, min-k%++ and gradient norm read the answer tokens without the eos (`drop_eos=True`).
MUSE's texts end without an eos, so there every attack reads every token (`drop_eos=False`).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from msa_bench.data.batching import IGNORE_INDEX
from msa_bench.data.formatting import encode_qa
from msa_bench.metrics.core.batches import model_device
from msa_bench.metrics.core.scoring import AnswerTokenStatistics, without_eos

# The attacks computed from one model's token statistics (mia_reference needs a second model's).
TOKEN_ATTACKS: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus")
# ... and the one that needs per-item gradients.
ATTACKS: tuple[str, ...] = (*TOKEN_ATTACKS, "gradnorm")

# Floor on the vocabulary log-prob variance before dividing by its square root (open-unlearning's value): a
# near-deterministic position would otherwise divide by zero.
MIN_VOCAB_VARIANCE = 1e-6


def _tokens(per_token: np.ndarray, drop_eos: bool) -> np.ndarray:
    return without_eos(per_token) if drop_eos else per_token


def loss_scores(statistics: AnswerTokenStatistics) -> np.ndarray:
    """Mean NLL over every target token (an answer's eos included) per item."""
    return statistics.answer_nlls()


def zlib_compressed_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def zlib_scores(statistics: AnswerTokenStatistics, texts: Sequence[str]) -> np.ndarray:
    """Mean NLL divided by the zlib-compressed byte length of the scored text, as given. For a TOFU answer that is
    the answer as written, stripped: what open-unlearning gets by decoding the labelled tokens without special
    tokens; for a MUSE text, the decoded target tokens."""
    if len(texts) != len(statistics):
        raise ValueError(f"{len(statistics)} items scored but {len(texts)} texts given")
    lengths = np.array([zlib_compressed_length(text) for text in texts], dtype=np.float64)
    return loss_scores(statistics) / lengths


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k (the share of lowest-scoring tokens) must be in (0, 1], got {k}")


def lowest_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest share k of `values` (at least one of them)."""
    _check_k(k)
    n_lowest = max(1, int(len(values) * k))
    return float(np.sort(values)[:n_lowest].mean())


def min_k_scores(statistics: AnswerTokenStatistics, k: float, drop_eos: bool = True) -> np.ndarray:
    """-(mean of the lowest k share of token log-probs) per item: high when some tokens were surprising."""
    _check_k(k)
    return np.array(
        [-lowest_k_mean(_tokens(log_probs, drop_eos), k) for log_probs in statistics.label_log_probs],
        dtype=np.float64,
    )


def standardised_log_probs(statistics: AnswerTokenStatistics) -> list[np.ndarray]:
    """Per item, each token's log-prob standardised by the mean and std of the vocabulary log-probs there."""
    if statistics.vocab_log_prob_means is None or statistics.vocab_log_prob_variances is None:
        raise ValueError("min-k%++ needs token statistics computed with_vocab_moments=True")
    return [
        (log_probs - means) / np.sqrt(np.maximum(variances, MIN_VOCAB_VARIANCE))
        for log_probs, means, variances in zip(
            statistics.label_log_probs,
            statistics.vocab_log_prob_means,
            statistics.vocab_log_prob_variances,
            strict=True,
        )
    ]


def min_k_plus_plus_scores(statistics: AnswerTokenStatistics, k: float, drop_eos: bool = True) -> np.ndarray:
    """min-k% on standardised token log-probs, negated like min-k%."""
    _check_k(k)
    return np.array(
        [-lowest_k_mean(_tokens(scores, drop_eos), k) for scores in standardised_log_probs(statistics)],
        dtype=np.float64,
    )


def attack_scores(
    attack: str,
    statistics: AnswerTokenStatistics | None,
    k: float,
    *,
    texts: Sequence[str],
    drop_eos: bool,
    gradient_norms: np.ndarray | None = None,
) -> np.ndarray:
    """Per-item scores of one attack. `texts` are the scored texts (zlib reads them); `gradient_norms` are the
    per-item gradient norms, for "gradnorm" (see `gradnorm_scores`)."""
    if attack == "loss":
        return loss_scores(statistics)
    if attack == "zlib":
        return zlib_scores(statistics, texts)
    if attack == "min_k":
        return min_k_scores(statistics, k, drop_eos)
    if attack == "min_k_plus_plus":
        return min_k_plus_plus_scores(statistics, k, drop_eos)
    if attack == "gradnorm":
        if gradient_norms is None:
            raise ValueError("the gradnorm attack needs per-item gradient norms")
        return gradient_norms
    raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")


@contextlib.contextmanager
def _gradients_enabled(model: torch.nn.Module) -> Iterator[list[torch.nn.Parameter]]:
    """Eval mode (no dropout) with autograd on and every parameter requiring grad; the caller's state comes back."""
    was_training = model.training
    parameters = list(model.parameters())
    required = [parameter.requires_grad for parameter in parameters]
    model.eval()
    try:
        with torch.enable_grad():
            for parameter in parameters:
                parameter.requires_grad_(True)
            yield parameters
    finally:
        for parameter, flag in zip(parameters, required, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)


def gradnorm_scores(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    p: float = 2.0,
    on_item: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Per item, the mean over parameter tensors of the p-norm of that tensor's gradient of the answer loss.

    One item at a time (per-sample gradients). The loss is the mean NLL of the answer tokens without the eos, and the
    norm is averaged over parameter tensors rather than taken over all parameters at once, as in open-unlearning.
    Gradients come from `torch.autograd.grad`, so the parameters' `.grad` (e.g. accumulated by a trainer) is untouched.
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if p not in (1, 2, float("inf")):
        raise ValueError(f"p must be 1, 2 or inf, got {p}")
    device = model_device(model)
    scores = np.zeros(len(questions), dtype=np.float64)
    with _gradients_enabled(model) as parameters:
        for index, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            encoded = encode_qa(tokenizer, question, answer)
            if encoded.n_answer_tokens < 2:
                raise ValueError(f"answer {index} has no token besides the closing eos")
            input_ids = torch.tensor([encoded.input_ids], device=device)
            labels = torch.tensor(encoded.labels[1:], device=device)
            logits = model(input_ids=input_ids).logits[0, :-1, :].float()
            # Every labelled position but the last, which predicts the eos.
            answer_positions = torch.nonzero(labels != IGNORE_INDEX).squeeze(1)[:-1]
            log_probs = torch.log_softmax(logits[answer_positions], dim=-1)
            loss = -log_probs.gather(1, labels[answer_positions].unsqueeze(1)).mean()
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
            norms = [gradient.float().norm(p=p) for gradient in gradients if gradient is not None]
            scores[index] = float(torch.stack(norms).mean())
            if on_item is not None:
                on_item(1)
    return scores
