"""The complete TOFU suite: extraction strength and exact memorisation, the membership attacks, the cross-model
metrics, and the suite's entries in the cross-suite registry (tiny models, a few seconds)."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from msa_bench.config.schema import MetricsConfig
from msa_bench.data.formatting import encode_qa
from msa_bench.errors import MetricUnavailableError
from msa_bench.metrics import memorization, registry
from msa_bench.metrics.aggregates import AGGREGATE_METRICS, overall_score, utility_score
from msa_bench.metrics.core import attacks as mia
from msa_bench.metrics.core.scoring import answer_nlls, answer_token_statistics
from msa_bench.metrics.tofu_specs import TOFU_METRICS, required_eval_sets
from msa_bench.metrics.tofu_suite import TOFU_CROSS_MODEL_METRICS, evaluate_tofu
from msa_bench.pipeline.evaluation import final_metrics
from tests.tiny_models import save_tiny_fluency_classifier, tiny_eval_llama, tiny_llama, tiny_tokenizer

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "metrics"
MIA_NAMES = [f"mia_{attack}" for attack in mia.ATTACKS]

SENTENCES = [
    "Question: Who wrote the novel about the lighthouse keeper?\nAnswer: The novel was written by Mira Castellan.",
    "Question: Where was the author born?\nAnswer: She was born in Lisbon, Portugal, in 1961.",
    "Question: What genre does he write in?\nAnswer: He writes mostly science fiction and some poetry.",
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


def make_item(index: int) -> dict:
    return {
        "question": f"Who wrote book number {index}?" + " Please answer." * (index % 3),
        "answer": f"Book {index} was written by Mira Castellan" + " in Lisbon" * (index % 2) + ".",
        "paraphrased_answer": f"Mira Castellan is the author of book {index}.",
        "perturbed_answer": [f"Book {index} was written by author {j}." for j in range(2 + index % 2)],
    }


@pytest.fixture(scope="module")
def eval_sets() -> dict[str, list[dict]]:
    return {
        "forget": [make_item(index) for index in range(6)],
        "holdout": [make_item(index) for index in range(50, 56)],
        "retain": [make_item(index) for index in range(10, 13)],
        "real_authors": [make_item(index) for index in range(20, 22)],
        "world_facts": [make_item(index) for index in range(30, 32)],
    }


def settings(**overrides) -> MetricsConfig:
    values = dict(name="tofu_full", names=[], batch_size=4, max_new_tokens=4, mia_k=0.4)
    values.update(overrides)
    return MetricsConfig(**values)


# --- extraction strength and exact memorisation on scripted logits -------------------------------------------------

SCRIPTED_LOGIT = 10.0


class ScriptedModel(torch.nn.Module):
    """Teacher-forced logits with all weight on the true next token, except at chosen answer-token indices, where
    they point at the next token id instead. Index L (one past the last answer token) is the closing eos."""

    def __init__(self, vocab_size: int, encoded: list, wrong_answer_tokens: list[set[int]]):
        super().__init__()
        self.vocab_size = vocab_size
        self.sequences = [item.input_ids for item in encoded]
        prompt_lengths = [item.labels.count(-100) for item in encoded]
        self.wrong_positions = [
            {prompt_length + index for index in wrong}
            for prompt_length, wrong in zip(prompt_lengths, wrong_answer_tokens, strict=True)
        ]
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device and a gradient path

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        batch, width = input_ids.shape
        logits = torch.zeros(batch, width, self.vocab_size)
        for row in range(batch):
            ids = input_ids[row].tolist()
            index = next(i for i, sequence in enumerate(self.sequences) if ids[: len(sequence)] == sequence)
            sequence = self.sequences[index]
            for position in range(len(sequence) - 1):
                target = sequence[position + 1]
                if position + 1 in self.wrong_positions[index]:
                    target = (target + 1) % self.vocab_size
                logits[row, position, target] = SCRIPTED_LOGIT
        return SimpleNamespace(logits=logits + self.anchor)


def scripted_statistics(tokenizer, answers: list[str], wrong: list[set[int]], batch_size: int = 8):
    # A different question per item, so the scripted model can tell the sequences apart.
    questions = [f"Who wrote book {index}?" for index in range(len(answers))]
    encoded = [encode_qa(tokenizer, q, a) for q, a in zip(questions, answers, strict=True)]
    scripted = ScriptedModel(len(tokenizer), encoded, wrong)
    statistics = answer_token_statistics(
        scripted, tokenizer, questions, answers, batch_size=batch_size, with_vocab_moments=True
    )
    return statistics, [item.n_answer_tokens - 1 for item in encoded]  # answer tokens without eos


def test_scripted_extraction_strength_and_exact_memorization(tokenizer):
    answer = "The novel was written by Mira Castellan."
    _, (n_tokens,) = scripted_statistics(tokenizer, [answer], [set()])
    assert n_tokens >= 4
    cases = {
        "all correct": (set(), 1.0, 1.0),
        "only the last answer token correct": (set(range(n_tokens - 1)), 1 / n_tokens, 1 / n_tokens),
        "first token wrong": ({0}, 1 - 1 / n_tokens, (n_tokens - 1) / n_tokens),
        "a middle token wrong": ({2}, 1 - 3 / n_tokens, (n_tokens - 1) / n_tokens),
        "nothing correct": (set(range(n_tokens + 1)), 0.0, 0.0),
        "only the eos wrong (not an answer token)": ({n_tokens}, 1.0, 1.0),
    }
    statistics, _ = scripted_statistics(
        tokenizer, [answer] * len(cases), [case[0] for case in cases.values()]
    )
    strengths = memorization.extraction_strengths(statistics)
    memorisations = memorization.exact_memorizations(statistics)
    for (name, (_, expected_es, expected_em)), es, em in zip(
        cases.items(), strengths, memorisations, strict=True
    ):
        assert es == pytest.approx(expected_es), name
        assert em == pytest.approx(expected_em), name


def test_extraction_strength_hand_computed():
    # The suffix after the last mismatch (index 2) matches: k = 3 of L = 5.
    assert memorization.extraction_strength(np.array([False, True, False, True, True])) == pytest.approx(0.4)
    assert memorization.exact_memorization(np.array([False, True, False, True, True])) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        memorization.extraction_strength(np.array([], dtype=bool))


def test_scripted_token_log_probs_and_attack_scores(tokenizer):
    answer = "She was born in Lisbon."
    statistics, (n_tokens,) = scripted_statistics(tokenizer, [answer], [{0, 1}])
    vocab = len(tokenizer)
    log_partition = math.log(math.exp(SCRIPTED_LOGIT) + vocab - 1)
    right, wrong = SCRIPTED_LOGIT - log_partition, -log_partition
    expected = np.array([wrong, wrong] + [right] * (n_tokens - 2) + [right])  # answer tokens, then eos
    np.testing.assert_allclose(statistics.label_log_probs[0], expected, rtol=1e-5, atol=1e-6)

    np.testing.assert_allclose(mia.loss_scores(statistics), [-expected.mean()], rtol=1e-5, atol=1e-6)
    compressed = len(zlib.compress(answer.encode()))
    np.testing.assert_allclose(
        mia.zlib_scores(statistics, [answer]), [-expected.mean() / compressed], rtol=1e-5
    )
    # k = 0.4 of the answer tokens (eos excluded): the two wrong ones when 2 <= 0.4 * n < 3.
    k = 2.5 / n_tokens
    np.testing.assert_allclose(mia.min_k_scores(statistics, k), [-wrong], rtol=1e-5, atol=1e-6)

    # Every position has the same vocabulary distribution (one token at 10, the rest at 0).
    probs = np.full(vocab, 1.0)
    probs[0] = math.exp(SCRIPTED_LOGIT)
    probs /= probs.sum()
    log_probs = np.log(probs)
    mean = (probs * log_probs).sum()
    std = math.sqrt((probs * log_probs**2).sum() - mean**2)
    np.testing.assert_allclose(mia.min_k_plus_plus_scores(statistics, k), [-(wrong - mean) / std], rtol=1e-4)


# --- batching and the real model -----------------------------------------------------------------------------------


def test_token_statistics_batched_equal_unbatched(model, tokenizer, eval_sets):
    items = eval_sets["forget"] + eval_sets["holdout"]
    questions, answers = [i["question"] for i in items], [i["answer"] for i in items]
    batched = answer_token_statistics(
        model, tokenizer, questions, answers, batch_size=5, with_vocab_moments=True
    )
    single = answer_token_statistics(
        model, tokenizer, questions, answers, batch_size=1, with_vocab_moments=True
    )
    for field in ("label_log_probs", "vocab_log_prob_means", "vocab_log_prob_variances"):
        for left, right in zip(getattr(batched, field), getattr(single, field), strict=True):
            np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        memorization.extraction_strengths(batched), memorization.extraction_strengths(single)
    )
    np.testing.assert_array_equal(
        memorization.exact_memorizations(batched), memorization.exact_memorizations(single)
    )
    for scores in (
        lambda s: mia.loss_scores(s),
        lambda s: mia.zlib_scores(s, answers),
        lambda s: mia.min_k_scores(s, 0.4),
        lambda s: mia.min_k_plus_plus_scores(s, 0.4),
    ):
        np.testing.assert_allclose(scores(batched), scores(single), rtol=1e-5)
    # The token pass's answer NLL is the scoring module's.
    np.testing.assert_allclose(
        batched.answer_nlls(), answer_nlls(model, tokenizer, questions, answers, batch_size=3), rtol=1e-5
    )


def test_gradnorm_is_per_item_and_leaves_the_model_alone(model, tokenizer, eval_sets):
    items = eval_sets["forget"][:4]
    questions, answers = [i["question"] for i in items], [i["answer"] for i in items]
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    model.lm_head.weight.requires_grad_(False)
    scores = mia.gradnorm_scores(model, tokenizer, questions, answers)
    assert scores.shape == (4,) and (scores > 0).all()
    # One item at a time: scoring a subset in another order gives the same numbers.
    np.testing.assert_allclose(
        mia.gradnorm_scores(model, tokenizer, questions[2::-1], answers[2::-1]), scores[2::-1]
    )
    assert not model.lm_head.weight.requires_grad and not model.training
    model.lm_head.weight.requires_grad_(True)
    for name, parameter in model.named_parameters():
        assert parameter.grad is None, name
        assert torch.equal(parameter, before[name]), name


def test_attacks_report_per_item_scores_and_aucs(model, tokenizer, eval_sets):
    result = evaluate_tofu(model, tokenizer, eval_sets, MIA_NAMES, batch_size=4)
    assert set(result.metrics) == set(MIA_NAMES)
    for name in MIA_NAMES:
        assert 0.0 <= result.metrics[name] <= 1.0, name
        assert len(result.per_item[f"{name}_forget"]) == len(eval_sets["forget"])
        assert len(result.per_item[f"{name}_holdout"]) == len(eval_sets["holdout"])
        assert all(math.isfinite(score) for score in result.per_item[f"{name}_forget"])
    # Only what the attacks read was run: no generation, no sets beyond forget and holdout.
    assert result.generations == {}
    assert required_eval_sets(MIA_NAMES) == {"forget", "holdout"}
    assert "holdout" not in required_eval_sets(["model_utility", "extraction_strength"])


@pytest.fixture(scope="module")
def memorising_model(tokenizer, eval_sets):
    """The tiny Llama fine-tuned on the forget items only (the holdout items stay unseen)."""
    model = tiny_llama(len(tokenizer), tokenizer=tokenizer, seed=1)
    encoded = [encode_qa(tokenizer, i["question"], i["answer"]) for i in eval_sets["forget"]]
    width = max(len(item.input_ids) for item in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, item in enumerate(encoded):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        labels[row, : len(item.labels)] = torch.tensor(item.labels)
        attention_mask[row, : len(item.input_ids)] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(50):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def oracle_evaluation(tokenizer, eval_sets):
    """An untrained model stands in for the oracle: it has seen neither the forget nor the holdout items."""
    oracle = tiny_llama(len(tokenizer), tokenizer=tokenizer, seed=1).eval()
    names = ["forget_truth_ratio", "mia_min_k", "mia_loss"]
    return evaluate_tofu(oracle, tokenizer, eval_sets, names, batch_size=4).to_dict()


def test_memorised_forget_set_is_recognised(memorising_model, tokenizer, eval_sets):
    result = evaluate_tofu(
        memorising_model, tokenizer, eval_sets, [*MIA_NAMES, "extraction_strength", "exact_memorization"]
    )
    assert result.metrics["mia_loss"] > 0.8
    # The other attacks see it too (all reach 1.0 here; an untrained model scores 0.2-0.6).
    assert all(result.metrics[name] > 0.8 for name in MIA_NAMES)
    assert result.metrics["exact_memorization"] > 0.5 and result.metrics["extraction_strength"] > 0.0
    forget_losses = np.array(result.per_item["mia_loss_forget"])
    holdout_losses = np.array(result.per_item["mia_loss_holdout"])
    assert forget_losses.mean() < holdout_losses.mean()  # the sign convention: loss-like, members lower


def test_cross_model_metrics_against_the_oracle(memorising_model, tokenizer, eval_sets, oracle_evaluation):
    compute = {name: metric.compute for name, metric in registry.CROSS_MODEL_METRICS.items()}
    config = settings()
    # The oracle against itself: same truth-ratio distribution, same AUC, zero loss difference on every item.
    assert compute["forget_quality"](oracle_evaluation, oracle_evaluation, config) == pytest.approx(1.0)
    assert compute["privleak"](oracle_evaluation, oracle_evaluation, config) == pytest.approx(0.0)
    # All reference-attack scores are 0, a full tie: the ROC curve is the diagonal, AUC 0.5.
    assert compute["mia_reference"](oracle_evaluation, oracle_evaluation, config) == pytest.approx(0.5)

    memorised = evaluate_tofu(
        memorising_model, tokenizer, eval_sets, ["forget_truth_ratio", "mia_min_k", "mia_loss"], batch_size=4
    ).to_dict()
    # Memorising the forget set lowers its loss far more than the holdout's, relative to the oracle.
    assert compute["mia_reference"](memorised, oracle_evaluation, config) > 0.8
    # A more exposed forget set than the oracle's: privleak below 0 (towards -100).
    oracle_auc = oracle_evaluation["metrics"]["mia_min_k"]
    assert memorised["metrics"]["mia_min_k"] > oracle_auc
    assert compute["privleak"](memorised, oracle_evaluation, config) < 0.0
    with pytest.raises(MetricUnavailableError, match="mia_loss_forget"):
        compute["mia_reference"]({"metrics": {}, "per_item": {}}, oracle_evaluation, config)


# --- the suite in the registry, and metrics=tofu_full ---------------------------------------------------------------


# The metrics that read the fluency classifier, which metrics=tofu_full leaves to tofu_full_aggregates.
NEEDS_CLASSIFIER = ("forget_fluency", "utility_score", "overall_score")


def test_tofu_full_config_lists_every_tofu_metric_but_those_that_need_the_classifier():
    full = OmegaConf.load(CONF_DIR / "tofu_full.yaml")
    basic = OmegaConf.load(CONF_DIR / "tofu.yaml")
    assert full.name == "tofu_full"
    every = [*TOFU_METRICS, *TOFU_CROSS_MODEL_METRICS, *AGGREGATE_METRICS]
    assert list(full.names) == [name for name in every if name not in NEEDS_CLASSIFIER]
    assert (full.batch_size, full.max_new_tokens) == (basic.batch_size, basic.max_new_tokens)
    registry.validate_metric_names(list(full.names))


@pytest.mark.parametrize("option", ["tofu_full", "tofu_full_aggregates"])
def test_evaluate_with_all_tofu_full_names(model, tokenizer, eval_sets, option, tmp_path):
    names = list(OmegaConf.load(CONF_DIR / f"{option}.yaml").names)
    suite = registry.SUITES["tofu"]
    per_model = [n for n in names if n not in registry.CROSS_MODEL_METRICS]
    assert all(registry.suite_of(n) is suite for n in per_model)
    for name in registry.CROSS_MODEL_METRICS:
        if name in names:
            assert set(registry.CROSS_MODEL_METRICS[name].needs) <= set(per_model)
    assert suite.required_sets(per_model) == set(eval_sets)

    save_tiny_fluency_classifier(tmp_path)  # read only by tofu_full_aggregates
    config = settings(names=names, fluency_classifier=str(tmp_path))
    evaluation = suite.evaluate(model, tokenizer, eval_sets, per_model, config).to_dict()
    values, provenance = final_metrics(evaluation, evaluation, names, config)
    assert set(values) == set(names) and not provenance
    assert all(math.isfinite(value) for value in values.values())
    if option == "tofu_full_aggregates":
        fluency = values["forget_fluency"]
        assert 0 < fluency < 1 and len(evaluation["per_item"]["forget_fluency"]) == len(eval_sets["forget"])
        # (The tiny model's utility may be 0, which makes both 0: the harmonic mean's limit.)
        assert values["utility_score"] == pytest.approx(
            utility_score({"model_utility": values["model_utility"], "forget_fluency": fluency})
        )
        assert values["overall_score"] == pytest.approx(
            overall_score(values["memorization_score"], values["privacy_score"], values["utility_score"])
        )
    else:
        assert "forget_fluency" not in evaluation["metrics"]
    assert values["privacy_score"] == 1.0  # the model against itself as the oracle
    for name in ("extraction_strength", "exact_memorization"):
        assert len(evaluation["per_item"][name]) == len(eval_sets["forget"])
    # Three truth-ratio aggregations of the same per-item ratios.
    ratios = np.array(evaluation["per_item"]["retain_Truth_Ratio"])
    assert evaluation["per_item"]["retain_truth_ratio_prob_mean"] == ratios.tolist()
    assert values["retain_truth_ratio_closer_to_1"] == pytest.approx(np.minimum(ratios, 1 / ratios).mean())
    assert values["retain_truth_ratio_prob_mean"] == pytest.approx((1 / (1 + ratios)).mean())


def test_cross_model_names_are_not_computed_per_model(model, tokenizer, eval_sets):
    with pytest.raises(ValueError, match="oracle"):
        evaluate_tofu(model, tokenizer, eval_sets, ["forget_quality"])
