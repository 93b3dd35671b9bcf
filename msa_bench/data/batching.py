"""Padding token sequences into batches: right padding for teacher-forced scoring and training, left padding for
generation. One implementation, so that the trainer, the scorers and the generators pad identically."""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100


def pad_right(
    input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask), padded on the right to the longest sequence.

    Under a causal mask real tokens never attend to the pads after them, so right padding changes no value.
    """
    width = max(len(ids) for ids in input_ids)
    ids_tensor = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    labels_tensor = torch.full((len(input_ids), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(zip(input_ids, labels, strict=True)):
        ids_tensor[row, : len(ids)] = torch.tensor(ids)
        labels_tensor[row, : len(row_labels)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return ids_tensor, labels_tensor, attention_mask


def pad_left(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded on the left so every prompt ends where generation starts."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask
