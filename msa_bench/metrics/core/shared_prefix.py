"""Teacher-forced logits of scored sequences, with one model pass over each context that several sequences share.

TOFU scores 1 + 1 + 5 answers per question after the same prompt. Run unshared, the prompt goes through the model
once per answer. Here the sequences whose context token ids are identical form a group. The group's context, without
its last token, runs once with a KV cache (transformers' `DynamicCache`), batched with up to `batch_size` other
contexts. The cache is then expanded over the group's answers (`batch_select_indices` with repeated indices), in
batches of up to `batch_size` answers. Each answer runs as one row continuing from it: the context's
last token, then the target tokens but the last, at the positions they have in the full sequence.

- **Exact prefix.** Sharing keys on the context ids, so an answer is pooled only with answers whose scored tokens
  follow the very same tokens. A caller whose tokenization moved characters across the context/target boundary gets
  differing contexts, and those sequences are scored unshared.
- **Equal values.** The values equal the unshared computation up to float summation order (within 1e-5 in fp32;
  tests/test_shared_prefix_scoring.py). Contexts are right-padded, and the pads are masked out of the answers'
  attention. Position ids are passed explicitly, so rotary embeddings see the unpadded positions.
- **Fallback.** These are scored unshared, one right-padded pass per batch as before:
  - a context that only one sequence has, where sharing saves nothing;
  - a one-token context;
  - a model whose forward takes no cache and position ids (test stand-ins, non-transformers models).
- **Sliding windows.** Models with sliding-window attention count the prefix's pad slots in the window. This
  changes nothing while sequences are shorter than the window (4096 tokens for Mistral and Gemma-2).

`target_logit_batches` yields, per batch, the logits at the positions that predict target tokens and the labels there
(IGNORE_INDEX elsewhere): each row's non-ignored positions are its target tokens, in order. Both scorers in
scoring.py read it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from msa_bench.data.batching import IGNORE_INDEX, pad_right
from msa_bench.metrics.core.batches import length_sorted_batches


@dataclass(frozen=True)
class TargetLogits:
    indices: list[
        int
    ]  # the batch's sequences, as positions in the caller's list; row r is sequence indices[r]
    logits: torch.Tensor  # (rows, width, vocab), in the model's dtype
    labels: torch.Tensor  # (rows, width): the target token each position predicts, IGNORE_INDEX elsewhere
    tokens_processed: int  # non-padding tokens this batch fed through the model


def _forward_parameters(model: torch.nn.Module):
    return inspect.signature(model.forward).parameters


def _cache_argument(model: torch.nn.Module) -> str | None:
    """The name under which the model's forward takes a KV cache, or None when prefix sharing cannot be used."""
    parameters = _forward_parameters(model)
    supports_dynamic_cache = getattr(type(model), "_supports_default_dynamic_cache", None)
    if "position_ids" not in parameters or supports_dynamic_cache is None or not supports_dynamic_cache():
        return None
    # transformers 5.x renamed past_key_values to cache (the old name is deprecated until 5.40).
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def _logits_at(model, input_ids, attention_mask, positions: torch.Tensor, **kwargs):
    """The model's output with logits only at `positions` where it takes `logits_to_keep` (its own head, scaling
    and soft-capping apply), else the full logits sliced there. Returns (output, logits)."""
    if "logits_to_keep" in _forward_parameters(model):
        output = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions, **kwargs)
        return output, output.logits
    output = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return output, output.logits[:, positions, :]


def _unshared_batch(model, pad_token_id: int, sequences, indices: list[int], device) -> TargetLogits:
    batch = [sequences[index] for index in indices]
    input_ids, labels, attention_mask = pad_right(
        [sequence.context_ids + sequence.target_ids for sequence in batch],
        [[IGNORE_INDEX] * len(sequence.context_ids) + sequence.target_ids for sequence in batch],
        pad_token_id,
    )
    width = input_ids.shape[1]
    # Only positions that predict a target token need logits: the vocabulary projection of prompt positions costs a
    # quarter of the forward pass on a small model.
    first_target = min(len(sequence.context_ids) for sequence in batch)
    predicting = torch.arange(first_target - 1, width - 1, device=device)
    _, logits = _logits_at(model, input_ids.to(device), attention_mask.to(device), predicting)
    return TargetLogits(
        indices=indices,
        logits=logits,
        labels=labels[:, first_target:].to(device),
        tokens_processed=int(attention_mask.sum()),
    )


@dataclass(frozen=True)
class _Group:
    context: tuple[int, ...]
    indices: list[int]  # the sequences continuing this context
    targets: list[list[int]]  # their target ids


def _prefix_cache(model, pad_token_id: int, groups: list[_Group], device):
    """One pass over the groups' contexts but their last tokens: (the KV cache, its attention mask, the lengths)."""
    prefixes = [list(group.context[:-1]) for group in groups]
    prefix_ids, _, prefix_mask = pad_right(prefixes, prefixes, pad_token_id)
    # Only the cache is needed; one position of logits keeps the vocabulary projection negligible.
    output, _ = _logits_at(
        model,
        prefix_ids.to(device),
        prefix_mask.to(device),
        torch.tensor([prefix_ids.shape[1] - 1], device=device),
        use_cache=True,
    )
    cache = output.get("cache")
    if cache is None:  # transformers before the rename
        cache = output.get("past_key_values")
    return cache, prefix_mask.to(device), torch.tensor([len(prefix) for prefix in prefixes], device=device)


def _expanded(cache, rows: torch.Tensor):
    """A cache of the given rows of `cache` (repeats allowed), leaving `cache` as it was for the chunk's next answer
    batch. The copies are shallow: `batch_select_indices` replaces each layer's tensors by indexed new ones."""
    expanded = copy.copy(cache)
    expanded.layers = [copy.copy(layer) for layer in cache.layers]
    expanded.batch_select_indices(rows)
    return expanded


def _continuations(model, cache_name, pad_token_id, chunk, chunk_cache, rows, device) -> TargetLogits:
    """The target logits of `rows`, (chunk position, sequence within its group) pairs, continuing the chunk's cache."""
    prefix_cache, prefix_mask, prefix_lengths = chunk_cache
    inputs = [[chunk[group].context[-1]] + chunk[group].targets[member][:-1] for group, member in rows]
    row_ids, labels, row_mask = pad_right(
        inputs, [chunk[group].targets[member] for group, member in rows], pad_token_id
    )
    group_of_row = torch.tensor([group for group, _ in rows], device=device)
    cache = _expanded(prefix_cache, group_of_row)
    # Each row continues its own context, at positions len(context) - 1 onwards, whatever the prefix padding.
    position_ids = prefix_lengths[group_of_row].unsqueeze(1) + torch.arange(row_ids.shape[1], device=device)
    attention_mask = torch.cat([prefix_mask[group_of_row], row_mask.to(device)], dim=1)
    output = model(
        input_ids=row_ids.to(device),
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **{cache_name: cache},
    )
    return TargetLogits(
        indices=[chunk[group].indices[member] for group, member in rows],
        logits=output.logits,
        labels=labels.to(device),
        tokens_processed=int(row_mask.sum()),
    )


def _chunks(groups: list[tuple[tuple[int, ...], list[int]]], sequences, batch_size: int):
    """(chunk, its answer batches): chunks of at most `batch_size` contexts, longest first, whose prefixes run in
    one pass; the chunk's continuations, sorted by length so that little is padded, in batches of `batch_size` rows
    (chunk position, sequence within its group). A group of more than `batch_size` sequences is split, and its
    context then runs once per part."""
    parts = [
        _Group(context, part, [sequences[index].target_ids for index in part])
        for context, indices in groups
        for part in (indices[start : start + batch_size] for start in range(0, len(indices), batch_size))
    ]
    parts.sort(key=lambda group: -len(group.context))
    for start in range(0, len(parts), batch_size):
        chunk = parts[start : start + batch_size]
        rows = [
            (position, member) for position, group in enumerate(chunk) for member in range(len(group.indices))
        ]
        rows.sort(key=lambda row: -len(chunk[row[0]].targets[row[1]]))
        yield chunk, [rows[first : first + batch_size] for first in range(0, len(rows), batch_size)]


def target_logit_batches(
    model: torch.nn.Module, pad_token_id: int, sequences: Sequence, batch_size: int, device
) -> Iterator[TargetLogits]:
    """Every sequence's target logits, in batches of at most `batch_size` sequences (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    cache_name = _cache_argument(model)
    by_context: dict[tuple[int, ...], list[int]] = {}
    for index, sequence in enumerate(sequences):
        by_context.setdefault(tuple(sequence.context_ids), []).append(index)
    shared = [
        (context, indices)
        for context, indices in by_context.items()
        if cache_name is not None and len(indices) > 1 and len(context) > 1
    ]
    shared_indices = {index for _, indices in shared for index in indices}
    unshared = [index for index in range(len(sequences)) if index not in shared_indices]

    for batch_positions in length_sorted_batches(
        [len(sequences[i].context_ids) + len(sequences[i].target_ids) for i in unshared], batch_size
    ):
        yield _unshared_batch(model, pad_token_id, sequences, [unshared[p] for p in batch_positions], device)
    for chunk, answer_batches in _chunks(shared, sequences, batch_size):
        chunk_cache = _prefix_cache(model, pad_token_id, chunk, device)
        prefix_tokens = int(chunk_cache[1].sum())
        for answer_batch in answer_batches:
            batch = _continuations(model, cache_name, pad_token_id, chunk, chunk_cache, answer_batch, device)
            yield dataclasses.replace(batch, tokens_processed=batch.tokens_processed + prefix_tokens)
            prefix_tokens = 0  # counted with the chunk's first answer batch
