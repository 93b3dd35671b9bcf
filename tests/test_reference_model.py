"""The frozen reference model: precomputed reference values equal live ones; the KL retain term; the bound."""

from __future__ import annotations

import copy

import pytest
import torch

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.gradient_unlearning import _forget_nlls
from msa_bench.methods.npo import NPOConfig, npo_objective
from msa_bench.training.data import ForgetRetainDataset, qa_examples
from msa_bench.training.trainer import DivergenceError, LossOverrideTrainer, run_training
from tests.tiny_models import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

FORGET = [
    {"question": f"Where was author {i} born?", "answer": f"She was born in town {i}."} for i in range(6)
]
RETAIN = [{"question": f"What did writer {i} write?", "answer": f"He wrote book {i}."} for i in range(6)]


@pytest.fixture(scope="module")
def setup():
    texts = [f"Question: {x['question']}\nAnswer: {x['answer']}" for x in FORGET + RETAIN]
    tokenizer = tiny_tokenizer(texts)
    forget = qa_examples(tokenizer, FORGET, 64)
    retain = qa_examples(tokenizer, RETAIN, 64)
    return tokenizer, forget, retain


def train_npo(setup, config: NPOConfig, *, precompute: bool) -> torch.nn.Module:
    tokenizer, forget, retain = setup
    model = tiny_llama(len(tokenizer), tokenizer=tokenizer)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    kwargs = {
        "loss_fn": npo_objective,
        "method_name": "npo",
        "method_config": config,
        "loss_bound": config.loss_bound,
    }
    if precompute:
        kwargs["reference_forget_nll"] = _forget_nlls(reference, forget, tokenizer.pad_token_id)
    else:
        kwargs["reference_model"] = reference
    run_training(
        model,
        ForgetRetainDataset(forget, retain, seed=0),
        config.recipe,
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        progress=False,
        trainer_class=LossOverrideTrainer,
        trainer_kwargs=kwargs,
    )
    return model


def test_precomputed_reference_equals_live_reference(setup):
    config = NPOConfig(recipe=TrainRecipe(epochs=3, learning_rate=1e-3, batch_size=2, warmup_ratio=0.0))
    live = train_npo(setup, config, precompute=False)
    precomputed = train_npo(setup, config, precompute=True)
    for (name, a), (_, b) in zip(live.named_parameters(), precomputed.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_kl_retain_term_runs_and_starts_at_zero(setup):
    tokenizer, forget, retain = setup
    config = NPOConfig(retain_loss="kl", recipe=TrainRecipe(epochs=1, batch_size=2))
    model = tiny_llama(len(tokenizer), tokenizer=tokenizer)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    from msa_bench.training.data import PaddingCollator

    batch = PaddingCollator(tokenizer.pad_token_id).pad(retain[:2])

    class Probe:  # the parts of LossOverrideTrainer that retain_loss uses
        method_config = config
        reference_device = torch.device("cpu")
        reference_model = reference
        count_tokens = staticmethod(lambda batch: None)
        check_finite = staticmethod(lambda loss, term: None)
        reference_outputs = LossOverrideTrainer.reference_outputs

    kl = LossOverrideTrainer.retain_loss(Probe(), model, batch)
    assert abs(kl.item()) < 1e-6  # identical models: KL 0


def test_loss_bound_stops_the_run_naming_method_and_term(setup):
    config = NPOConfig(loss_bound=1e-3, recipe=TrainRecipe(epochs=1, batch_size=2))
    with pytest.raises(
        DivergenceError, match=r"npo: forget \(npo\) loss .* at step 0 exceeds method.loss_bound"
    ):
        train_npo(setup, config, precompute=True)


def test_bad_retain_loss_is_rejected():
    with pytest.raises(ValueError, match="method.retain_loss"):
        NPOConfig(retain_loss="mse", recipe=TrainRecipe())
