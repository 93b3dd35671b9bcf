"""Greedy answers to questions, batched with left padding.

The prompt is built with `encode_prompt`, the same prefix that scoring and training use (in the prompt format the
tokenizer carries, plain or chat: msa_bench/data/formatting.py), and padded on the left here rather than through
`tokenizer.padding_side`, so that the result does not depend on how a tokenizer was saved. Generation stops at the
tokenizer's eos (an instruct tokenizer's end-of-turn token, e.g. Llama-3's "<|eot_id|>").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from msa_bench.data.batching import pad_left
from msa_bench.data.formatting import encode_prompt
from msa_bench.metrics.scoring import evaluation_mode, length_sorted_batches, model_device


@dataclass(frozen=True)
class Generations:
    texts: list[str]  # decoded new tokens, special tokens skipped, stripped; in input order
    tokens_processed: int  # prompt tokens plus generated tokens (up to and including eos), padding excluded


def _trim_at_eos(token_ids: list[int], eos_token_id: int) -> tuple[list[int], bool]:
    """The tokens before the first eos, and whether an eos was found."""
    if eos_token_id in token_ids:
        return token_ids[: token_ids.index(eos_token_id)], True
    return token_ids, False


def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> Generations:
    """Greedy decoding of an answer to each question, with token counts.

    `on_batch(n_items)` is called after every batch (for progress bars).
    """
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs pad and eos tokens for batched generation")
    prompts = [encode_prompt(tokenizer, question) for question in questions]
    texts: list[str] = [""] * len(prompts)
    tokens_processed = 0
    device = model_device(model)

    with evaluation_mode(model):
        for batch_indices in length_sorted_batches([len(prompt) for prompt in prompts], batch_size):
            batch = [prompts[index] for index in batch_indices]
            # Left padding: every prompt must end at the last column so new tokens follow it directly.
            input_ids, attention_mask = pad_left(batch, tokenizer.pad_token_id)
            width = input_ids.shape[1]
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            # generate() returns the prompt columns too; only what follows them is the answer.
            new_tokens = output[:, width:].tolist()
            for row, index in enumerate(batch_indices):
                answer_ids, ended = _trim_at_eos(new_tokens[row], tokenizer.eos_token_id)
                texts[index] = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
                tokens_processed += len(batch[row]) + len(answer_ids) + int(ended)
            if on_batch is not None:
                on_batch(len(batch))

    return Generations(texts=texts, tokens_processed=tokens_processed)


def greedy_generate(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answer text for each question, in input order."""
    return generate_answers(model, tokenizer, questions, max_new_tokens, batch_size).texts
