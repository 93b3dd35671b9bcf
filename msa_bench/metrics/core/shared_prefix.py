"""Teacher-forced logits of scored sequences, with one model pass over each context that several sequences share.

TOFU scores 1 + 1 + 5 answers per question after the same prompt. Run unshared, the prompt goes through the model
once per answer. Here the sequences whose context token ids are identical form a group. The group's context runs
once with a KV cache (transformers' `DynamicCache`), batched with up to `batch_size` other contexts; that pass also
gives the logits at the context's last token, which predict every answer's first token. The cache is then expanded
over the group's answers (`batch_select_indices` with repeated indices), in batches of up to `batch_size` answers.
Each answer runs as one row continuing from it: its target tokens but the last, at the positions they have in the
full sequence. An answer of one target token (an empty answer's eos) needs no row at all.

- **Logits only where a target is predicted.** Every pass hands the model a boolean `logits_to_keep` mask (the
  positions that predict a target token), so the vocabulary projection runs on those hidden states alone, in the
  model's own forward (its head, logit scaling and soft-capping apply): never on pads, never on prompt positions.
  transformers (pinned 5.24) flattens them to (n_kept, vocab). A model without `logits_to_keep` gets its full
  logits sliced by the same mask.
- **Exact prefix.** Sharing keys on the context ids, so an answer is pooled only with answers whose scored tokens
  follow the very same tokens. A caller whose tokenization moved characters across the context/target boundary gets
  differing contexts, and those sequences are scored unshared.
- **Equal values.** The values equal the unshared computation up to float summation order (within 1e-5 in fp32;
  tests/test_shared_prefix_scoring.py). Contexts are right-padded, and the pads are masked out of the answers'
  attention. Position ids are passed explicitly, so rotary embeddings see the unpadded positions.
- **Fallback.** These are scored unshared, one right-padded pass per batch:
  - a context that only one sequence has, where sharing saves nothing;
  - a model whose forward takes no cache and position ids (test stand-ins, non-transformers models).
- **Sliding windows.** Models with sliding-window attention count the prefix's pad slots in the window. This
  changes nothing while sequences are shorter than the window (4096 tokens for Mistral and Gemma-2).

`target_logit_batches` yields, per batch of sequences, the logits that predict their target tokens in one or two
parts (`TargetLogits`); both scorers in scoring.py read it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from msa_bench.metrics.core.batches import length_sorted_batches


@dataclass(frozen=True)
class TargetPart:
    """Logits predicting some of a batch's target tokens: those of a row are contiguous and in order."""

    logits: torch.Tensor  # (n, vocab), in the model's dtype
    labels: torch.Tensor  # (n,): the target token each logit row predicts
    rows: torch.Tensor  # (n,): the batch row (position in TargetLogits.indices) each target belongs to


@dataclass(frozen=True)
class TargetLogits:
    indices: list[
        int
    ]  # the batch's sequences, as positions in the caller's list; row r is sequence indices[r]
    parts: list[TargetPart]  # together, every target token of every row, each once
    tokens_processed: int  # non-padding tokens this batch fed through the model

    def by_row(self, per_target: torch.Tensor) -> list[torch.Tensor]:
        """One value per target, in the parts' order (their concatenation) -> per row, its targets' values in
        target order. A row's targets are in order within each part and the parts follow one another in target
        order, so a stable sort by row restores it."""
        rows = torch.cat([part.rows for part in self.parts]).cpu()
        order = torch.sort(rows, stable=True).indices
        counts = torch.bincount(rows, minlength=len(self.indices)).tolist()
        return list(torch.split(per_target[order], counts))


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


def _kept_logits(model, input_ids, attention_mask, keep: torch.Tensor, **kwargs):
    """(the model's output, its logits at the True positions of the (rows, width) mask `keep`, flattened row-major
    to (n_kept, vocab)). Through `logits_to_keep` the head runs on those positions only."""
    if "logits_to_keep" in _forward_parameters(model):
        output = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **kwargs)
        logits = output.logits
        if logits.dim() == 3:  # a model that returned every position regardless
            logits = logits[keep]
        return output, logits
    output = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return output, output.logits[keep]


def _right_padded(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of the rows, padded on the right to the longest. Built from one nested list (a
    tensor per row, as data.batching.pad_right makes, costs a tenth of a small model's pass)."""
    width = max(len(row) for row in rows)
    ids = torch.tensor([[*row, *[pad_token_id] * (width - len(row))] for row in rows], dtype=torch.long)
    lengths = torch.tensor([len(row) for row in rows])
    return ids, (torch.arange(width) < lengths.unsqueeze(1)).long()


def _row_of_each_target(counts: Sequence[int], device) -> torch.Tensor:
    return torch.repeat_interleave(
        torch.arange(len(counts), device=device), torch.tensor(counts, device=device)
    )


def _unshared_batch(model, pad_token_id: int, sequences, indices: list[int], device) -> TargetLogits:
    batch = [sequences[index] for index in indices]
    input_ids, attention_mask = _right_padded(
        [sequence.context_ids + sequence.target_ids for sequence in batch], pad_token_id
    )
    # Position p predicts the token at p + 1: keep len(context) - 1 up to the position before the last token.
    positions = torch.arange(input_ids.shape[1])
    context_lengths = torch.tensor([len(sequence.context_ids) for sequence in batch]).unsqueeze(1)
    keep = (positions >= context_lengths - 1) & (positions < attention_mask.sum(dim=1, keepdim=True) - 1)
    _, logits = _kept_logits(model, input_ids.to(device), attention_mask.to(device), keep.to(device))
    part = TargetPart(
        logits=logits,
        labels=torch.tensor([token for sequence in batch for token in sequence.target_ids], device=device),
        rows=_row_of_each_target([len(sequence.target_ids) for sequence in batch], device),
    )
    return TargetLogits(indices=indices, parts=[part], tokens_processed=int(attention_mask.sum()))


@dataclass(frozen=True)
class _Group:
    context: tuple[int, ...]
    indices: list[int]  # the sequences continuing this context
    targets: list[list[int]]  # their target ids


@dataclass(frozen=True)
class _PrefixPass:
    cache: object  # the KV cache of the chunk's contexts, right-padded
    mask: torch.Tensor  # (groups, width): the contexts' attention mask
    lengths: torch.Tensor  # (groups,): context lengths
    first_logits: torch.Tensor  # (groups, vocab): the logits at each context's last token
    tokens: int


def _prefix_pass(model, pad_token_id: int, groups: list[_Group], device) -> _PrefixPass:
    """One pass over the groups' contexts: their KV cache and the logits that predict each answer's first token."""
    contexts = [list(group.context) for group in groups]
    context_ids, context_mask = _right_padded(contexts, pad_token_id)
    lengths = torch.tensor([len(context) for context in contexts])
    keep = torch.zeros_like(context_mask, dtype=torch.bool)
    keep[torch.arange(len(contexts)), lengths - 1] = True
    output, first_logits = _kept_logits(
        model, context_ids.to(device), context_mask.to(device), keep.to(device), use_cache=True
    )
    cache = output.get("cache")
    if cache is None:  # transformers before the rename
        cache = output.get("past_key_values")
    return _PrefixPass(
        cache, context_mask.to(device), lengths.to(device), first_logits, int(context_mask.sum())
    )


def _expanded(cache, rows: torch.Tensor):
    """A cache of the given rows of `cache` (repeats allowed), leaving `cache` as it was for the chunk's next answer
    batch. The copies are shallow: `batch_select_indices` replaces each layer's tensors by indexed new ones."""
    expanded = copy.copy(cache)
    expanded.layers = [copy.copy(layer) for layer in cache.layers]
    expanded.batch_select_indices(rows)
    return expanded


def _continuations(model, cache_name, pad_token_id, chunk, prefix: _PrefixPass, rows, device) -> TargetLogits:
    """The target logits of `rows`, (chunk position, sequence within its group) pairs: the first target's from the
    prefix pass, the others' from one pass continuing the chunk's cache."""
    targets = [chunk[group].targets[member] for group, member in rows]
    group_of_row = torch.tensor([group for group, _ in rows], device=device)
    parts = [
        TargetPart(
            logits=prefix.first_logits[group_of_row],
            labels=torch.tensor([row_targets[0] for row_targets in targets], device=device),
            rows=torch.arange(len(rows), device=device),
        )
    ]
    continuing = [row for row, row_targets in enumerate(targets) if len(row_targets) > 1]
    tokens = 0
    if continuing:
        inputs = [targets[row][:-1] for row in continuing]
        row_ids, row_mask = _right_padded(inputs, pad_token_id)
        groups = group_of_row[continuing]
        cache = _expanded(prefix.cache, groups)
        # Each row continues its own context, at positions len(context) onwards, whatever the prefix padding.
        position_ids = prefix.lengths[groups].unsqueeze(1) + torch.arange(row_ids.shape[1], device=device)
        row_mask = row_mask.to(device)
        _, logits = _kept_logits(
            model,
            row_ids.to(device),
            torch.cat([prefix.mask[groups], row_mask], dim=1),
            row_mask.bool(),
            position_ids=position_ids,
            use_cache=True,
            **{cache_name: cache},
        )
        parts.append(
            TargetPart(
                logits=logits,
                labels=torch.tensor(
                    [token for row in continuing for token in targets[row][1:]], device=device
                ),
                rows=torch.tensor(continuing, device=device).repeat_interleave(row_mask.sum(dim=1)),
            )
        )
        tokens = int(row_mask.sum())
    return TargetLogits(
        indices=[chunk[group].indices[member] for group, member in rows], parts=parts, tokens_processed=tokens
    )


def _chunks(groups: list[tuple[tuple[int, ...], list[int]]], sequences, batch_size: int):
    """(chunk, its answer batches): chunks of at most `batch_size` contexts, longest first, whose contexts run in
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
        if cache_name is not None and len(indices) > 1
    ]
    shared_indices = {index for _, indices in shared for index in indices}
    unshared = [index for index in range(len(sequences)) if index not in shared_indices]

    for batch_positions in length_sorted_batches(
        [len(sequences[i].context_ids) + len(sequences[i].target_ids) for i in unshared], batch_size
    ):
        yield _unshared_batch(model, pad_token_id, sequences, [unshared[p] for p in batch_positions], device)
    for chunk, answer_batches in _chunks(shared, sequences, batch_size):
        prefix = _prefix_pass(model, pad_token_id, chunk, device)
        prefix_tokens = prefix.tokens
        for answer_batch in answer_batches:
            batch = _continuations(model, cache_name, pad_token_id, chunk, prefix, answer_batch, device)
            yield TargetLogits(batch.indices, batch.parts, batch.tokens_processed + prefix_tokens)
            prefix_tokens = 0  # counted with the chunk's first answer batch
