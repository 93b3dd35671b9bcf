"""Loss pieces shared by the fine-tuning and unlearning trainers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of each sequence's labelled tokens, and the number of those tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_nll_from_logits(logits, batch["labels"])


def token_nll_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position NLL of the next token (0 where unlabelled) and the mask of labelled positions, (B, T-1) each."""
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    token_nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(shifted_labels.shape)
    return token_nll, shifted_labels != -100


def sequence_nll_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    token_nll, mask = token_nll_from_logits(logits, labels)
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


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Mask over positions 0..T-2 whose next token is labelled (the positions a causal LM loss is computed at)."""
    return labels[:, 1:] != -100


def mean_token_kl(reference_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_reference ‖ p_model) over the vocabulary, averaged over labelled positions."""
    mask = scored_positions(labels)
    reference_logp = F.log_softmax(reference_logits[:, :-1, :].float(), dim=-1)[mask]
    model_logp = F.log_softmax(logits[:, :-1, :].float(), dim=-1)[mask]
    return F.kl_div(model_logp, reference_logp, reduction="batchmean", log_target=True)


def masked_activation_mse(
    activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """RMU's activation loss: squared error averaged over the hidden size and each sequence's masked tokens, then
    over the sequences that have any (as open-unlearning's RMU).

    activations [B, T, D]; target broadcastable to it (a control vector [D], or reference activations); mask [B, T].
    Averaging per sequence first makes the mean over equal-size micro-batches equal the full-batch value.
    """
    squared_error = (activations.float() - target.float()).pow(2).mean(dim=-1)
    weights = mask.to(squared_error.dtype)
    n_tokens = weights.sum(dim=1)
    per_sequence = (squared_error * weights).sum(dim=1) / n_tokens.clamp(min=1)
    has_tokens = (n_tokens > 0).to(squared_error.dtype)
    return (per_sequence * has_tokens).sum() / has_tokens.sum().clamp(min=1)


def undial_target_probs(teacher_logits: torch.Tensor, true_ids: torch.Tensor, beta: float) -> torch.Tensor:
    """UNDIAL's target (Dong et al. 2024): softmax of the teacher's logits [N, V] with each row's true token's
    logit (true_ids [N]) lowered by β."""
    adjusted = teacher_logits.float().clone()
    adjusted.scatter_add_(-1, true_ids.unsqueeze(-1), adjusted.new_full((len(true_ids), 1), -float(beta)))
    return F.softmax(adjusted, dim=-1)


def undial_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, beta: float
) -> torch.Tensor:
    """Cross-entropy from UNDIAL's adjusted teacher distribution to the model's, averaged over labelled positions.

    Its gradient is that of KL(target ‖ model); the cross-entropy is what open-unlearning reports.
    """
    mask = scored_positions(labels)
    targets = undial_target_probs(teacher_logits[:, :-1, :][mask], labels[:, 1:][mask], beta)
    model_logp = F.log_softmax(logits[:, :-1, :][mask].float(), dim=-1)
    return -(targets * model_logp).sum() / mask.sum().clamp(min=1)
