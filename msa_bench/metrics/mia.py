"""Per-item scores of the membership-inference attacks of open-unlearning's TOFU suite.

The attacked text is the question prompt plus the answer, tokenized with `encode_qa`; only the answer tokens are
scored. Every score here is loss-like: higher means "looks less like training data". `privacy.mia_auc(forget,
holdout)` then gives an AUC near 1 for a model that memorised the forget set and near 0.5 for one that never saw it
(open-unlearning's convention: forget labelled 0, holdout labelled 1).

Which tokens each attack reads, as in open-unlearning: loss and zlib use the mean NLL over every labelled token (the
answer and the closing eos, i.e. TOFU's answer NLL); min-k%, min-k%++ and gradient norm read the answer tokens
without the eos.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from msa_bench.data.formatting import encode_qa
from msa_bench.metrics.memorization import AnswerTokenStatistics, without_eos
from msa_bench.metrics.scoring import IGNORE_INDEX, model_device

# The attacks computed from one model's token statistics or gradients (mia_reference needs a second model).
ATTACKS: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm")

# Floor on the vocabulary log-prob variance before dividing by its square root (open-unlearning's value): a
# near-deterministic position would otherwise divide by zero.
MIN_VOCAB_VARIANCE = 1e-6


def loss_scores(statistics: AnswerTokenStatistics) -> np.ndarray:
    """Mean answer NLL (eos included) per item."""
    return statistics.answer_nlls()


def zlib_compressed_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def zlib_scores(statistics: AnswerTokenStatistics, answers: Sequence[str]) -> np.ndarray:
    """Mean answer NLL divided by the zlib-compressed byte length of the answer text.

    The text is the answer as written (stripped), which is what open-unlearning gets by decoding the labelled tokens
    without special tokens.
    """
    if len(answers) != len(statistics):
        raise ValueError(f"{len(statistics)} items scored but {len(answers)} answers given")
    lengths = np.array([zlib_compressed_length(answer.strip()) for answer in answers], dtype=np.float64)
    return loss_scores(statistics) / lengths


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k (the share of lowest-scoring tokens) must be in (0, 1], got {k}")


def lowest_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest share k of `values` (at least one of them)."""
    _check_k(k)
    n_lowest = max(1, int(len(values) * k))
    return float(np.sort(values)[:n_lowest].mean())


def min_k_scores(statistics: AnswerTokenStatistics, k: float) -> np.ndarray:
    """-(mean of the lowest k share of answer-token log-probs) per item: high when some tokens were surprising."""
    _check_k(k)
    return np.array(
        [-lowest_k_mean(without_eos(log_probs), k) for log_probs in statistics.label_log_probs],
        dtype=np.float64,
    )


def standardised_log_probs(statistics: AnswerTokenStatistics) -> list[np.ndarray]:
    """Per item, each answer token's log-prob standardised by the mean and std of the vocabulary log-probs there."""
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


def min_k_plus_plus_scores(statistics: AnswerTokenStatistics, k: float) -> np.ndarray:
    """min-k% on standardised token log-probs (eos excluded), negated like min-k%."""
    _check_k(k)
    return np.array(
        [-lowest_k_mean(without_eos(scores), k) for scores in standardised_log_probs(statistics)],
        dtype=np.float64,
    )


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
            answer_positions = torch.nonzero(labels != IGNORE_INDEX).squeeze(1)[
                :-1
            ]  # drop the eos prediction
            log_probs = torch.log_softmax(logits[answer_positions], dim=-1)
            loss = -log_probs.gather(1, labels[answer_positions].unsqueeze(1)).mean()
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
            norms = [gradient.float().norm(p=p) for gradient in gradients if gradient is not None]
            scores[index] = float(torch.stack(norms).mean())
            if on_item is not None:
                on_item(1)
    return scores
