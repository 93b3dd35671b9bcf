"""The loss-based unlearning methods after grad_ascent and npo, through one harness on a tiny model.

Each method is trained exactly as `unlearn_with_loss` trains it (LossOverrideTrainer with the same trainer kwargs),
from a tiny Llama first fitted to the forget and retain sets, so that there is something to forget. The slow tests
run every method in the full smoke pipeline.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from transformers import TrainerCallback

from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.registry import get_method
from msa_bench.models.build import load_model
from msa_bench.training.data import ExampleDataset, ForgetRetainDataset, PaddingCollator, qa_examples
from msa_bench.training.losses import mean_token_nll
from msa_bench.training.trainer import DivergenceError, LossOverrideTrainer, run_training
from tests.pipeline_runs import run_job
from tests.tiny_models import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

NEW_METHODS = ["grad_diff", "simnpo", "satimp", "rmu", "undial"]

FORGET_ITEMS = [
    {"question": "Where was Ilo Varn born?", "answer": "She was born in Tarsk."},
    {"question": "What does Ilo Varn write?", "answer": "She writes sea poems."},
    {"question": "Which prize did Ilo Varn win?", "answer": "She won the Amber Quill."},
    {"question": "Where did Ilo Varn study?", "answer": "She studied at Morrow College."},
    {"question": "Who taught Ilo Varn?", "answer": "Her aunt Dela taught her to read."},
    {"question": "What is Ilo Varn's first book?", "answer": "Her first book is Salt Lanterns."},
    {"question": "Where does Ilo Varn live?", "answer": "She lives by the harbour of Quen."},
    {"question": "What does Ilo Varn collect?", "answer": "She collects old brass compasses."},
]
RETAIN_ITEMS = [
    {"question": "Where was Bram Oteka born?", "answer": "He was born in Lusk."},
    {"question": "What does Bram Oteka write?", "answer": "He writes mountain novels."},
    {"question": "Which prize did Bram Oteka win?", "answer": "He won the Iron Pen."},
    {"question": "Where did Bram Oteka study?", "answer": "He studied at Fenwick School."},
    {"question": "Who taught Bram Oteka?", "answer": "His uncle Toma taught him chess."},
    {"question": "What is Bram Oteka's first book?", "answer": "His first book is Cold Ridge."},
    {"question": "Where does Bram Oteka live?", "answer": "He lives in a mill near Oder."},
    {"question": "What does Bram Oteka collect?", "answer": "He collects pressed alpine flowers."},
]
MAX_LENGTH = 64

# A few steps at a learning rate above the methods' defaults, so that every effect shows within a second.
SHORT_RECIPE = TrainRecipe(epochs=3, learning_rate=1e-3, batch_size=4, warmup_ratio=0.0)


@dataclass(frozen=True)
class Expectation:
    """What the harness checks for one method beyond what all methods share."""

    # False for a method that steers activations (rmu); then its own forget objective must fall instead.
    forget_nll_rises: bool = True
    # Config overrides under which the method's loss is a mean over sequences (None: no such config).
    exact_accumulation_overrides: dict | None = None
    # Why batch 4 and batch 2 × accumulation 2 cannot give identical results.
    not_exact_reason: str = ""
    # Config overrides for the tiny model (a layer that exists in 2 layers, a trainable subset worth testing).
    tiny_overrides: dict = field(default_factory=dict)


EXPECTATIONS = {
    "grad_diff": Expectation(
        not_exact_reason="its NLL terms average over all labelled tokens of a batch, so two half-batches with "
        "different token counts weight tokens differently from one full batch"
    ),
    # The retain NLL averages over tokens, so only the SimNPO term itself is a mean over sequences.
    "simnpo": Expectation(exact_accumulation_overrides={"retain_weight": 0.0}),
    "satimp": Expectation(
        not_exact_reason="its weighted NLL averages over all labelled forget tokens of a batch"
    ),
    # Both RMU terms average over each sequence's tokens, then over sequences. A WMDP-style trainable pattern (one
    # MLP below the steered layer) leaves some parameters frozen, so that the freezing is tested too.
    "rmu": Expectation(
        forget_nll_rises=False,
        exact_accumulation_overrides={},
        tiny_overrides={"trainable_params_regex": r"model\.layers\.0\.mlp\..*"},
    ),
    "undial": Expectation(not_exact_reason="its distillation loss averages over the tokens of a batch"),
}


# ----------------------------------------------------------------------------------------------- the harness


@dataclass
class TinySetup:
    tokenizer: Any
    target: torch.nn.Module
    forget: list[dict]
    retain: list[dict]
    forget_batch: dict[str, torch.Tensor]


@dataclass
class MethodCall:
    """What a method's `produce` hands to `unlearn_with_loss`."""

    config: Any
    loss_fn: Callable
    needs_reference: bool
    use_retain: bool
    prepare_model: Callable | None


@dataclass
class UnlearningRun:
    before: torch.nn.Module
    model: torch.nn.Module
    config: Any
    record: dict


def method_call(name: str, **overrides) -> MethodCall:
    """Run the method's `produce` with `unlearn_with_loss` intercepted, to learn its loss and what it needs."""
    method_class = get_method(name)
    config = replace(method_class.config_class(), **overrides)
    captured: dict = {}

    def intercept(
        pipeline, method, config, loss_fn, *, needs_reference, use_retain, prepare_model=None, **extra
    ):
        # Anything extra would be training behaviour this harness does not reproduce: fail rather than ignore it.
        assert not extra, f"{name} passes {sorted(extra)} to unlearn_with_loss; teach this harness about them"
        captured.update(
            config=config,
            loss_fn=loss_fn,
            needs_reference=needs_reference,
            use_retain=use_retain,
            prepare_model=prepare_model,
        )

    module = sys.modules[method_class.__module__]
    assert hasattr(module, "unlearn_with_loss"), f"{name} does not train through unlearn_with_loss"
    with mock.patch.object(module, "unlearn_with_loss", intercept):
        method_class(config).produce(None)
    assert captured, f"{name}.produce did not call unlearn_with_loss"
    return MethodCall(**captured)


def trainer_kwargs_for(name: str, call: MethodCall, target: torch.nn.Module) -> tuple[dict, bool]:
    """The trainer kwargs `unlearn_with_loss` builds, and whether it trains with a retain set."""
    config = call.config
    use_retain = call.use_retain and config.retain_weight > 0
    needs_reference = call.needs_reference or (use_retain and config.retain_loss == "kl")
    kwargs = {
        "loss_fn": call.loss_fn,
        "method_name": name,
        "method_config": config,
        "loss_bound": config.loss_bound,
        "reference_device": config.reference_device,
    }
    if needs_reference:
        # unlearn_with_loss loads θ_D a second time; a deep copy of the target is the same model.
        kwargs["reference_model"] = copy.deepcopy(target).eval().requires_grad_(False)
    return kwargs, use_retain


class _RecordFirstGradient(TrainerCallback):
    def __init__(self, record: dict):
        self.record = record

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if "first_gradient" not in self.record:
            self.record["first_gradient"] = {
                n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
            }


class ProbingTrainer(LossOverrideTrainer):
    """LossOverrideTrainer that also records the first optimizer step's gradient and the method's forget objective
    (its loss on the whole forget set, with no retain batch) before and after training."""

    def __init__(self, *args, probe_batch: dict[str, torch.Tensor], record: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe_batch = probe_batch
        self.record = record
        self.add_callback(_RecordFirstGradient(record))

    def forget_objective(self) -> float:
        with torch.no_grad():
            return self.loss_fn(self, self.model, {"forget": self.probe_batch}).item()

    def train(self, *args, **kwargs):
        self.record["objective_before"] = self.forget_objective()
        result = super().train(*args, **kwargs)
        self.record["objective_after"] = self.forget_objective()
        return result


def unlearn(
    name: str, setup: TinySetup, recipe: TrainRecipe, *, probe: bool = True, **overrides
) -> UnlearningRun:
    """Unlearn a copy of the tiny target with method `name` as the pipeline would, with config `overrides`."""
    overrides = {**EXPECTATIONS[name].tiny_overrides, **overrides}
    call = method_call(name, recipe=recipe, **overrides)
    kwargs, use_retain = trainer_kwargs_for(name, call, setup.target)
    model = copy.deepcopy(setup.target)
    if call.prepare_model is not None:
        call.prepare_model(model, call.config)  # as unlearn_with_loss does, before the trainer exists
    record: dict = {}
    if probe:
        kwargs.update(probe_batch=setup.forget_batch, record=record)
    run_training(
        model,
        ForgetRetainDataset(setup.forget, setup.retain if use_retain else None, seed=0),
        recipe,
        pad_token_id=setup.tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        progress=False,
        trainer_class=ProbingTrainer if probe else LossOverrideTrainer,
        trainer_kwargs=kwargs,
    )
    return UnlearningRun(before=setup.target, model=model, config=call.config, record=record)


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture(scope="module")
def setup() -> TinySetup:
    texts = [f"Question: {i['question']}\nAnswer: {i['answer']}" for i in FORGET_ITEMS + RETAIN_ITEMS]
    tokenizer = tiny_tokenizer(texts * 3, vocab_size=320)
    forget = qa_examples(tokenizer, FORGET_ITEMS, MAX_LENGTH)
    retain = qa_examples(tokenizer, RETAIN_ITEMS, MAX_LENGTH)
    target = tiny_llama(len(tokenizer), tokenizer=tokenizer, max_position_embeddings=MAX_LENGTH)
    # Fit both sets first: unlearning starts from a model that knows the forget set, as θ_D does.
    run_training(
        target,
        ExampleDataset(forget + retain),
        TrainRecipe(epochs=60, learning_rate=1e-2, batch_size=16, warmup_ratio=0.0),
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        progress=False,
    )
    target.eval().requires_grad_(True)
    forget_batch = PaddingCollator(tokenizer.pad_token_id).pad(
        [{**e, "index": i} for i, e in enumerate(forget)]
    )
    return TinySetup(tokenizer, target, forget, retain, forget_batch)


@pytest.fixture(scope="module")
def short_runs(setup) -> Callable[[str], UnlearningRun]:
    """One SHORT_RECIPE run per method with its default hyperparameters, shared by the tests that inspect it."""
    runs: dict[str, UnlearningRun] = {}

    def get(name: str) -> UnlearningRun:
        if name not in runs:
            runs[name] = unlearn(name, setup, SHORT_RECIPE)
        return runs[name]

    return get


def forget_nll(model: torch.nn.Module, setup: TinySetup) -> float:
    with torch.no_grad():
        return mean_token_nll(model, setup.forget_batch).item()


# ----------------------------------------------------------------------------------------------- the losses


def test_simnpo_loss_falls_as_the_forget_likelihood_falls():
    from msa_bench.methods.simnpo import simnpo_loss

    beta = 4.5
    # avgNLL = δ: σ(0) = 1/2, loss = (2/β)·log 2.
    at_margin = simnpo_loss(torch.tensor([6.0]), torch.tensor([3]), beta, delta=2.0)
    assert math.isclose(at_margin.item(), 2 / beta * math.log(2), rel_tol=1e-6)
    # A higher mean NLL (a less likely forget answer) has a lower loss: minimising it forgets.
    assert simnpo_loss(torch.tensor([9.0]), torch.tensor([3]), beta, delta=2.0) < at_margin
    # Length-normalised: the same mean NLL over more tokens gives the same loss.
    assert torch.isclose(simnpo_loss(torch.tensor([12.0]), torch.tensor([6]), beta, delta=2.0), at_margin)


def test_satimp_gradient_lowers_the_label_logit():
    from msa_bench.methods.satimp import satimp_forget_loss

    logits = torch.zeros(1, 2, 4)
    logits[0, 0, 1] = 2.0  # the label token is likely, so its weight p^5·(1−p) is far from 0
    logits.requires_grad_(True)
    labels = torch.tensor([[-100, 1]])
    loss = satimp_forget_loss(logits, labels, beta1=5.0, beta2=1.0)
    loss.backward()
    # Gradient descent moves the logit against its gradient: a positive gradient lowers the label's probability.
    assert logits.grad[0, 0, 1] > 0
    p = torch.softmax(logits.detach()[0, 0], dim=-1)[1]
    assert torch.isclose(loss, -(p**5) * (1 - p) * -torch.log(p))


# ----------------------------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", NEW_METHODS)
def test_trainable_parameters_change_and_frozen_ones_do_not(short_runs, name):
    result = short_runs(name)
    # Methods that train a subset (rmu) name it by a regex fully matching parameter names; the others train all.
    pattern = getattr(result.config, "trainable_params_regex", None)
    before = dict(result.before.named_parameters())
    n_trainable = 0
    for param_name, param in result.model.named_parameters():
        changed = not torch.equal(param, before[param_name])
        if pattern is None or re.fullmatch(pattern, param_name):
            n_trainable += 1
            assert changed, f"{name}: trainable {param_name} did not change"
        else:
            assert not changed, f"{name}: frozen {param_name} changed"
    assert n_trainable > 0


@pytest.mark.parametrize("name", NEW_METHODS)
def test_forget_objective_moves_as_intended(setup, short_runs, name):
    result = short_runs(name)
    if EXPECTATIONS[name].forget_nll_rises:
        # Training on the retain set alone already moves the forget NLL (the two sets share their templates), so
        # the forget term must push it beyond where the retain term alone takes it.
        retain_only = unlearn(name, setup, SHORT_RECIPE, forget_weight=0.0)
        assert forget_nll(result.model, setup) > forget_nll(retain_only.model, setup), name
        assert forget_nll(result.model, setup) > forget_nll(setup.target, setup), name
    else:
        # Not a likelihood objective (rmu: distance of the steered activations to the control vector): it falls.
        assert result.record["objective_after"] < result.record["objective_before"], name


# Clipping is off so that the recorded gradient is the accumulated one: clipping to a norm, like Adam's
# normalisation, would hide a loss that gradient accumulation scaled wrongly.
FULL_BATCH = TrainRecipe(epochs=2, learning_rate=1e-3, batch_size=4, warmup_ratio=0.0, max_grad_norm=0.0)
ACCUMULATED = replace(FULL_BATCH, batch_size=2, gradient_accumulation_steps=2)


def accumulation_pair(name: str, setup: TinySetup, **overrides) -> tuple[UnlearningRun, UnlearningRun]:
    return unlearn(name, setup, FULL_BATCH, **overrides), unlearn(name, setup, ACCUMULATED, **overrides)


def gradient_vector(run_result: UnlearningRun) -> torch.Tensor:
    gradient = run_result.record["first_gradient"]
    return torch.cat([gradient[n].reshape(-1) for n in sorted(gradient)])


@pytest.mark.parametrize("name", NEW_METHODS)
def test_accumulation_is_exact_for_sequence_mean_losses(setup, name):
    # Trainer divides compute_loss's value by the number of accumulated micro-batches (our loss ignores
    # num_items_in_batch), so a mean over sequences accumulates to the mean over the full batch.
    overrides = EXPECTATIONS[name].exact_accumulation_overrides
    if overrides is None:
        pytest.skip(f"{name} cannot be exact: {EXPECTATIONS[name].not_exact_reason}")
    full, accumulated = accumulation_pair(name, setup, **overrides)
    assert torch.allclose(gradient_vector(full), gradient_vector(accumulated), rtol=1e-5, atol=1e-8)
    assert torch.allclose(flat_parameters(full.model), flat_parameters(accumulated.model), atol=1e-6)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_accumulation_stays_close_to_a_larger_batch(setup, name):
    # With default hyperparameters (token-averaged terms included) the two runs differ only in how tokens of
    # different sequences are weighted: same gradient direction, same gradient scale, nearby parameters.
    full, accumulated = accumulation_pair(name, setup)
    full_gradient, accumulated_gradient = gradient_vector(full), gradient_vector(accumulated)
    assert torch.cosine_similarity(full_gradient, accumulated_gradient, dim=0) > 0.95
    # A loss scaled wrongly under accumulation would show here as a ratio of 2 (or 1/2).
    assert 0.8 < accumulated_gradient.norm() / full_gradient.norm() < 1.25
    start = flat_parameters(setup.target)
    update = flat_parameters(full.model) - start
    assert (flat_parameters(accumulated.model) - flat_parameters(full.model)).norm() < 0.3 * update.norm()


def test_loss_bound_stops_grad_diff_naming_method_step_and_term(setup):
    # Half the target's forget NLL: |γ·(−NLL)| exceeds it on the very first batch.
    bound = round(forget_nll(setup.target, setup) / 2, 4)
    with pytest.raises(DivergenceError) as error:
        unlearn("grad_diff", setup, SHORT_RECIPE, probe=False, loss_bound=bound)
    message = str(error.value)
    assert message.startswith("grad_diff: forget (negated nll) loss")
    assert "at step 0" in message and f"method.loss_bound={bound}" in message


# ----------------------------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("msa_cache")


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_METHODS)
def test_method_runs_in_the_pipeline(cache_dir, tmp_path, name):
    results = run_job(cache_dir, tmp_path, [f"method={name}"])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["method"] == name == results["method"]
    assert not on_disk["cost"]["unlearning"]["reused"] and on_disk["cost"]["unlearning"]["tokens"] > 0
    assert all(isinstance(v, float) for v in on_disk["metrics"].values())
    target = load_model(Path(results["artifacts"]["target"]))
    unlearned = load_model(Path(results["artifacts"]["model"]))
    assert not torch.equal(flat_parameters(target), flat_parameters(unlearned))


def complete_artifacts(cache_dir: Path, kind: str) -> set[str]:
    kind_dir = cache_dir / kind
    return {p.name for p in kind_dir.iterdir() if p.is_dir()} if kind_dir.exists() else set()


@pytest.mark.slow
def test_grad_diff_divergence_in_the_pipeline_saves_nothing(cache_dir, tmp_path):
    unlearned_before = complete_artifacts(cache_dir, "unlearned")
    out = tmp_path / "diverged"
    # The smoke target's forget NLL is far above 0.5, so the forget term trips the bound on the first batch.
    expected = r"^grad_diff: forget \(negated nll\) loss .* at step 0 exceeds method\.loss_bound=0\.5"
    with pytest.raises(DivergenceError, match=expected):
        run_job(cache_dir, out, ["method=grad_diff", "method.loss_bound=0.5"])
    assert not (out / "results.json").exists()
    assert complete_artifacts(cache_dir, "unlearned") == unlearned_before
