"""How a question-answer pair becomes tokens.

One place decides the prompt format, so that training, scoring and generation all see the same token sequences.
The prompt and the answer are tokenized separately and concatenated: a BPE merge across the boundary would otherwise
move answer characters into the prompt and change which tokens the loss and the metrics are computed on.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


def format_answer(answer: str) -> str:
    # The leading space belongs to the answer: it is what the model generates right after "Answer:".
    return " " + answer.strip()


@dataclass(frozen=True)
class EncodedQA:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens, token ids on answer tokens (and the closing eos)

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


def encode_prompt(tokenizer, question: str) -> list[int]:
    ids = tokenizer(format_prompt(question), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def encode_qa(tokenizer, question: str, answer: str, max_length: int | None = None) -> EncodedQA:
    """Token ids for prompt + answer + eos, with the loss only on the answer and eos."""
    prompt_ids = encode_prompt(tokenizer, question)
    answer_ids = tokenizer(format_answer(answer), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + answer_ids
    labels = [-100] * len(prompt_ids) + answer_ids
    if max_length is not None and len(input_ids) > max_length:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return EncodedQA(input_ids=input_ids, labels=labels)


def encode_text(tokenizer, text: str) -> list[int]:
    """A pretraining document: bos + text + eos, all tokens trained on."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return head + ids + [tokenizer.eos_token_id]
