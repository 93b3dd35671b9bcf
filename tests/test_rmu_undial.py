"""RMU and UNDIAL: their loss pieces by hand, and short trainings of a tiny random Llama."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.rmu import (
    RMUConfig,
    captured_output,
    control_vector,
    find_module,
    freeze_untrained_parameters,
    rmu_objective,
)
from msa_bench.methods.undial import UNDIALConfig, undial_objective
from msa_bench.training.data import ExampleDataset, ForgetRetainDataset, PaddingCollator, qa_examples
from msa_bench.training.losses import masked_activation_mse, mean_token_nll, undial_loss, undial_target_probs
from msa_bench.training.trainer import LossOverrideTrainer, run_training
from tests.tiny_models import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

FORGET = [
    {"question": "Where was Ilo Varn born?", "answer": "She was born in Tarsk."},
    {"question": "What does Ilo Varn write?", "answer": "She writes sea poems."},
    {"question": "Which prize did Ilo Varn win?", "answer": "She won the Amber Quill."},
    {"question": "Where did Ilo Varn study?", "answer": "She studied at Morrow College."},
]
RETAIN = [
    {"question": "Where was Oda Lense born?", "answer": "He was born in Pellow."},
    {"question": "What does Oda Lense paint?", "answer": "He paints old harbours."},
    {"question": "Which city does Oda Lense live in?", "answer": "He lives in Garth."},
    {"question": "Where did Oda Lense study?", "answer": "He studied at Fenn Academy."},
]
SEED = 0
STEERED = r"model\.layers\.1"  # the middle layer of the 3-layer test model


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"Question: {i['question']}\nAnswer: {i['answer']}" for i in FORGET + RETAIN]
    return tiny_tokenizer(texts * 3, vocab_size=300)


def tiny_model(tokenizer):
    return tiny_llama(
        len(tokenizer), seed=SEED, tokenizer=tokenizer, num_hidden_layers=3, max_position_embeddings=64
    )


def fitted_model(tokenizer):
    """The tiny model after memorising the forget answers: a stand-in for θ_D, whose answers are likely."""
    model = tiny_model(tokenizer)
    run_training(
        model,
        ExampleDataset(qa_examples(tokenizer, FORGET + RETAIN, 64)),
        TrainRecipe(epochs=30, learning_rate=5e-3, batch_size=8),
        pad_token_id=tokenizer.pad_token_id,
        seed=SEED,
        device="cpu",
        progress=False,
    )
    return model


def collated(tokenizer, items):
    return PaddingCollator(tokenizer.pad_token_id)(qa_examples(tokenizer, items, 64))


def train(model, tokenizer, loss_fn, config, reference=None, retain_items=None):
    examples = qa_examples(tokenizer, FORGET, 64)
    retain = qa_examples(tokenizer, retain_items, 64) if retain_items else None
    run_training(
        model,
        ForgetRetainDataset(examples, retain, seed=SEED),
        config.recipe,
        pad_token_id=tokenizer.pad_token_id,
        seed=SEED,
        device="cpu",
        progress=False,
        trainer_class=LossOverrideTrainer,
        trainer_kwargs={
            "loss_fn": loss_fn,
            "method_name": config.name,
            "method_config": config,
            "reference_model": reference,
        },
    )


def steered_forget_mse(model, batch, config: RMUConfig) -> float:
    module = find_module(model, config.module_regex)
    with torch.no_grad():
        activations = captured_output(
            module, lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        )
    target = control_vector(activations.shape[-1], config.steering_coeff, SEED)
    return masked_activation_mse(activations, target, batch["labels"] != -100).item()


# RMU


def test_control_vector_is_seeded_with_norm_steering_coeff():
    vector = control_vector(32, 2.0, seed=3)
    assert torch.equal(vector, control_vector(32, 2.0, seed=3))
    assert not torch.equal(vector, control_vector(32, 2.0, seed=4))
    assert math.isclose(vector.norm().item(), 2.0, rel_tol=1e-6)
    assert (vector >= 0).all()  # drawn uniform in [0, 1)^d, as WMDP and open-unlearning do


def test_hook_captures_the_matched_layer_output(tokenizer):
    model = tiny_model(tokenizer)
    batch = collated(tokenizer, FORGET)
    module = find_module(model, STEERED)
    assert module is model.model.layers[1]
    with torch.no_grad():
        captured = captured_output(
            module, lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        )
        assert not module._forward_hooks  # the hook is removed afterwards
        hidden = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states
    assert captured.shape == (*batch["input_ids"].shape, model.config.hidden_size)
    assert torch.allclose(captured, hidden[2])  # hidden_states[0] is the embeddings, [i + 1] layer i's output


@pytest.mark.parametrize(
    "regex, message",
    [
        (r"model\.layers\.7", r"matches no module .*candidates: .*model\.layers\.0"),
        (
            r"model\.layers\.\d+",
            r"matches 3 modules, exactly one is needed: model\.layers\.0, model\.layers\.1",
        ),
    ],
)
def test_module_regex_must_match_exactly_one_module(tokenizer, regex, message):
    with pytest.raises(ValueError, match=message):
        find_module(tiny_model(tokenizer), regex)


@pytest.mark.parametrize(
    "config_class, kwargs, key",
    [
        (RMUConfig, {"retain_loss": "mse"}, "method.retain_loss"),
        (RMUConfig, {"module_regex": "model.layers.("}, "method.module_regex"),
        (RMUConfig, {"steering_coeff": 0.0}, "method.steering_coeff"),
        (RMUConfig, {"precompute_reference": True}, "method.precompute_reference"),
        (RMUConfig, {"retain_weight": -1.0}, "method.forget_weight and method.retain_weight"),
        (UNDIALConfig, {"beta": 0.0}, "method.beta"),
        (UNDIALConfig, {"precompute_reference": True}, "method.precompute_reference"),
    ],
)
def test_bad_configs_name_the_key(config_class, kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config_class(**kwargs)


def test_rmu_trains_only_matching_parameters_and_steers_forget_activations(tokenizer):
    config = RMUConfig(
        module_regex=STEERED,
        trainable_params_regex=r"model\.layers\.[01]\..*",
        recipe=TrainRecipe(epochs=10, learning_rate=3e-3, batch_size=4, warmup_ratio=0.0),
    )
    model = tiny_model(tokenizer)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    freeze_untrained_parameters(model, config)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    forget = collated(tokenizer, FORGET)
    mse_before = steered_forget_mse(model, forget, config)

    train(model, tokenizer, rmu_objective, config, reference=reference, retain_items=RETAIN)

    for name, param in model.named_parameters():
        trained = name.startswith(("model.layers.0.", "model.layers.1."))
        assert param.requires_grad == trained, name
        assert torch.equal(param, before[name]) != trained, name
    assert steered_forget_mse(model, forget, config) < 0.8 * mse_before


def test_trainable_params_regex_matching_nothing_errors(tokenizer):
    with pytest.raises(
        ValueError, match=r"trainable_params_regex=.* matches no parameter .*model\.embed_tokens"
    ):
        freeze_untrained_parameters(tiny_model(tokenizer), RMUConfig(trainable_params_regex=r"lora\..*"))


# UNDIAL


def test_undial_target_moves_mass_off_the_true_token():
    # Teacher logits (ln 2, 0, 0): p = (1/2, 1/4, 1/4). Lowering the true token 0 by β = ln 2 gives uniform logits.
    teacher_logits = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    target = undial_target_probs(teacher_logits, torch.tensor([0]), beta=math.log(2.0))
    assert torch.allclose(target, torch.full((1, 3), 1 / 3))
    assert target[0, 0] < torch.softmax(teacher_logits, dim=-1)[0, 0]
    # A large β leaves almost nothing on the true token and keeps the other tokens' ratios.
    target = undial_target_probs(torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0]), beta=10.0)
    assert target[0, 0] < 0.01
    assert math.isclose((target[0, 1] / target[0, 2]).item(), math.e, rel_tol=1e-5)


def test_undial_loss_is_the_target_entropy_when_the_student_matches_it():
    teacher_logits = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, -100, 2, 4]])  # positions 1 and 2 predict the labelled tokens 2 and 4
    target = undial_target_probs(teacher_logits[0, 1:3], torch.tensor([2, 4]), beta=10.0)
    student_logits = teacher_logits.clone()
    student_logits[0, 1:3] = target.log()
    entropy = -(target * target.log()).sum(dim=-1).mean()
    assert torch.allclose(undial_loss(student_logits, teacher_logits, labels, beta=10.0), entropy, atol=1e-5)


def test_undial_training_lowers_the_forget_answers_probability(tokenizer):
    config = UNDIALConfig(recipe=TrainRecipe(epochs=10, learning_rate=3e-3, batch_size=4, warmup_ratio=0.0))
    model = fitted_model(tokenizer)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    forget = collated(tokenizer, FORGET)
    with torch.no_grad():
        nll_before = mean_token_nll(model, forget).item()
    train(model, tokenizer, undial_objective, config, reference=reference)
    with torch.no_grad():
        assert mean_token_nll(model, forget).item() > nll_before + 0.2
