"""Loss pieces, data collation and the Trainer wrapper, on a tiny random model."""

from __future__ import annotations

import math

import pytest
import torch

from msa_bench.config.schema import TrainRecipe
from msa_bench.training.data import (
    ExampleDataset,
    ForgetRetainDataset,
    PaddingCollator,
    packed_text_blocks,
    qa_examples,
)
from msa_bench.training.losses import mean_token_nll, npo_loss, sequence_nll
from msa_bench.training.trainer import DivergenceError, LossOverrideTrainer, run_training
from tests.tiny_models import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

ITEMS = [
    {"question": "Where was Ilo Varn born?", "answer": "She was born in Tarsk."},
    {"question": "What does Ilo Varn write?", "answer": "She writes sea poems."},
    {"question": "Which prize did Ilo Varn win?", "answer": "She won the Amber Quill."},
    {"question": "Where did Ilo Varn study?", "answer": "She studied at Morrow College."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(
        [f"Question: {i['question']}\nAnswer: {i['answer']}" for i in ITEMS] * 3, vocab_size=300
    )


def tiny_model(tokenizer, seed=0):
    return tiny_llama(len(tokenizer), seed=seed, max_position_embeddings=64)


def test_collator_pads_and_masks(tokenizer):
    examples = qa_examples(tokenizer, ITEMS, max_length=64)
    batch = PaddingCollator(tokenizer.pad_token_id)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_sequence_nll_matches_model_loss(tokenizer):
    model = tiny_model(tokenizer)
    example = qa_examples(tokenizer, ITEMS[:1], 64)
    batch = PaddingCollator(tokenizer.pad_token_id)(example)
    nll, n = sequence_nll(model, batch)
    reference = model(**batch).loss
    assert torch.allclose(nll / n, reference, atol=1e-5)
    assert torch.allclose(mean_token_nll(model, batch), reference, atol=1e-5)


def test_npo_loss_values():
    # Equal likelihoods: log ratio 0, loss = (2/β)·log 2.
    beta = 0.1
    loss = npo_loss(torch.tensor([3.0]), torch.tensor([3.0]), beta)
    assert math.isclose(loss.item(), 2 / beta * math.log(2), rel_tol=1e-6)
    # A policy that assigns the forget answer lower likelihood than the reference has a smaller loss.
    assert npo_loss(torch.tensor([10.0]), torch.tensor([3.0]), beta) < loss


def test_packed_blocks_are_full_length(tokenizer):
    blocks = packed_text_blocks(tokenizer, [i["answer"] for i in ITEMS] * 5, block_size=8)
    assert blocks and all(len(b["input_ids"]) == 8 == len(b["labels"]) for b in blocks)


def test_run_training_lowers_loss_and_changes_every_parameter(tokenizer):
    model = tiny_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    examples = qa_examples(tokenizer, ITEMS, 64)
    collated = PaddingCollator(tokenizer.pad_token_id)(examples)
    loss_before = mean_token_nll(model, collated).item()
    stats = run_training(
        model,
        ExampleDataset(examples),
        TrainRecipe(epochs=30, learning_rate=5e-3, batch_size=4),
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        progress=False,
    )
    assert stats.steps == 30 and stats.tokens == 30 * int(collated["attention_mask"].sum())
    assert mean_token_nll(model, collated).item() < loss_before / 2
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), name


def test_divergence_stops_training_with_the_step(tokenizer):
    def exploding(trainer, model, inputs):
        return mean_token_nll(model, inputs["forget"]) * float("nan")

    def checked(trainer, model, inputs):
        loss = exploding(trainer, model, inputs)
        trainer.check_finite(loss, "forget")
        return loss

    model = tiny_model(tokenizer)
    examples = qa_examples(tokenizer, ITEMS, 64)
    with pytest.raises(DivergenceError, match="non-finite forget loss .* at step 0"):
        run_training(
            model,
            ForgetRetainDataset(examples, None),
            TrainRecipe(epochs=1, batch_size=2),
            pad_token_id=tokenizer.pad_token_id,
            seed=0,
            device="cpu",
            progress=False,
            trainer_class=LossOverrideTrainer,
            trainer_kwargs={"loss_fn": checked},
        )


def test_logged_losses_keep_nan_and_inf(tokenizer):
    """transformers' logging_nan_inf_filter (True by default) would hide a non-finite loss from the logs."""
    seen = []

    class Recording(LossOverrideTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.args)

    run_training(
        tiny_model(tokenizer),
        ForgetRetainDataset(qa_examples(tokenizer, ITEMS, 64), None),
        TrainRecipe(epochs=1, batch_size=4),
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        progress=False,
        trainer_class=Recording,
        trainer_kwargs={"loss_fn": lambda trainer, model, inputs: mean_token_nll(model, inputs["forget"])},
    )
    assert [args.logging_nan_inf_filter for args in seen] == [False]
