"""The one batched decoder: prompts (token ids) in, stripped continuations out; greedy, or k sampled ones.

Prompts are padded on the left here rather than through `tokenizer.padding_side`, so that every prompt ends where
generation starts and the result does not depend on how a tokenizer was saved. A continuation ends at the tokenizer's
eos (an instruct tokenizer's end-of-turn token, e.g. Llama-3's "<|eot_id|>") or, when stop strings are given, once its
text contains one of them; it is then cut before the first stop string. Rows are judged one by one, so a batch gives
the same texts as single prompts would, except at the context limit: a batch generates only as many new tokens as
fit after its longest prompt within the model's context (max_position_embeddings), with a logged warning.

Batches are formed by prompt length (longest first, `length_sorted_batches`), so left padding stays small, and the
texts come back in input order. Where the model supports one (`supports_static_cache`), generation uses a static KV
cache (`cache_implementation="static"`): preallocated for prompt + max_new_tokens, it spares the dynamic cache's
reallocation at every step and is what torch.compile needs on a GPU. The greedy tokens are the same either way
(tests/test_decoding_cache.py); on this CPU the two run at the same speed.

`sampled_decode` runs the same decoder k times with temperature and nucleus (top-p) sampling, one seeded pass per
sample (leak@k: metrics.sampling); at temperature 0 it is `greedy_decode` itself.

`generate_answers` is the question-answering front end (TOFU, the judged accuracies): the prompt is `encode_prompt`,
the same prefix that scoring and training use (msa_bench/data/formatting.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from msa_bench.data.batching import pad_left
from msa_bench.data.formatting import encode_prompt
from msa_bench.metrics.core.batches import (
    evaluation_mode,
    length_sorted_batches,
    model_context_length,
    model_device,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generations:
    texts: list[
        str
    ]  # decoded new tokens (special tokens skipped, cut at a stop string, stripped); in input order
    # Prompt tokens plus generated tokens (up to and including eos, or up to the stop string), padding excluded.
    tokens_processed: int


class StopOnStrings(StoppingCriteria):
    """Marks a row finished once its new text contains a stop string, and remembers after how many new tokens, so
    that the padding `generate` appends to finished rows is not counted as processed."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], prompt_width: int, n_rows: int) -> None:
        self.tokenizer, self.stop_strings, self.prompt_width = tokenizer, tuple(stop_strings), prompt_width
        self.new_tokens_at_stop: list[float] = [math.inf] * n_rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stop_strings) for text in texts]
        n_new = input_ids.shape[1] - self.prompt_width
        for row, finished in enumerate(done):
            if finished and self.new_tokens_at_stop[row] == math.inf:
                self.new_tokens_at_stop[row] = n_new
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    for stop in stop_strings:
        text = text.split(stop, 1)[0]
    return text


def supports_static_cache(model: torch.nn.Module) -> bool:
    """Whether transformers can give this model a static KV cache: a transformers model that takes `Cache` objects
    and declares itself compilable with one (Llama, OLMo-2, Qwen2, ... do; stand-ins and stateful models do not)."""
    supports_cache = getattr(type(model), "_supports_default_dynamic_cache", None)
    return bool(
        getattr(model, "_can_compile_fullgraph", False)
        and supports_cache is not None
        and supports_cache()
        and not getattr(model, "_is_stateful", False)
    )


# generate()'s decoding arguments for greedy decoding: the argmax token at every step.
GREEDY = MappingProxyType({"do_sample": False, "num_beams": 1})


def greedy_decode(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int = 32,
    stop_strings: Sequence[str] = (),
    on_batch: Callable[[int], None] | None = None,
    *,
    static_cache: bool | None = None,
) -> Generations:
    """Greedy continuation of each prompt (token ids), batched by length; `on_batch(n_items)` after every batch.

    `static_cache`: None (the default) uses a static KV cache where `supports_static_cache`; False never does.
    """
    return _decode(
        model, tokenizer, prompts, max_new_tokens, batch_size, stop_strings, on_batch, static_cache, GREEDY
    )


def _decode(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str],
    on_batch: Callable[[int], None] | None,
    static_cache: bool | None,
    decoding: Mapping[str, object],
) -> Generations:
    """One continuation of each prompt, with generate()'s `decoding` arguments (GREEDY or `_sampling_arguments`)."""
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs pad and eos tokens for batched generation")
    use_static_cache = supports_static_cache(model) if static_cache is None else static_cache
    cache_settings = {"cache_implementation": "static"} if use_static_cache else {}
    texts: list[str] = [""] * len(prompts)
    tokens_processed = 0
    device = model_device(model)
    context_length = declared_context_length(model, tokenizer)
    capped_batches = 0
    with evaluation_mode(model):
        for batch_indices in length_sorted_batches([len(prompt) for prompt in prompts], batch_size):
            batch = [prompts[index] for index in batch_indices]
            input_ids, attention_mask = pad_left(batch, tokenizer.pad_token_id)
            width = input_ids.shape[1]
            batch_max_new = new_token_budget(width, max_new_tokens, context_length)
            if batch_max_new < max_new_tokens:
                if capped_batches == 0:
                    log.warning(
                        "generation capped at %d new tokens (max_new_tokens=%d): a prompt of %d tokens plus "
                        "max_new_tokens exceeds the model's context of %d positions (max_position_embeddings); "
                        "later batches may be capped too",
                        batch_max_new,
                        max_new_tokens,
                        width,
                        context_length,
                    )
                capped_batches += 1
            if batch_max_new == 0:  # the prompt alone fills the context: nothing can be generated
                tokens_processed += sum(len(prompt) for prompt in batch)
                if on_batch is not None:
                    on_batch(len(batch))
                continue
            stop = StopOnStrings(tokenizer, stop_strings, width, len(batch)) if stop_strings else None
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=batch_max_new,
                **decoding,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([stop]) if stop is not None else None,
                **cache_settings,
            )
            # generate() returns the prompt columns too; only what follows them is the continuation.
            new_tokens = output[:, width:].tolist()
            for row, index in enumerate(batch_indices):
                continuation = new_tokens[row]
                ended = tokenizer.eos_token_id in continuation
                if ended:
                    continuation = continuation[: continuation.index(tokenizer.eos_token_id)]
                n_generated = len(continuation) + int(ended)
                if stop is not None:
                    n_generated = min(n_generated, stop.new_tokens_at_stop[row])
                tokens_processed += len(batch[row]) + int(n_generated)
                text = tokenizer.decode(continuation, skip_special_tokens=True)
                texts[index] = cut_at_stop_strings(text, stop_strings).strip()
            if on_batch is not None:
                on_batch(len(batch))
    if capped_batches > 1:
        log.warning("generation was capped by the context length in %d batches", capped_batches)
    return Generations(texts=texts, tokens_processed=tokens_processed)


@dataclass(frozen=True)
class SampledGenerations:
    # Per prompt, in input order: its continuations (as Generations.texts), sample 0 first.
    samples: list[list[str]]
    # Over every sample's pass, each counted as Generations.tokens_processed.
    tokens_processed: int


def is_greedy(sampling) -> bool:
    """Whether `sampling` (a SamplingConfig, or None) decodes greedily: temperature 0 (validation allows it only
    with one sample)."""
    return sampling is None or sampling.temperature == 0


def sample_seed(seed: int, sample_index: int) -> int:
    """The torch seed of one sample: an independent stream per (seed, index), so that the samples of seed s share
    none with those of seed s + 1 (as `seed + index` would)."""
    return int(np.random.SeedSequence([seed, sample_index]).generate_state(1)[0])


def _sampling_arguments(sampling) -> dict[str, object]:
    # top_k=0 turns top-k off: a model's generation_config (Llama-3's, say) may set one, and the settings name only
    # temperature and top_p.
    return {
        "do_sample": True,
        "num_beams": 1,
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": 0,
    }


def sampled_decode(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    sampling,
    batch_size: int = 32,
    stop_strings: Sequence[str] = (),
    on_batch: Callable[[int], None] | None = None,
    *,
    static_cache: bool | None = None,
) -> SampledGenerations:
    """`sampling.num_samples` continuations of each prompt (`sampling`: a SamplingConfig); when it is greedy
    (`is_greedy`), the one continuation is `greedy_decode`'s, by the same call.

    Sample i is one pass of the batched decoder over all prompts, with torch seeded by `sample_seed(seed, i)` inside
    `torch.random.fork_rng` (the caller's random state is left as it was). Its texts are therefore reproducible for
    the same seed, prompts, model, batch_size, device and library versions, and do not depend on num_samples. They
    do depend on the batch composition: generate() draws each step's tokens for the whole batch at once, so a prompt
    batched with others (another batch_size, or other prompts) receives other random numbers. `on_batch` is called
    after every batch of every pass (num_samples times per prompt).
    """
    if is_greedy(sampling):
        if sampling is not None and sampling.num_samples != 1:
            raise ValueError(
                f"num_samples={sampling.num_samples} at temperature 0 would decode the same greedy answer "
                f"{sampling.num_samples} times; set a temperature > 0"
            )
        generated = greedy_decode(
            model,
            tokenizer,
            prompts,
            max_new_tokens,
            batch_size,
            stop_strings,
            on_batch,
            static_cache=static_cache,
        )
        return SampledGenerations([[text] for text in generated.texts], generated.tokens_processed)
    device = model_device(model)
    forked_cuda_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    samples: list[list[str]] = [[] for _ in prompts]
    tokens_processed = 0
    for sample_index in range(sampling.num_samples):
        with torch.random.fork_rng(devices=forked_cuda_devices):
            torch.manual_seed(sample_seed(int(sampling.seed), sample_index))
            generated = _decode(
                model,
                tokenizer,
                prompts,
                max_new_tokens,
                batch_size,
                stop_strings,
                on_batch,
                static_cache,
                _sampling_arguments(sampling),
            )
        for prompt_samples, text in zip(samples, generated.texts, strict=True):
            prompt_samples.append(text)
        tokens_processed += generated.tokens_processed
    return SampledGenerations(samples, tokens_processed)


def declared_context_length(model: torch.nn.Module, tokenizer) -> int | None:
    """The model's context length, or None when neither it (a module without a config) nor its tokenizer declares
    one: then generation is not capped."""
    if getattr(model, "config", None) is None:
        return None
    try:
        return model_context_length(model, tokenizer)
    except ValueError:
        return None


def new_token_budget(prompt_width: int, max_new_tokens: int, context_length: int | None) -> int:
    """How many new tokens fit after a (left-padded) batch of `prompt_width` columns: positions past the model's
    context are never generated, since past max_position_embeddings a model extrapolates (RoPE) or fails (learned
    positions)."""
    if context_length is None:
        return max_new_tokens
    return max(0, min(max_new_tokens, context_length - prompt_width))


def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> Generations:
    """Greedy answer to each question, prompted in the tokenizer's format (plain or chat), with token counts."""
    prompts = [encode_prompt(tokenizer, question) for question in questions]
    return greedy_decode(model, tokenizer, prompts, max_new_tokens, batch_size, on_batch=on_batch)


def sample_answers(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    sampling,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> SampledGenerations:
    """`generate_answers` with `sampled_decode`: `sampling.num_samples` answers to each question."""
    prompts = [encode_prompt(tokenizer, question) for question in questions]
    return sampled_decode(model, tokenizer, prompts, max_new_tokens, sampling, batch_size, on_batch=on_batch)


def greedy_generate(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answer text for each question, in input order."""
    return generate_answers(model, tokenizer, questions, max_new_tokens, batch_size).texts
