"""Fluency of a model's answers: the probability that a text classifier gives its fluent class.

open-unlearning's fluency on TOFU (`forget_Q_A_gibberish`, its `classification_prob` metric) feeds its generated
forget-set answers (the greedy ones of forget_Q_A_ROUGE) to the gibberish detector
madhurjindal/autonlp-Gibberish-Detector-492513457, a DistilBERT with the labels clean, mild gibberish, noise and word
salad, and reports the mean softmax probability of class 0, "clean" (batches of 32, truncated to 512 tokens). The
OpenUnlearning report's Utility score (arXiv 2506.12618) is the harmonic mean of model utility and this fluency
(msa_bench/metrics/aggregates.py).

Here the classifier is `metrics.fluency_classifier`: that hub id by default (read from the Hugging Face cache, or
downloaded when the hub is reachable), or a local folder holding a copy. The fluent class is found by name in the
classifier's config.json id2label (`metrics.fluency_label`, default "clean"), so another classifier can stand in
only by saying which of its labels means fluent. The classifier runs on the CPU, in float32, whatever the device of
the model under evaluation: it is small (67M parameters) and reads a few hundred short answers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from msa_bench.errors import ConfigError, ModelSourceError
from msa_bench.metrics import registry
from msa_bench.models.safety import check_model_folder
from msa_bench.models.sources import hub_snapshot, model_fingerprint

FLUENCY_METRIC = "forget_fluency"
DEFAULT_CLASSIFIER = "madhurjindal/autonlp-Gibberish-Detector-492513457"
FLUENT_LABEL = "clean"  # class 0 of the default classifier, the one open-unlearning reads
# open-unlearning's classification_prob settings; neither changes a text's probability beyond float noise
# (truncation only touches answers longer than any metrics.max_new_tokens).
BATCH_SIZE = 32
MAX_LENGTH = 512

_LOCAL_COPY = (
    "Point metrics.fluency_classifier at a local copy of the classifier: a folder with its config.json, tokenizer "
    "files and model.safetensors, fetched once where the hub is reachable, e.g. with `hf download "
    f"{DEFAULT_CLASSIFIER} --local-dir <folder>` (docs/aggregate_scores.md)"
)


def classifier_folder(source: str) -> Path:
    """The local folder of the classifier `source` (metrics.fluency_classifier): an existing folder as it is, or a
    hub id's snapshot (the Hugging Face cache first, then the hub unless offline).

    Raises:
        ModelSourceError: neither, naming metrics.fluency_classifier and how to point it at a local copy.
    """
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"metrics.fluency_classifier must name a hub id or a folder, got {source!r}")
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    # A hub id is exactly org/name; anything else that is not a folder is a path that does not exist.
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1:
        raise ModelSourceError(f"metrics.fluency_classifier={source!r} is not a folder. {_LOCAL_COPY}")
    try:
        return hub_snapshot(source, fix=_LOCAL_COPY)
    except ModelSourceError as error:
        raise ModelSourceError(f"metrics.fluency_classifier={source!r} cannot be loaded: {error}") from error


def fluent_label_id(id2label: Mapping, label: str | None, source: str) -> int:
    """The class id whose id2label name is `label` (metrics.fluency_label; None: "clean").

    Raises:
        ConfigError: no class or several have that name, listing the classifier's labels.
    """
    wanted = FLUENT_LABEL if label is None else label
    ids = [int(key) for key, name in id2label.items() if name == wanted]
    if len(ids) == 1:
        return ids[0]
    labels = {int(key): name for key, name in id2label.items()}
    setting = f"metrics.fluency_label={label!r}" if label is not None else "metrics.fluency_label is null"
    raise ConfigError(
        f"the fluency classifier {source!r} has {'no' if not ids else 'more than one'} class named {wanted!r} "
        f"({setting}); its labels (config.json id2label) are {labels}. Set metrics.fluency_label to the "
        "one label that means fluent text"
    )


@dataclass(frozen=True)
class FluencyClassifier:
    tokenizer: object
    model: torch.nn.Module
    label_id: int

    def fluent_probabilities(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Per text, the softmax probability of the fluent class (float64, in input order)."""
        accepted = set(inspect.signature(self.model.forward).parameters)
        limit = min(MAX_LENGTH, getattr(self.model.config, "max_position_embeddings", None) or MAX_LENGTH)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                encoded = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=limit,
                )
                # DistilBERT takes no token_type_ids, which a generic tokenizer may still return.
                inputs = {key: value for key, value in encoded.items() if key in accepted}
                logits = self.model(**inputs).logits.float()
                chunks.append(torch.softmax(logits, dim=-1)[:, self.label_id].double())
        return torch.cat(chunks).numpy() if chunks else np.zeros(0)


@functools.lru_cache(maxsize=2)
def _load(folder: str, label: str | None, source: str) -> FluencyClassifier:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_model_folder(Path(folder), trust_remote_code=False)
    safe = dict(local_files_only=True, trust_remote_code=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **safe)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True, **safe
        )
    except (OSError, ValueError) as error:
        raise ModelSourceError(
            f"metrics.fluency_classifier={source!r}: transformers cannot load {folder} as a sequence "
            f"classifier ({type(error).__name__}: {error}). {_LOCAL_COPY}"
        ) from error
    if tokenizer.pad_token is None:
        raise ModelSourceError(
            f"metrics.fluency_classifier={source!r}: its tokenizer has no pad token, so answers cannot be batched"
        )
    # Absolute position embeddings (BERT, DistilBERT) expect each text from position 0: pad on the right.
    tokenizer.padding_side = "right"
    return FluencyClassifier(tokenizer, model.eval(), fluent_label_id(model.config.id2label, label, source))


def load_classifier(settings) -> FluencyClassifier:
    """The classifier of `settings` (a MetricsConfig: fluency_classifier, fluency_label), loaded once per process."""
    source = settings.fluency_classifier
    return _load(str(classifier_folder(source)), settings.fluency_label, source)


def wanted(metric_names: Sequence[str]) -> bool:
    return FLUENCY_METRIC in metric_names


def sampling_refusal(metric_names: Sequence[str], sampling) -> str | None:
    """Why fluency cannot be computed with `sampling` (a SamplingConfig), or None: it reads the greedy answers, as
    open-unlearning's does, and with sampling the one answer kept per item is the sample that scores the highest
    ROUGE-L, a choice that would bias it. `metric_names` counts forget_fluency and whatever reads it (utility_score,
    overall_score)."""
    if sampling.temperature == 0:
        return None
    registry.discover_suites()
    readers = [
        name
        for name in metric_names
        if name == FLUENCY_METRIC
        or (
            name in registry.CROSS_MODEL_METRICS
            and FLUENCY_METRIC in registry.CROSS_MODEL_METRICS[name].needs
        )
    ]
    if not readers:
        return None
    return (
        f"metrics.names has {readers} with metrics.sampling.temperature={sampling.temperature}: {FLUENCY_METRIC} "
        "reads the greedy forget answers, and with sampling the answer kept is the sample of highest ROUGE-L; drop "
        "them from metrics.names, or set metrics.sampling.temperature=0 and num_samples=1"
    )


def preflight(metric_names: Sequence[str], settings) -> None:
    """Before any training: the classifier loads and has the fluent label, when forget_fluency is to be computed."""
    if wanted(metric_names):
        load_classifier(settings)


def cache_spec(metric_names: Sequence[str], settings) -> dict:
    """The classifier's content fingerprint and fluent label, in the keys of evaluations that compute fluency (and
    only those: the MetricsConfig's fluency settings are otherwise left out of the key)."""
    if not wanted(metric_names):
        return {}
    folder = classifier_folder(settings.fluency_classifier)
    label = FLUENT_LABEL if settings.fluency_label is None else settings.fluency_label
    return {"fluency_classifier": {"fingerprint": model_fingerprint(folder), "label": label}}
