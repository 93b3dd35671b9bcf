"""Loss pieces shared by the fine-tuning and unlearning trainers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of each sequence's labelled tokens, and the number of those tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = batch["labels"][:, 1:]
    token_nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(shifted_labels.shape)
    mask = shifted_labels != -100
    return (token_nll * mask).sum(dim=1), mask.sum(dim=1)


def mean_token_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The standard causal-LM loss: NLL averaged over every labelled token of the batch."""
    nll, n_tokens = sequence_nll(model, batch)
    return nll.sum() / n_tokens.sum().clamp(min=1)


def npo_loss(policy_nll: torch.Tensor, reference_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation on the forget set (Zhang et al. 2024).

    With log-ratio r = log π(y|x) − log π_ref(y|x) = reference_nll − policy_nll (sequence sums), the loss is
    −(2/β)·log σ(−β·r), averaged over the batch. It equals 0 nowhere and decays as the policy's likelihood drops.
    """
    log_ratio = reference_nll - policy_nll
    return (-2.0 / beta * F.logsigmoid(-beta * log_ratio)).mean()
