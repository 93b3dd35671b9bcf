"""forget_fluency (msa_bench/metrics/fluency.py): a text classifier's mean probability of its fluent class over the
forget answers the TOFU suite generates, with a tiny BERT classifier saved in tmp_path standing in for
open-unlearning's gibberish detector (which the hub would give; it is unreachable in tests). Then the errors for a
classifier that cannot be loaded, and metrics=tofu_full(_aggregates). The Utility and Overall scores it completes are
computed from a whole evaluation in tests/test_metrics_tofu_full.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from msa_bench.config.schema import MetricsConfig, SamplingConfig
from msa_bench.errors import ConfigError, ModelSourceError
from msa_bench.metrics import fluency, registry
from msa_bench.metrics.registry import Direction, metric_info
from msa_bench.metrics.tofu_specs import TOFU_METRICS
from msa_bench.metrics.tofu_suite import evaluate_tofu
from msa_bench.pipeline.evaluation import _settings_spec, evaluation_plan
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.tiny_models import save_tiny_fluency_classifier, tiny_eval_llama, tiny_tokenizer

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "metrics"
NEEDS_CLASSIFIER = ["forget_fluency", "utility_score", "overall_score"]
TEXTS = [
    "The author was born in Paris and writes novels.",
    "",  # an unlearned model often answers nothing at all
    "qwx zzv plk qwx zzv plk",
    "novels",
    "word salad of random words written by the author in Paris",
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fluency_classifier")
    save_tiny_fluency_classifier(folder)
    return folder


def settings(classifier, label=None, **overrides) -> MetricsConfig:
    values = dict(name="test", names=[], batch_size=4, max_new_tokens=6, fluency_classifier=str(classifier))
    values.update(overrides)
    return MetricsConfig(fluency_label=label, **values)


def direct_probabilities(folder: Path, texts: list[str], class_id: int) -> list[float]:
    """The classifier called as open-unlearning calls it, one text at a time (no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    probabilities = []
    with torch.no_grad():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt", return_token_type_ids=False)
            probabilities.append(torch.softmax(model(**encoded).logits, dim=-1)[0, class_id].item())
    return probabilities


# --- the classifier ------------------------------------------------------------------------------------------------


def test_fluent_probabilities_are_the_classifiers_clean_class_batched_or_not(classifier_dir):
    classifier = fluency.load_classifier(settings(classifier_dir))
    assert classifier.label_id == 0  # "clean", as in open-unlearning's class_id: 0
    expected = direct_probabilities(classifier_dir, TEXTS, class_id=0)
    for batch_size in (1, 2, 32):  # padding inside a batch changes nothing
        assert classifier.fluent_probabilities(TEXTS, batch_size=batch_size) == pytest.approx(
            expected, abs=1e-6
        )
    # A random classifier still leaves its clean class well away from a constant.
    assert np.ptp(expected) > 0.05


def test_the_fluent_label_is_read_by_name_from_id2label(tmp_path):
    relabelled = {0: "noise", 1: "word salad", 2: "clean", 3: "mild gibberish"}
    save_tiny_fluency_classifier(tmp_path, id2label=relabelled)
    classifier = fluency.load_classifier(settings(tmp_path))
    assert classifier.label_id == 2
    assert classifier.fluent_probabilities(TEXTS) == pytest.approx(
        direct_probabilities(tmp_path, TEXTS, class_id=2), abs=1e-6
    )


def test_a_classifier_without_the_fluent_label_needs_metrics_fluency_label(tmp_path):
    save_tiny_fluency_classifier(tmp_path, id2label={0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ConfigError, match=r"no class named 'clean'.*LABEL_0.*metrics\.fluency_label"):
        fluency.load_classifier(settings(tmp_path))
    with pytest.raises(ConfigError, match=r"metrics\.fluency_label='fluent'"):
        fluency.load_classifier(settings(tmp_path, label="fluent"))
    assert fluency.load_classifier(settings(tmp_path, label="LABEL_1")).label_id == 1


def test_the_default_classifier_offline_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # An empty Hugging Face cache and no network: what every run here and in CI sees.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert MetricsConfig.fluency_classifier == fluency.DEFAULT_CLASSIFIER
    with pytest.raises(ModelSourceError) as raised:
        fluency.load_classifier(settings(fluency.DEFAULT_CLASSIFIER))
    message = str(raised.value)
    assert f"metrics.fluency_classifier='{fluency.DEFAULT_CLASSIFIER}' cannot be loaded" in message
    assert "offline mode is on" in message and "local copy" in message and "hf download" in message


@pytest.mark.parametrize("source", ["/no/such/classifier", "./classifier", "a/b/c"])
def test_a_missing_folder_is_a_clear_error(source):
    with pytest.raises(ModelSourceError, match=r"metrics\.fluency_classifier=.* is not a folder.*local copy"):
        fluency.load_classifier(settings(source))


def test_a_folder_that_is_not_a_classifier_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelSourceError, match=str(tmp_path)):
        fluency.load_classifier(settings(tmp_path))


# --- as a TOFU metric ------------------------------------------------------------------------------------------------


def make_item(index: int) -> dict:
    return {
        "question": f"Who wrote book number {index}?",
        "answer": f"Book {index} was written by Mira Castellan.",
        "paraphrased_answer": f"Mira Castellan is the author of book {index}.",
        "perturbed_answer": [f"Book {index} was written by author {j}." for j in range(2)],
    }


@pytest.fixture(scope="module")
def tofu_setup():
    items = [make_item(index) for index in range(5)]
    tokenizer = tiny_tokenizer([f"Question: {i['question']}\nAnswer: {i['answer']}" for i in items])
    return tiny_eval_llama(tokenizer), tokenizer, {"forget": items}


def test_forget_fluency_is_the_mean_clean_probability_of_the_rouge_generations(classifier_dir, tofu_setup):
    model, tokenizer, eval_sets = tofu_setup
    names = ["forget_Q_A_ROUGE", "forget_fluency"]
    config = settings(classifier_dir, names=names)
    result = registry.SUITES["tofu"].evaluate(model, tokenizer, eval_sets, names, config).to_dict()
    generations = result["generations"]["forget"]
    assert len(generations) == len(eval_sets["forget"])
    expected = direct_probabilities(classifier_dir, generations, class_id=0)
    assert result["per_item"]["forget_fluency"] == pytest.approx(expected, abs=1e-6)
    assert result["metrics"]["forget_fluency"] == pytest.approx(np.mean(expected), abs=1e-6)

    # Fluency alone makes the same one generation pass as the ROUGE metrics, and scores its answers once.
    calls = []

    def scorer(texts):
        calls.append(list(texts))
        return np.full(len(texts), 0.5)

    alone = evaluate_tofu(
        model, tokenizer, eval_sets, ["forget_fluency"], max_new_tokens=6, fluency_scorer=scorer
    )
    assert calls == [generations] and alone.generations["forget"] == generations
    assert alone.metrics["forget_fluency"] == 0.5


def test_forget_fluency_without_a_scorer_is_an_error(tofu_setup):
    model, tokenizer, eval_sets = tofu_setup
    with pytest.raises(ValueError, match="forget_fluency needs a fluency_scorer"):
        evaluate_tofu(model, tokenizer, eval_sets, ["forget_fluency"])


def test_fluency_is_higher_is_better_and_reads_the_forget_generations():
    spec = TOFU_METRICS["forget_fluency"]
    assert metric_info("forget_fluency").direction is Direction.HIGHER
    assert spec.eval_sets == ("forget",) and spec.needs == {"generation"}


# --- the suite's preflight and cache key -------------------------------------------------------------------------------


def test_preflight_loads_the_classifier_only_when_fluency_is_planned(classifier_dir):
    suite = registry.SUITES["tofu"]
    missing = settings("/no/such/classifier")
    suite.preflight(["forget_Q_A_ROUGE", "model_utility"], missing)  # nothing to load
    plan = evaluation_plan(["utility_score"])["tofu"]
    with pytest.raises(ModelSourceError, match=r"metrics\.fluency_classifier"):
        suite.preflight(plan, missing)
    suite.preflight(plan, settings(classifier_dir))


def test_only_evaluations_that_compute_fluency_key_the_classifier(classifier_dir, tmp_path):
    suite = registry.SUITES["tofu"]
    # The fluency settings never enter the settings part of a key, so keys made before they existed still hold.
    assert set(_settings_spec(settings(classifier_dir, label="clean"))) == set(_settings_spec(settings("x")))
    assert "fluency_classifier" not in _settings_spec(settings(classifier_dir))
    assert suite.cache_spec(["forget_Q_A_ROUGE"], settings("/no/such/classifier")) == {}
    key = suite.cache_spec(["forget_fluency"], settings(classifier_dir))["fluency_classifier"]
    assert key["label"] == "clean" and len(key["fingerprint"]) == 16
    # Another classifier (other weights) is another key.
    save_tiny_fluency_classifier(tmp_path, seed=1)
    assert suite.cache_spec(["forget_fluency"], settings(tmp_path))["fluency_classifier"] != key


# --- the metrics configs -----------------------------------------------------------------------------------------------


def test_default_tofu_full_leaves_out_what_needs_the_classifier():
    full = list(OmegaConf.load(CONF_DIR / "tofu_full.yaml").names)
    assert not set(NEEDS_CLASSIFIER) & set(full)
    for name in full:
        assert "forget_fluency" not in getattr(registry.CROSS_MODEL_METRICS.get(name), "needs", ())


def test_tofu_full_aggregates_is_tofu_full_and_the_three():
    full = OmegaConf.load(CONF_DIR / "tofu_full.yaml")
    aggregates = OmegaConf.load(CONF_DIR / "tofu_full_aggregates.yaml")
    assert aggregates.name == "tofu_full_aggregates"
    assert sorted(aggregates.names) == sorted([*full.names, *NEEDS_CLASSIFIER])
    assert {k: v for k, v in aggregates.items() if k not in ("name", "names")} == {
        k: v for k, v in full.items() if k not in ("name", "names")
    }
    # Validating the config loads nothing: the classifier is read by the run's preflight.
    config = validate_config(
        compose_config(["metrics=tofu_full_aggregates", "metrics.fluency_classifier=/no/such/classifier"])
    )
    assert config.metrics.fluency_classifier == "/no/such/classifier"


@pytest.mark.parametrize(
    "names", [["forget_fluency"], ["utility_score"], ["overall_score", "forget_Q_A_ROUGE"]]
)
def test_fluency_refuses_sampled_answers(names):
    sampling = SamplingConfig(num_samples=3, temperature=1.0)
    refusal = fluency.sampling_refusal(names, sampling)
    assert (
        refusal is not None
        and "greedy" in refusal
        and str([n for n in names if n in NEEDS_CLASSIFIER]) in refusal
    )
    assert fluency.sampling_refusal(names, SamplingConfig()) is None
    assert fluency.sampling_refusal(["forget_Q_A_ROUGE", "privacy_score"], sampling) is None
    overrides = [
        "metrics=tofu_full_aggregates",
        "metrics.sampling.num_samples=3",
        "metrics.sampling.temperature=1",
    ]
    with pytest.raises(ConfigError, match="forget_fluency.*greedy"):
        validate_config(compose_config(overrides))


def test_the_report_shows_only_the_aggregates_a_run_requested(tmp_path):
    from msa_bench.reporting import tables
    from msa_bench.reporting.collect import load_runs
    from tests.test_report import msa, write_run

    scores = {"forget_quality": 0.2, "model_utility": 0.4, "memorization_score": 0.5, "privacy_score": 0.3}
    write_run(tmp_path / "full", "a1", msa(1.0), scores)  # metrics=tofu_full: no Utility or Overall
    table = next(t for t in tables.build_tables(load_runs([tmp_path / "full"])) if t.family == "tofu")
    assert {"memorization_score", "privacy_score"} <= set(table.columns)
    assert not set(NEEDS_CLASSIFIER) & set(table.columns) and "n/a" not in tables.to_markdown(table)

    requested = {**scores, "forget_fluency": 0.9, "utility_score": 0.55, "overall_score": 0.4}
    write_run(tmp_path / "aggregates", "a1", msa(1.0), requested)  # metrics=tofu_full_aggregates
    table = next(t for t in tables.build_tables(load_runs([tmp_path / "aggregates"])) if t.family == "tofu")
    assert table.columns[-4:] == ["memorization_score", "privacy_score", "utility_score", "overall_score"]
