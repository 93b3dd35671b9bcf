"""A small byte-level BPE tokenizer trained on the project's own corpus.

Byte-level BPE covers every string (no unknown tokens), so any benchmark text round-trips through encode/decode.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, BOS_TOKEN]


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for transformers.

    The result depends only on the texts (and their order), so the same corpus gives the same vocabulary.
    """
    backend = Tokenizer(models.BPE())
    # No prefix space: the prompt format puts the space into the answer text itself (see formatting.py).
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols up front, so strings unseen in training still encode.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        # Keep decode the exact inverse of encode: the default clean-up would rewrite spaces before punctuation.
        clean_up_tokenization_spaces=False,
    )
