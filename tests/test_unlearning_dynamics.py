"""The unlearning dynamics (docs/unlearning_dynamics.md): one loss-based training run evaluated at every
`method.eval_every_epochs` epochs (or `method.eval_every_steps` steps).

Fast tests: the option's checks, its absence from the cache key when off, what the trainer saves and when, and the
claim of the docs that a constant schedule's point at epoch e is the model of an e-epoch run (a decaying one's is
not). The slow test runs the smoke pipeline with the option off and on.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from msa_bench.config.cache_keys import without_default_options
from msa_bench.config.schema import TrainRecipe
from msa_bench.methods.grad_ascent import GradAscentConfig, grad_ascent_loss
from msa_bench.methods.grad_diff import GradDiffConfig
from msa_bench.methods.npo import NPOConfig
from msa_bench.models.build import load_model
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.dynamics import expected_point_count, read_points, schedule_matches_shorter_runs
from msa_bench.training.data import ForgetRetainDataset, qa_examples
from msa_bench.training.trainer import LossOverrideTrainer, SavePoints, run_training
from tests.conftest import compose_config
from tests.conftest import smoke_config_problems as problems_of
from tests.pipeline_runs import run_job
from tests.tiny_models import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

FORGET = [
    {"question": "Where was Ilo Varn born?", "answer": "She was born in Tarsk."},
    {"question": "What does Ilo Varn write?", "answer": "She writes sea poems."},
    {"question": "Which prize did Ilo Varn win?", "answer": "She won the Amber Quill."},
    {"question": "Where did Ilo Varn study?", "answer": "She studied at Morrow College."},
    {"question": "Who taught Ilo Varn?", "answer": "Her aunt Dela taught her to read."},
    {"question": "Where does Ilo Varn live?", "answer": "She lives by the harbour of Quen."},
]
RETAIN = [
    {"question": "Where was Bram Oteka born?", "answer": "He was born in Lusk."},
    {"question": "What does Bram Oteka write?", "answer": "He writes mountain novels."},
    {"question": "Which prize did Bram Oteka win?", "answer": "He won the Iron Pen."},
]


# --- the option's checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["method.eval_every_epochs=0"], "method.eval_every_epochs=0 must be a whole number of epochs >= 1"),
        (
            ["method.eval_every_steps=-2"],
            "method.eval_every_steps=-2 must be a whole number of optimizer steps",
        ),
        (
            ["method.eval_every_epochs=1", "method.eval_every_steps=5"],
            "method.eval_every_epochs=1 and method.eval_every_steps=5 are both set; set one of them",
        ),
    ],
)
def test_a_bad_dynamics_setting_is_refused_naming_its_key(overrides, expected):
    (problem,) = problems_of(["method=npo", *overrides])
    assert expected in problem, problem


def test_a_fractional_number_of_epochs_between_points_is_refused_naming_the_key():
    """The schema's int type refuses it while Hydra composes the config, before validate_config."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"override method\.eval_every_epochs=1\.5"):
        compose_config(["experiment=smoke", "method=npo", "method.eval_every_epochs=1.5"])


def test_dynamics_are_refused_with_sequential_requests_and_with_lora():
    (problem,) = problems_of(["method=npo", "method.eval_every_epochs=1", "benchmark.requests=3"])
    assert problem.startswith("method.eval_every_epochs=1 with benchmark.requests=3:"), problem
    (problem,) = problems_of(["method=grad_ascent", "method.eval_every_steps=2", "peft=lora"])
    assert problem.startswith("method.eval_every_steps=2 with peft=lora:"), problem


def test_a_method_without_a_training_run_has_no_dynamics_option():
    (problem,) = problems_of(["method=msa", "+method.eval_every_epochs=1"])
    assert problem.startswith("method.eval_every_epochs is not a field of method 'msa'"), problem


def test_the_option_is_left_out_of_the_unlearned_models_key_while_off():
    """The config part of the unlearned model's spec (gradient_unlearning.unlearn_with_loss) fingerprints as it did
    before the option existed (the values below were computed by the code of commit 8228b6b), and enters it when
    set."""
    for config, before in ((NPOConfig(), "0ba3fd79803a6e36"), (GradDiffConfig(), "1102f4b739e7804c")):
        keyed = without_default_options(config, asdict(config))
        assert ArtifactStore.fingerprint({"config": keyed}) == before
    on = NPOConfig(eval_every_epochs=2)
    assert without_default_options(on, asdict(on))["eval_every_epochs"] == 2


def test_expected_point_count_and_which_schedules_match_shorter_runs():
    assert expected_point_count(GradAscentConfig(eval_every_epochs=1), n_steps=10, steps_per_epoch=2) == 4
    assert expected_point_count(GradAscentConfig(eval_every_steps=3), n_steps=10, steps_per_epoch=2) == 3
    assert expected_point_count(GradAscentConfig(), n_steps=10, steps_per_epoch=2) == 0
    assert schedule_matches_shorter_runs(TrainRecipe(lr_scheduler="constant", warmup_ratio=0.0))
    assert not schedule_matches_shorter_runs(TrainRecipe(lr_scheduler="constant", warmup_ratio=0.1))
    assert not schedule_matches_shorter_runs({"lr_scheduler": "linear", "warmup_ratio": 0.0})


# --- what the trainer saves ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_setup():
    tokenizer = tiny_tokenizer([f"{item['question']} {item['answer']}" for item in FORGET + RETAIN])
    forget = qa_examples(tokenizer, FORGET, 64)
    retain = qa_examples(tokenizer, RETAIN, 64)
    return tokenizer, forget, retain, tiny_llama(len(tokenizer), tokenizer=tokenizer)


def train(setup, recipe: TrainRecipe, *, every_epochs=None, every_steps=None):
    """grad_diff as unlearn_with_loss trains it; returns the final weights, {(step, epoch): weights} saved on the way
    and the TrainStats."""
    tokenizer, forget, retain, base = setup
    model = copy.deepcopy(base)
    saved: dict[tuple[int, float], dict] = {}

    def save(step, epoch, state_dict):
        saved[(step, epoch)] = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    points = None
    if every_epochs or every_steps:
        points = SavePoints(save, every_epochs=every_epochs, every_steps=every_steps)
    stats = run_training(
        model,
        ForgetRetainDataset(forget, retain, seed=0),
        recipe,
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        progress=False,
        trainer_class=LossOverrideTrainer,
        trainer_kwargs={"loss_fn": grad_ascent_loss, "method_config": GradAscentConfig(retain_weight=1.0)},
        save_points=points,
    )
    return model.state_dict(), saved, stats


def largest_difference(first: dict, second: dict) -> float:
    return max((first[name] - second[name]).abs().max().item() for name in first)


def recipe(epochs: float, scheduler: str) -> TrainRecipe:
    # 6 forget examples in batches of 3: 2 optimizer steps per epoch
    return TrainRecipe(
        epochs=epochs, learning_rate=1e-3, batch_size=3, warmup_ratio=0.0, lr_scheduler=scheduler
    )


def test_points_are_saved_at_each_epoch_end_and_every_n_steps_but_never_at_the_last_step(tiny_setup):
    _, by_epoch, stats = train(tiny_setup, recipe(3, "linear"), every_epochs=1)
    assert sorted(by_epoch) == [(2, 1.0), (4, 2.0)]
    assert (stats.steps, stats.epoch) == (6, 3.0)
    assert stats.save_seconds > 0
    _, by_step, _ = train(tiny_setup, recipe(3, "linear"), every_steps=4)
    assert sorted(by_step) == [(4, 2.0)]
    _, fractional, stats = train(tiny_setup, recipe(2.5, "linear"), every_epochs=1)
    assert sorted(fractional) == [(2, 1.0), (4, 2.0)] and stats.epoch == 2.5


def test_saving_the_points_does_not_change_the_training(tiny_setup):
    with_points, _, _ = train(tiny_setup, recipe(2, "linear"), every_epochs=1)
    without, _, _ = train(tiny_setup, recipe(2, "linear"))
    assert largest_difference(with_points, without) == 0.0


def test_with_a_constant_schedule_the_point_at_epoch_1_is_the_one_epoch_run(tiny_setup):
    """Same seed, so the same retain pairing and the same shuffle per epoch: bit for bit the same model."""
    _, points, _ = train(tiny_setup, recipe(3, "constant"), every_epochs=1)
    one_epoch, _, _ = train(tiny_setup, recipe(1, "constant"))
    assert largest_difference(points[(2, 1.0)], one_epoch) == 0.0


def test_with_a_decaying_schedule_the_point_at_epoch_1_is_not_the_one_epoch_run(tiny_setup):
    """At epoch 1 of 3 the linear rate is still at 2/3 of its start; the one-epoch run has decayed it to 0."""
    final, points, _ = train(tiny_setup, recipe(3, "linear"), every_epochs=1)
    one_epoch, _, _ = train(tiny_setup, recipe(1, "linear"))
    assert largest_difference(points[(2, 1.0)], one_epoch) > 1e-5
    assert largest_difference(points[(2, 1.0)], final) > 1e-5


# --- the smoke pipeline -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """grad_diff for 2 epochs, without and with a point at every epoch, in one cache."""
    root = tmp_path_factory.mktemp("dynamics")
    cache = root / "cache"
    common = ["method=grad_diff", "method.recipe.epochs=2", "method.recipe.learning_rate=1e-3"]
    off = run_job(cache, root / "off", common)
    on = run_job(cache, root / "on", [*common, "method.eval_every_epochs=1"])
    return off, on, root


@pytest.mark.slow
def test_off_the_results_have_no_dynamics(smoke_runs):
    off, _, root = smoke_runs
    assert "dynamics" not in off
    assert "dynamics" not in json.loads((root / "off" / "results.json").read_text())
    assert not any(stage.startswith("eval:grad_diff (epoch") for stage in off["cost"])
    assert "dynamics_save_wall_seconds" not in off["cost"]["unlearning"]


@pytest.mark.slow
def test_on_every_epoch_of_two_gives_two_points_the_last_the_runs_metrics(smoke_runs):
    off, on, root = smoke_runs
    first, last = on["dynamics"]
    assert (first["epoch"], first["final"], last["epoch"], last["final"]) == (1.0, False, 2.0, True)
    assert 0 < first["step"] < last["step"]
    assert last["metrics"] == on["metrics"]
    assert first["metrics"].keys() == on["metrics"].keys()
    assert first["metrics"] != last["metrics"]
    # the option changes nothing about the final model: same metrics as the run without it
    assert on["metrics"] == off["metrics"]
    # the extra evaluation has its own cost entry; the unlearning's cost leaves the saves out
    assert (
        on["cost"][f"eval:grad_diff (epoch 1, step {first['step']})"]["wall_seconds"]
        == first["eval_wall_seconds"]
    )
    assert on["cost"]["unlearning"]["dynamics_points"] == 1
    assert on["cost"]["unlearning"]["dynamics_save_wall_seconds"] > 0
    written = json.loads((root / "on" / "results.json").read_text())
    assert written["dynamics"] == on["dynamics"]


@pytest.mark.slow
def test_the_intermediate_state_differs_from_the_final_and_the_final_from_the_option_off(smoke_runs):
    off, on, _ = smoke_runs
    model_dir = Path(on["artifacts"]["model"])
    intermediate, final = read_points(model_dir)
    assert final.folder is None and intermediate.folder == f"dynamics/step-{intermediate.step:06d}"
    assert Path(off["artifacts"]["model"]) != model_dir  # another cache entry: it also holds the points
    states = {
        name: load_model(path, "cpu", "float32").state_dict()
        for name, path in (
            ("epoch 1", model_dir / intermediate.folder),
            ("final", model_dir),
            ("off", Path(off["artifacts"]["model"])),
        )
    }
    assert largest_difference(states["epoch 1"], states["final"]) > 0
    assert largest_difference(states["final"], states["off"]) == 0.0
