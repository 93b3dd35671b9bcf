"""The MUSE suite: prompt formats against open-unlearning's logs, exact values on a scripted model, and the batched
suite on a tiny random Llama."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from msa_bench.config.schema import MetricsConfig, MuseMetricsConfig
from msa_bench.data.muse import (
    KNOWMEM_FORGET,
    KNOWMEM_FORGET_ICL,
    KNOWMEM_RETAIN,
    KNOWMEM_RETAIN_ICL,
    PRIVLEAK_FORGET,
    PRIVLEAK_HOLDOUT,
    VERBMEM_FORGET,
    load_muse_eval_sets,
    muse_sets_from_tofu_items,
)
from msa_bench.metrics import muse
from msa_bench.metrics.core.attacks import attack_scores
from msa_bench.metrics.core.decoding import SampledGenerations, greedy_decode
from msa_bench.metrics.core.result import EvalResult
from msa_bench.metrics.core.scoring import AnswerTokenStatistics
from msa_bench.metrics.registry import CROSS_MODEL_METRICS, SUITES, suite_of
from tests.tiny_models import tiny_eval_llama, tiny_tokenizer

REPO_ROOT = Path(__file__).parents[1]
MUSE_NEWS_DIR = REPO_ROOT.parent / "shared" / "data" / "muse-news"
MUSE_LOG = REPO_ROOT.parent / "shared" / "reference" / "open-unlearning" / "muse_Llama-2-7b-hf_News_target"
needs_muse_news = pytest.mark.skipif(
    not (MUSE_NEWS_DIR.is_dir() and (MUSE_LOG / "MUSE_EVAL.json").is_file()),
    reason=f"MUSE-News data or open-unlearning's MUSE log not found beside the repo ({MUSE_NEWS_DIR})",
)

SENTENCES = [
    "Question: Who wrote the novel about the lighthouse keeper?\nAnswer: The novel was written by Mira Castellan.",
    "Question: Where was the author born?\nAnswer: She was born in Lisbon, Portugal, in 1961.",
    "The capital of France is Paris. Rome and Madrid are capitals too. The city of Paris is old.",
    "alpha beta gamma delta omega. Once upon a time there was a quiet village by the sea.",
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_eval_llama(tokenizer)


def make_settings(**muse_overrides) -> MetricsConfig:
    muse_settings = dict(verbmem_max_new_tokens=6, knowmem_max_new_tokens=5, icl_shots=2)
    muse_settings.update(muse_overrides)
    return MetricsConfig(
        name="muse", names=list(muse.MUSE_METRIC_NAMES), batch_size=3, muse=MuseMetricsConfig(**muse_settings)
    )


def qa_item(subject: str, index: int) -> dict:
    return {
        "question": f"Where was {subject} born in {index}?",
        "answer": f"{subject} was born in Lisbon {index}.",
    }


@pytest.fixture(scope="module")
def eval_sets() -> dict[str, list[dict]]:
    return muse_sets_from_tofu_items(
        forget_items=[qa_item("Mira", i) for i in range(4)],
        retain_items=[qa_item("Ann", i) for i in range(3)],
        holdout_items=[qa_item("Bob", i) for i in range(4)],
        icl_items=[qa_item("Cy", i) for i in range(3)],
    )


# --- formats against open-unlearning's logs ---------------------------------------------------------------------------


@needs_muse_news
@pytest.mark.parametrize(
    ("metric", "qa_set", "icl_set"),
    [
        ("forget_knowmem_ROUGE", KNOWMEM_FORGET, KNOWMEM_FORGET_ICL),
        ("retain_knowmem_ROUGE", KNOWMEM_RETAIN, KNOWMEM_RETAIN_ICL),
    ],
)
def test_knowmem_prompt_is_open_unlearnings_logged_input(metric, qa_set, icl_set):
    sets = load_muse_eval_sets(MUSE_NEWS_DIR, names=[qa_set, icl_set])
    logged = json.loads((MUSE_LOG / "MUSE_EVAL.json").read_text())[metric]["value_by_index"]
    for index in ("0", "1", "2", "50", "99"):
        item = sets[qa_set][int(index)]
        assert muse.knowmem_prompt(sets[icl_set], item["question"]) == logged[index]["input"]
        assert item["answer"] == logged[index]["ground_truth"]
    # (Forget item 15 differs only because open-unlearning logs decode(..., clean_up_tokenization_spaces=True),
    # which rewrites "a 'safer" as "a'safer"; the prompt it fed the model is ours.)


@needs_muse_news
def test_rouge_reproduces_open_unlearnings_muse_values():
    """Our ROUGE (stemmed, ROUGE-L F1 as agg_value) on open-unlearning's logged generations gives its numbers."""
    log = json.loads((MUSE_LOG / "MUSE_EVAL.json").read_text())
    summary = json.loads((MUSE_LOG / "MUSE_SUMMARY.json").read_text())
    for metric in ("forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE"):
        entries = list(log[metric]["value_by_index"].values())
        result = EvalResult()
        greedy = SampledGenerations(samples=[[e["generation"]] for e in entries], tokens_processed=0)
        muse._rouge_into(result, metric, "x", "logged", greedy, [e["ground_truth"] for e in entries])
        assert result.metrics[metric] == pytest.approx(summary[metric], abs=1e-12)


# --- pure pieces --------------------------------------------------------------------------------------------------


def test_attack_scores_by_hand():
    log_probs = np.array([-1.0, -2.0, -3.0, -4.0, -5.0])
    statistics = AnswerTokenStatistics(
        label_log_probs=[log_probs],
        argmax_matches=[np.ones(5, dtype=bool)],
        vocab_log_prob_means=[np.full(5, -1.0)],
        vocab_log_prob_variances=[np.full(5, 4.0)],
        tokens_processed=6,
    )
    assert attack_scores("loss", statistics, 0.4, texts=["t"], drop_eos=False)[0] == pytest.approx(3.0)
    # The lowest 40% of five log-probs are the two lowest: -(-5 - 4) / 2.
    assert attack_scores("min_k", statistics, 0.4, texts=["t"], drop_eos=False)[0] == pytest.approx(4.5)
    # Standardised: (lp + 1) / 2 -> lowest two are -2 and -1.5.
    assert attack_scores("min_k_plus_plus", statistics, 0.4, texts=["t"], drop_eos=False)[0] == pytest.approx(
        1.75
    )
    text = "some text to compress"
    expected_zlib = 3.0 / len(__import__("zlib").compress(text.encode()))
    assert attack_scores("zlib", statistics, 0.4, texts=[text], drop_eos=False)[0] == pytest.approx(
        expected_zlib
    )


def test_knowmem_prompt_drops_the_earliest_examples_to_fit(tokenizer):
    shots = [qa_item("Cy", i) for i in range(3)]
    full_ids, n_full = muse.knowmem_prompt_ids(tokenizer, shots, "Who?", max_tokens=10_000)
    assert n_full == 3
    assert tokenizer.decode(full_ids, skip_special_tokens=True) == muse.knowmem_prompt(shots, "Who?")[:-1]
    one_shot_ids, _ = muse.knowmem_prompt_ids(tokenizer, shots[2:], "Who?", max_tokens=10_000)
    ids, n_shots = muse.knowmem_prompt_ids(tokenizer, shots, "Who?", max_tokens=len(one_shot_ids))
    assert (ids, n_shots) == (one_shot_ids, 1)
    ids, n_shots = muse.knowmem_prompt_ids(tokenizer, shots, "Who?" * 50, max_tokens=8)
    assert n_shots == 0 and len(ids) == 8 and ids[0] == tokenizer.bos_token_id


def test_unknown_metric_and_missing_set_are_reported(model, tokenizer, eval_sets):
    with pytest.raises(ValueError, match="cross-model"):
        muse.evaluate_muse(model, tokenizer, eval_sets, ["muse_privleak"], make_settings())
    partial = {name: items for name, items in eval_sets.items() if name != PRIVLEAK_HOLDOUT}
    with pytest.raises(ValueError, match="muse_privleak_holdout.*muse_mia_min_k"):
        muse.evaluate_muse(model, tokenizer, partial, ["muse_mia_min_k"], make_settings())


def test_suite_and_privleak_are_registered():
    assert SUITES["muse"].evaluate is muse.evaluate_muse
    assert suite_of("forget_verbmem_ROUGE").name == "muse"
    assert SUITES["muse"].required_sets(["muse_mia_zlib", "retain_knowmem_ROUGE"]) == {
        PRIVLEAK_FORGET,
        PRIVLEAK_HOLDOUT,
        KNOWMEM_RETAIN,
        KNOWMEM_RETAIN_ICL,
    }
    privleak = CROSS_MODEL_METRICS["muse_privleak"]
    assert privleak.needs == ("muse_mia_min_k",)
    # open-unlearning's MUSE-News logs: target min-k AUC 0.9991 vs retrain 0.5236 gave privleak -99.81108310247458
    # (it adds 1e-10 to the denominator, hence the 2e-8 difference).
    value = privleak.compute(
        {"metrics": {"muse_mia_min_k": 0.9991}}, {"metrics": {"muse_mia_min_k": 0.5236000000000001}}, None
    )
    assert value == pytest.approx(-99.81108310247458, abs=1e-6)


# --- exact values on a scripted model -----------------------------------------------------------------------------

SCRIPT_LOGIT = 10.0


class ScriptedLM(torch.nn.Module):
    """Predicts the next token from a table keyed by the exact (unpadded) prefix, eos when the prefix is unknown.

    Logits are SCRIPT_LOGIT on the predicted token and 0 elsewhere. `generate` is greedy with the same per-row
    stopping semantics as transformers (finished rows are filled with pads)."""

    def __init__(self, vocab_size: int, eos_token_id: int, context_length: int = 4096) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.config = SimpleNamespace(max_position_embeddings=context_length)
        self.vocab_size, self.eos_token_id = vocab_size, eos_token_id
        self.table: dict[tuple[int, ...], int] = {}

    def predict(self, prefix: list[int], token: int) -> None:
        key = tuple(prefix)
        assert self.table.get(key, token) == token, "conflicting script"
        self.table[key] = token

    def memorise(self, context: list[int], continuation: list[int]) -> None:
        """After `context`, produce `continuation` and then eos."""
        sequence = list(context) + list(continuation) + [self.eos_token_id]
        for position in range(len(context), len(sequence)):
            self.predict(sequence[:position], sequence[position])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for row in range(input_ids.shape[0]):
            positions = torch.nonzero(attention_mask[row]).squeeze(1).tolist()
            ids = input_ids[row, positions].tolist()
            for offset, position in enumerate(positions):
                logits[row, position, self.table.get(tuple(ids[: offset + 1]), self.eos_token_id)] = (
                    SCRIPT_LOGIT
                )
        return SimpleNamespace(logits=logits)

    def generate(
        self,
        input_ids,
        attention_mask,
        max_new_tokens,
        pad_token_id,
        eos_token_id,
        stopping_criteria=None,
        **_,
    ):
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for _step in range(max_new_tokens):
            next_ids = self(input_ids, attention_mask).logits[:, -1].argmax(dim=-1)
            next_ids = torch.where(finished, torch.full_like(next_ids, pad_token_id), next_ids)
            input_ids = torch.cat([input_ids, next_ids[:, None]], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(next_ids[:, None])], dim=1)
            finished |= next_ids == eos_token_id
            if stopping_criteria is not None:
                finished |= stopping_criteria(input_ids, None)
            if finished.all():
                break
        return input_ids


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_scripted_model_gives_exact_verbmem_rouge_es_and_em(tokenizer):
    fake = ScriptedLM(len(tokenizer), tokenizer.eos_token_id)
    items = [
        {"prompt": "Once upon a time", "gt": "alpha beta gamma delta"},
        {"prompt": "The capital of France", "gt": "is Paris. Rome and Madrid"},
    ]
    sets = {VERBMEM_FORGET: items}
    context_length = muse.model_context_length(fake, tokenizer)
    sequences = muse.verbmem_sequences(tokenizer, items, context_length)

    # Item 0 continues with one word wrong ("omega"); teacher-forced it also misses the next gt token.
    generated = ids_of(tokenizer, " alpha beta omega delta")
    gt_ids = sequences[0].target_ids
    first_wrong = next(j for j, (a, b) in enumerate(zip(generated, gt_ids, strict=False)) if a != b)
    wrong = {first_wrong, first_wrong + 1}
    fake.memorise(sequences[0].context_ids, generated)
    for j, token in enumerate(gt_ids):
        if j not in wrong:
            fake.predict(sequences[0].context_ids + gt_ids[:j], token)
    # Item 1 is memorised verbatim.
    fake.memorise(sequences[1].context_ids, sequences[1].target_ids)

    result = muse.evaluate_muse(
        fake,
        tokenizer,
        sets,
        ["forget_verbmem_ROUGE", "muse_extraction_strength", "muse_exact_memorization"],
        make_settings(verbmem_max_new_tokens=64),
    )
    assert result.generations[VERBMEM_FORGET] == ["alpha beta omega delta", "is Paris. Rome and Madrid"]
    # ROUGE-L F1 of 3 of 4 words in order, then a perfect continuation.
    assert result.per_item["forget_verbmem_ROUGE"] == pytest.approx([0.75, 1.0])
    n_gt = len(gt_ids)
    assert result.per_item["muse_extraction_strength"] == pytest.approx([1 - (first_wrong + 2) / n_gt, 1.0])
    assert result.per_item["muse_exact_memorization"] == pytest.approx([1 - 2 / n_gt, 1.0])
    assert result.metrics["muse_exact_memorization"] == pytest.approx((1 - 2 / n_gt + 1) / 2)


def test_scripted_model_gives_exact_knowmem_rouge_with_stop_strings(tokenizer):
    fake = ScriptedLM(len(tokenizer), tokenizer.eos_token_id)
    icl = [
        {"question": "Where is Rome?", "answer": "Italy"},
        {"question": "Where is Lisbon?", "answer": "Portugal"},
    ]
    qa = [
        {"question": "What is the capital of France?", "answer": "Paris"},
        {"question": "Which city is old?", "answer": "Rome"},
        {"question": "Who wrote the novel?", "answer": "Mira Castellan"},
    ]
    continuations = [
        " Paris\n\nQuestion: Where is Madrid?",  # cut at the blank line
        " the city of Rome\nQuestion: what",  # cut at "\nQuestion"
        " Madrid",  # ends with eos
    ]
    for item, continuation in zip(qa, continuations, strict=True):
        prompt_ids, n_shots = muse.knowmem_prompt_ids(tokenizer, icl, item["question"], 4096)
        assert n_shots == 2
        fake.memorise(prompt_ids, ids_of(tokenizer, continuation))
    sets = {KNOWMEM_RETAIN: qa, KNOWMEM_RETAIN_ICL: icl}
    result = muse.evaluate_muse(
        fake, tokenizer, sets, ["retain_knowmem_ROUGE"], make_settings(knowmem_max_new_tokens=64)
    )
    assert result.generations[KNOWMEM_RETAIN] == ["Paris", "the city of Rome", "Madrid"]
    # "the city of Rome" vs "Rome": precision 1/4, recall 1 -> F1 0.4.
    assert result.per_item["retain_knowmem_ROUGE"] == pytest.approx([1.0, 0.4, 0.0])
    assert result.per_item["retain_knowmem_rougeL_recall"] == pytest.approx([1.0, 1.0, 0.0])
    assert result.metrics["retain_knowmem_ROUGE"] == pytest.approx(1.4 / 3)


def test_scripted_model_that_memorised_the_forget_texts_is_fully_exposed(tokenizer):
    fake = ScriptedLM(len(tokenizer), tokenizer.eos_token_id)
    forget = [{"text": "The capital of France is Paris."}, {"text": "Rome and Madrid are capitals too."}]
    holdout = [{"text": "She was born in Lisbon."}, {"text": "Once upon a time there was a village."}]
    forget_ids = [ids_of(tokenizer, item["text"]) for item in forget]
    for ids in forget_ids:
        # Every token but the first: after bos alone a prefix-keyed model can only ever predict one text.
        for position in range(1, len(ids)):
            fake.predict([tokenizer.bos_token_id] + ids[:position], ids[position])
    names = [f"muse_mia_{attack}" for attack in muse.MIA_ATTACKS]
    settings = make_settings()
    result = muse.evaluate_muse(
        fake, tokenizer, {PRIVLEAK_FORGET: forget, PRIVLEAK_HOLDOUT: holdout}, names, settings
    )
    assert result.metrics == {name: 1.0 for name in names}
    # One-hot logits: a predicted token costs log(e^L + V - 1) - L, any other token log(e^L + V - 1).
    wrong_nll = math.log(math.exp(SCRIPT_LOGIT) + len(tokenizer) - 1)
    memorised_nll = wrong_nll - SCRIPT_LOGIT
    n_tokens = [len(ids) for ids in forget_ids]
    n_lowest = [max(1, int(n * settings.mia_k)) for n in n_tokens]
    assert result.per_item["muse_mia_loss_forget"] == pytest.approx(
        [(wrong_nll + (n - 1) * memorised_nll) / n for n in n_tokens]
    )
    assert result.per_item["muse_mia_min_k_forget"] == pytest.approx(
        [(wrong_nll + (m - 1) * memorised_nll) / m for m in n_lowest]
    )
    assert result.per_item["muse_mia_loss_holdout"] == pytest.approx([wrong_nll, wrong_nll])


# --- the suite on a tiny Llama ------------------------------------------------------------------------------------


def test_evaluate_muse_returns_every_metric_in_range(model, tokenizer, eval_sets):
    result = muse.evaluate_muse(model, tokenizer, eval_sets, list(muse.MUSE_METRIC_NAMES), make_settings())
    assert list(result.metrics) == [
        "forget_verbmem_ROUGE",
        "forget_knowmem_ROUGE",
        "retain_knowmem_ROUGE",
        "muse_extraction_strength",
        "muse_exact_memorization",
        "muse_mia_loss",
        "muse_mia_zlib",
        "muse_mia_min_k",
        "muse_mia_min_k_plus_plus",
    ]
    assert all(0.0 <= value <= 1.0 for value in result.metrics.values()), result.metrics
    assert len(result.per_item["muse_extraction_strength"]) == len(eval_sets[VERBMEM_FORGET])
    assert len(result.per_item["retain_knowmem_ROUGE"]) == len(eval_sets[KNOWMEM_RETAIN])
    for attack in muse.MIA_ATTACKS:
        assert len(result.per_item[f"muse_mia_{attack}_forget"]) == len(eval_sets[PRIVLEAK_FORGET])
        assert len(result.per_item[f"muse_mia_{attack}_holdout"]) == len(eval_sets[PRIVLEAK_HOLDOUT])
    assert set(result.generations) == {VERBMEM_FORGET, KNOWMEM_FORGET, KNOWMEM_RETAIN}
    assert result.tokens_processed > 0
    # A model against itself leaks nothing, by definition.
    evaluation = result.to_dict()
    assert CROSS_MODEL_METRICS["muse_privleak"].compute(evaluation, evaluation, make_settings()) == 0.0


def test_only_the_requested_passes_run(model, tokenizer, eval_sets):
    result = muse.evaluate_muse(model, tokenizer, eval_sets, ["muse_mia_min_k"], make_settings())
    assert list(result.metrics) == ["muse_mia_min_k"]
    assert result.generations == {}
    assert set(result.per_item) == {"muse_mia_min_k_forget", "muse_mia_min_k_holdout"}


def test_batched_generation_equals_one_by_one_for_icl_prompts(model, tokenizer, eval_sets):
    shots = eval_sets[KNOWMEM_FORGET_ICL][:2]
    prompts = [
        muse.knowmem_prompt_ids(tokenizer, shots, item["question"], 120)[0]
        for item in eval_sets[KNOWMEM_FORGET] + eval_sets[KNOWMEM_RETAIN]
    ]
    prompts.append(prompts[0][:-5])  # a shorter prompt, so batches are padded
    unstopped = greedy_decode(model, tokenizer, prompts, 8, batch_size=1).texts
    # A random model never writes "\n\n"; add a stop string it does write, so rows of one batch stop at different
    # steps and the per-row stopping is exercised.
    stop_strings = (*muse.KNOWMEM_STOP_STRINGS, unstopped[0][2])
    batched = greedy_decode(model, tokenizer, prompts, 8, batch_size=4, stop_strings=stop_strings)
    single = greedy_decode(model, tokenizer, prompts, 8, batch_size=1, stop_strings=stop_strings)
    assert batched.texts == single.texts
    assert batched.tokens_processed == single.tokens_processed
    batched = batched.texts
    assert batched != unstopped and batched[0] == unstopped[0].split(unstopped[0][2])[0].strip()


def test_long_texts_are_cut_to_the_context_with_a_warning(model, tokenizer, caplog):
    long_text = " ".join(["Once upon a time there was a quiet village by the sea."] * 40)
    sets = {
        VERBMEM_FORGET: [{"prompt": long_text, "gt": long_text}, {"prompt": "Once upon", "gt": "a time"}],
        PRIVLEAK_FORGET: [{"text": long_text}, {"text": "The capital of France is Paris."}],
        PRIVLEAK_HOLDOUT: [{"text": long_text + " Rome."}, {"text": "Rome and Madrid are capitals too."}],
    }
    context_length = muse.model_context_length(model, tokenizer)
    assert context_length == 128
    sequences = muse.verbmem_sequences(tokenizer, sets[VERBMEM_FORGET], context_length)
    assert len(sequences[0].context_ids) + len(sequences[0].target_ids) == context_length
    assert sequences[0].context_ids[:1] == [tokenizer.bos_token_id] and len(sequences[0].context_ids) == 2
    with caplog.at_level(logging.WARNING, logger="msa_bench.metrics.muse"):
        result = muse.evaluate_muse(
            model,
            tokenizer,
            sets,
            ["forget_verbmem_ROUGE", "muse_extraction_strength", "muse_mia_min_k_plus_plus"],
            make_settings(),
        )
    assert set(result.metrics) == {
        "forget_verbmem_ROUGE",
        "muse_extraction_strength",
        "muse_mia_min_k_plus_plus",
    }
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert "muse_privleak_forget: 1 of 2 texts cut to their first 128 tokens" in warnings
    assert "muse_verbmem_forget: 1 of 2 prompts cut to their last 122 tokens" in warnings


@needs_muse_news
def test_evaluate_muse_runs_on_real_muse_news_items(model, tokenizer):
    """Two items of each MUSE-News set through a 128-token model: every long-text path on real data."""
    sets = {name: items[:2] for name, items in load_muse_eval_sets(MUSE_NEWS_DIR).items()}
    names = ["forget_verbmem_ROUGE", "retain_knowmem_ROUGE", "muse_mia_min_k", "muse_extraction_strength"]
    result = muse.evaluate_muse(model, tokenizer, sets, names, make_settings())
    assert set(result.metrics) == set(names)
    assert all(0.0 <= result.metrics[name] <= 1.0 for name in names)
