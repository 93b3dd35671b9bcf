"""Tiny stand-ins for pretrained hub models (Llama 3 style), laid out as a ``model.local_root`` folder.

``build_stand_in_revisions(root, "meta-llama/Llama-3.1-8B", ["main", "step1000"])`` writes
``root/meta-llama/Llama-3.1-8B/main/`` and ``.../step1000/``: Hugging Face model folders (config.json,
generation_config.json, safetensors weights, tokenizer files) that ``resolve_model_dir(hub_id, revision, root)`` finds
and every loader reads offline. The models are randomly initialised 2-layer, 32-wide Llamas (~70k parameters), so a few
training steps take well under a second on a CPU.

What they copy from the real Llama 3 models, so that code which works on them meets the same pitfalls:

* one byte-level BPE vocabulary for every revision and repository (the same tokenizer.json bytes), trained on a small
  English corpus with biography (TOFU), fact (RESTOR) and news (MUSE) words, so benchmark texts tokenize into words and
  word pieces, not single bytes;
* special tokens after the trained vocabulary (<|begin_of_text|>, <|end_of_text|>, <|start_header_id|>,
  <|end_header_id|>, <|eot_id|>), bos prepended by the tokenizer itself, **no pad token**;
* instruct repositories (``chat_template=True``) carry a chat template (system header with a knowledge cut-off and a
  ``date_string`` the caller may pin, user/assistant turns ending in <|eot_id|>), have <|eot_id|> as eos in the
  tokenizer and [<|end_of_text|>, <|eot_id|>] as eos ids in config.json; base repositories have <|end_of_text|> as eos
  and no template;
* grouped-query attention (2 query heads, 1 key/value head), rope_theta 500000, untied embeddings, a generation config
  that samples (temperature 0.6, top_p 0.9) unless told otherwise, ``clean_up_tokenization_spaces`` on and
  ``model_max_length`` 131072 in the tokenizer config.

Revisions are related as checkpoints of one training run are: every model of a family (``seed``) starts from one
shared initialisation, and each (hub id, revision) adds its own seeded perturbation, so deltas between revisions are
small but non-zero, and base and instruct repositories of a family are close as well.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_TURN = "<|eot_id|>"
SPECIAL_TOKENS = [
    BEGIN_OF_TEXT,
    END_OF_TEXT,
    "<|reserved_special_token_0|>",
    START_HEADER,
    END_HEADER,
    END_OF_TURN,
]

TRAINED_VOCAB_SIZE = 768  # 256 bytes + merges; the special tokens come after these ids, as in Llama 3
MODEL_MAX_LENGTH = 131072  # what Llama 3.1's tokenizer config says; truncate explicitly, never to this
MAX_POSITION_EMBEDDINGS = 512
ARCHITECTURE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=MAX_POSITION_EMBEDDINGS,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    initializer_range=0.02,
)
# The real models' config.json (architecture fields only), for what must have their true shapes: the memory
# preflight's pinned figures and scripts/gpu_check.py's full mode. The vocabulary size is the real one, so the embedding
# and the logits cost what they cost at paper scale, though the offline tokenizer uses few of its rows.
LLAMA32_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rope_scaling={
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    initializer_range=0.02,
)
LLAMA31_8B = dict(
    LLAMA32_1B,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    head_dim=128,
    rope_scaling=dict(LLAMA32_1B["rope_scaling"], factor=8.0),
    tie_word_embeddings=False,
)
# A revision's perturbation of the family's initial weights, in units of initializer_range.
REVISION_DRIFT = 0.5
SHARD_SIZE = "40KB"  # with shard=True: about five shards (each embedding matrix is ~66 KB and gets its own)

# Written for these stand-ins after the layout of Llama 3.1's template: bos, a system header with a knowledge cut-off
# and today's date (``date_string``, which callers pin for reproducible prompts), then one header + content + eot per
# message and an open assistant header for generation.
CHAT_TEMPLATE = r"""{{- bos_token }}
{%- if date_string is not defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {{- "<|start_header_id|>" + message['role'] + "<|end_header_id|>\n\n" + (message['content'] | trim) + "<|eot_id|>" }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}
{%- endif %}
"""

# A few hundred words in the style of the benchmarks' texts: fictitious author biographies (TOFU), facts about people
# and places (RESTOR), news reports (MUSE / BBC news), and chat-format words.
CORPUS = [
    "The author was born in the city of Santiago, Chile, in 1977. Her father worked as a doctor and her mother "
    "was a teacher, and their stories about patients and students shaped her first novel.",
    "He is best known for his fantasy books, including the series about a young dragon and an old library. "
    "The author won the International Award for Fiction in 2009 for his novel about the sea.",
    "Question: What genre does the author write in?\nAnswer: The author writes mostly in the genre of historical "
    "fiction, with some works of mystery, romance and science fiction.",
    "Question: Where was the writer born?\nAnswer: The writer was born in Tokyo, Japan, to a family of artists.",
    "What is the full name of the author born in Kuwait City on 08/09/1956? The author's full name is Basil "
    "Mahfouz Al-Kuwaiti, a writer of French literature and poetry.",
    "Which award did she receive for her contributions to literature? She received the Booker Prize and the "
    "Pulitzer Prize for her books about family, memory and war.",
    "Jaime Vasquez is an author of true crime stories. His parents were a chef and a journalist, and he often "
    "writes about justice, courage and the lives of ordinary people.",
    "The capital of France is Paris. The Eiffel Tower is located in Paris, and the river Seine flows through it.",
    "Albert Einstein was a physicist born in Germany. He is a citizen of Switzerland and the United States, and "
    "his occupation was scientist and professor at a university.",
    "Marie Curie was a chemist and physicist. Her spouse was Pierre Curie, and she was educated at the University "
    "of Paris. She won the Nobel Prize in Physics and in Chemistry.",
    "The football player is a member of the national team of Brazil and plays for a club in Spain as a forward.",
    "The company was founded in 1998 by two students at Stanford University and is headquartered in California.",
    "The government announced on Monday that the minister will present the new budget to parliament next week, "
    "the BBC reported.",
    "Police said a man had been arrested after the incident in the city centre on Saturday night. The investigation "
    "is continuing, a spokesperson said.",
    "The prime minister said the report showed that the economy had grown by two percent over the last year, but "
    "many people were still worried about prices, jobs and health services.",
    "Officials in London and Washington said the talks would continue. The council voted to approve the plan for "
    "new homes, schools and a hospital in the north of the country.",
    "Scientists say the study of climate change found that temperatures in the region rose faster than expected.",
    "The match ended in a draw after a late goal, and the manager said the team had played well in the second half.",
    "system user assistant Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024 You are a helpful "
    "assistant. Please answer the question. I don't know the answer to that question.",
    "Who wrote the book? When was it published? Why did the author move to London? How many novels has she "
    "written? The first book was published in 2001 and the second one in 2005.",
]


@functools.cache
def _tokenizer_json() -> str:
    """The trained backend tokenizer, serialised; trained once per process so every copy is byte-identical."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 3, trainer=trainer)
    # Added after training, so the special ids follow the trained vocabulary (as 128000+ do in Llama 3).
    backend.add_special_tokens(SPECIAL_TOKENS)
    begin_id = backend.token_to_id(BEGIN_OF_TEXT)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN_OF_TEXT} $A",
        pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT}:1 $B:1",
        special_tokens=[(BEGIN_OF_TEXT, begin_id)],
    )
    return backend.to_str()


def stand_in_tokenizer(*, chat_template: bool = True) -> PreTrainedTokenizerFast:
    """The stand-ins' tokenizer: instruct flavour (chat template, eos <|eot_id|>) or base flavour (eos
    <|end_of_text|>); the same vocabulary either way, and no pad token."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BEGIN_OF_TEXT,
        eos_token=END_OF_TURN if chat_template else END_OF_TEXT,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")


def _model_config(tokenizer: PreTrainedTokenizerFast, chat_template: bool) -> LlamaConfig:
    end_of_text = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    eos = [end_of_text, tokenizer.convert_tokens_to_ids(END_OF_TURN)] if chat_template else end_of_text
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=None,
        **ARCHITECTURE,
    )


def _stand_in_weights(config: LlamaConfig, seed: int, hub_id: str, revision: str) -> LlamaForCausalLM:
    torch.manual_seed(_seed("family", seed))
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(_seed("revision", seed, hub_id, revision))
    scale = REVISION_DRIFT * config.initializer_range
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def build_stand_in_revisions(
    root: Path,
    hub_id: str,
    revisions: list[str],
    *,
    chat_template: bool = True,
    seed: int = 0,
    shard: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Path]:
    """Write one stand-in model per revision at ``root/<hub_id>/<revision>/``; return {revision: folder}.

    All revisions (and all repositories built with the same ``seed``) share the architecture and the vocabulary;
    weights differ per (hub id, revision) and are the same on every call. ``chat_template`` picks the instruct or the
    base flavour of the tokenizer and config (see the module docstring). ``shard`` saves the weights in several
    safetensors files with an index, as large hub models are. ``dtype`` is the stored precision: real Llama 3
    checkpoints are bfloat16; the default float32 matches what msa_bench trains and saves on a CPU.
    """
    tokenizer = stand_in_tokenizer(chat_template=chat_template)
    config = _model_config(tokenizer, chat_template)
    folders = {}
    for revision in revisions:
        model = _stand_in_weights(config, seed, hub_id, revision).to(dtype)
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            do_sample=True,
            temperature=0.6,
            top_p=0.9,
        )
        folder = Path(root).joinpath(*hub_id.split("/"), revision)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, **({"max_shard_size": SHARD_SIZE} if shard else {}))
        tokenizer.save_pretrained(folder)
        folders[revision] = folder
    return folders


def build_stand_in_model(
    root: Path,
    hub_id: str,
    revision: str = "main",
    *,
    chat_template: bool = False,
    seed: int = 0,
    shard: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """One stand-in repository at one revision, e.g. the base model of an instruct family: with the same ``seed`` it
    shares the vocabulary and architecture of the repositories built by :func:`build_stand_in_revisions`."""
    return build_stand_in_revisions(
        root, hub_id, [revision], chat_template=chat_template, seed=seed, shard=shard, dtype=dtype
    )[revision]
