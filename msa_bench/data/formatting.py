"""How a question-answer pair becomes tokens.

One place decides the prompt format, so that training, scoring and generation all see the same token sequences.
The prompt and the answer are tokenized separately and concatenated: a BPE merge across the boundary would otherwise
move answer characters into the prompt and change which tokens the loss and the metrics are computed on.

Two formats (`model.prompt.format`), carried by the tokenizer itself (`set_prompt_format`), so that every caller of
`encode_prompt` / `encode_qa` follows the model's format without passing it around:
    plain   bos + "Question: {q}\\nAnswer:"  then  " {answer}" + eos          (base and small models)
    chat    the tokenizer's chat template on [system (if any), user=q] with the generation prompt,
            then  "{answer}" + eos                                         (instruct models)
The chat prompt is rendered to text and tokenized without special tokens: the template writes the bos text itself
(Llama-3: "<|begin_of_text|>"), so bos is prepended only when the rendered text does not already start with it.
The date that Llama-3 templates insert is pinned through the template variable `date_string`, so that the token
sequences do not change from day to day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from msa_bench.errors import ConfigError

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
PROMPT_KINDS = ("plain", "chat")
# The attribute of a tokenizer object that carries its PromptFormat (not saved with the tokenizer: set it on load).
FORMAT_ATTRIBUTE = "msa_prompt_format"


def format_prompt(question: str) -> str:
    """The plain prompt text (without bos)."""
    return PROMPT_TEMPLATE.format(question=question)


def format_answer(answer: str) -> str:
    """The plain answer text (without eos)."""
    # The leading space belongs to the answer: it is what the model generates right after "Answer:".
    return " " + answer.strip()


@dataclass(frozen=True)
class PromptFormat:
    """How questions are turned into prompts; see the module docstring."""

    kind: str = "plain"  # plain | chat
    system_prompt: str | None = None  # chat only: a system message before the question
    # chat only: the chat template's `date_string` (None: not passed, the template's own default, maybe today's date)
    date_string: str | None = "10 Apr 2025"

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ConfigError(
                f"model.prompt.format must be one of {', '.join(repr(k) for k in PROMPT_KINDS)}, got {self.kind!r}"
            )

    @classmethod
    def from_config(cls, prompt_config) -> PromptFormat:
        """From a PromptConfig (model.prompt); None means the plain default."""
        if prompt_config is None:
            return cls()
        return cls(
            kind=prompt_config.format,
            system_prompt=prompt_config.system_prompt,
            date_string=prompt_config.date_string,
        )


PLAIN = PromptFormat()


def set_prompt_format(tokenizer, fmt: PromptFormat):
    """Attach `fmt` to the tokenizer object, which encode_prompt / encode_qa / prompt_text / answer_text then follow.

    Returns the tokenizer. A chat format needs a tokenizer with a chat template.
    """
    if not isinstance(fmt, PromptFormat):
        raise TypeError(f"expected a PromptFormat, got {type(fmt).__name__}")
    if fmt.kind == "chat" and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        raise ConfigError(
            f"model.prompt.format=chat needs a tokenizer with a chat template, but tokenizer {name!r} has none; "
            "use model.prompt.format=plain for base models"
        )
    setattr(tokenizer, FORMAT_ATTRIBUTE, fmt)
    return tokenizer


def prompt_format_of(tokenizer) -> PromptFormat:
    """The format attached to the tokenizer, or the plain default."""
    fmt = getattr(tokenizer, FORMAT_ATTRIBUTE, None)
    return fmt if isinstance(fmt, PromptFormat) else PLAIN


def _chat_prompt_text(tokenizer, fmt: PromptFormat, question: str) -> str:
    messages = []
    if fmt.system_prompt is not None:
        messages.append({"role": "system", "content": fmt.system_prompt})
    messages.append({"role": "user", "content": question})
    template_kwargs = {} if fmt.date_string is None else {"date_string": fmt.date_string}
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_kwargs
    )


def prompt_text(tokenizer, question: str) -> str:
    """The prompt as text, in the tokenizer's format.

    plain: "Question: ...\\nAnswer:" without bos; chat: the rendered template, which includes the bos text if the
    template writes it. Either way `encode_prompt` is this text, tokenized, with bos in front unless already there.
    """
    fmt = prompt_format_of(tokenizer)
    if fmt.kind == "chat":
        return _chat_prompt_text(tokenizer, fmt, question)
    return format_prompt(question)


def answer_text(tokenizer, answer: str) -> str:
    """The answer as text, in the tokenizer's format, without the closing eos: plain " answer", chat "answer"."""
    if prompt_format_of(tokenizer).kind == "chat":
        return answer.strip()
    return format_answer(answer)


@dataclass(frozen=True)
class EncodedQA:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens, token ids on answer tokens (and the closing eos)

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


def encode_prompt(tokenizer, question: str) -> list[int]:
    """bos + the prompt's tokens, in the tokenizer's format (bos not repeated when the chat template wrote it)."""
    return encode_prompts(tokenizer, [question])[0]


def encode_prompts(tokenizer, questions: Sequence[str]) -> list[list[int]]:
    """`encode_prompt` of each question, in one batched tokenizer call (the fast tokenizers encode a list in Rust,
    far faster than one call per prompt)."""
    texts = [prompt_text(tokenizer, question) for question in questions]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    if tokenizer.bos_token_id is None:
        return [list(ids) for ids in encoded]
    chat = prompt_format_of(tokenizer).kind == "chat" and bool(tokenizer.bos_token)
    # A chat template that wrote the bos text already tokenized it to bos; otherwise bos goes first.
    return [
        list(ids) if chat and text.startswith(tokenizer.bos_token) else [tokenizer.bos_token_id, *ids]
        for text, ids in zip(texts, encoded, strict=True)
    ]


def encode_qa(tokenizer, question: str, answer: str, max_length: int | None = None) -> EncodedQA:
    """Token ids for prompt + answer + eos, with the loss only on the answer and eos."""
    prompt_ids = encode_prompt(tokenizer, question)
    answer_ids = tokenizer(answer_text(tokenizer, answer), add_special_tokens=False)["input_ids"]
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
