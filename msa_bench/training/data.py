"""Training examples, datasets and the padding collator shared by every trainer."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from msa_bench.data.batching import pad_right
from msa_bench.data.formatting import encode_qa, encode_text

Example = dict[str, list[int]]  # {"input_ids": [...], "labels": [...]}


def qa_examples(tokenizer, items: Sequence[dict], max_length: int) -> list[Example]:
    examples = []
    for item in items:
        encoded = encode_qa(tokenizer, item["question"], item["answer"], max_length=max_length)
        examples.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    return examples


def packed_text_blocks(tokenizer, texts: Sequence[str], block_size: int) -> list[Example]:
    """Concatenate documents (bos ... eos) and cut fixed-length blocks, all tokens trained on."""
    stream: list[int] = []
    for text in texts:
        stream.extend(encode_text(tokenizer, text))
    blocks = []
    for start in range(0, len(stream) - block_size + 1, block_size):
        ids = stream[start : start + block_size]
        blocks.append({"input_ids": ids, "labels": list(ids)})
    return blocks


def sample_examples(examples: Sequence[Example], count: int, seed: int) -> list[Example]:
    """A seeded sample without replacement (all of them when count >= len)."""
    if count >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), count)


class ExampleDataset(Dataset):
    def __init__(self, examples: Sequence[Example]):
        if not examples:
            raise ValueError("cannot train on an empty set of examples")
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


class ForgetRetainDataset(Dataset):
    """Indexed by the forget set; each forget example is paired with a seeded random retain example."""

    def __init__(self, forget: Sequence[Example], retain: Sequence[Example] | None, seed: int = 0):
        if not forget:
            raise ValueError("the forget set is empty")
        self.forget = list(forget)
        self.retain = list(retain) if retain else None
        rng = random.Random(seed)
        self.retain_index = [rng.randrange(len(self.retain)) for _ in self.forget] if self.retain else None

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, index: int) -> dict:
        # The index lets a trainer look up values precomputed per forget example (e.g. reference likelihoods).
        item = {"forget": {**self.forget[index], "index": index}}
        if self.retain is not None:
            item["retain"] = self.retain[self.retain_index[index]]
        return item


class PaddingCollator:
    """Right-pads input_ids (pad id) and labels (-100) to the longest sequence; handles nested forget/retain."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def pad(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        input_ids, labels, attention_mask = pad_right(
            [e["input_ids"] for e in examples], [e["labels"] for e in examples], self.pad_token_id
        )
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
        return batch

    def __call__(self, batch: Sequence[dict]) -> dict:
        if "forget" in batch[0]:
            out = {"forget": self.pad([b["forget"] for b in batch])}
            if "retain" in batch[0]:
                out["retain"] = self.pad([b["retain"] for b in batch])
            return out
        return self.pad(batch)
