"""Tests for model state arithmetic on tiny Llama checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from msa_bench.arithmetic import (
    CheckpointNotFoundError,
    StateArithmeticError,
    StateDelta,
    StateVector,
    apply_deltas_in_place,
    combine_checkpoints,
)
from tests.tiny_models import tiny_llama

torch.set_num_threads(1)

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
ATOL = 1e-6


def tiny_model(tied: bool) -> LlamaForCausalLM:
    return tiny_llama(64, tie_word_embeddings=tied)


def save_family(root: Path, *, tied: bool, max_shard_size: str | None = None) -> dict[str, Path]:
    """Save θ0 and three distinct perturbations of it (θ1, θ2, θ_D); same values for the same seed."""
    model = tiny_model(tied)
    theta_0 = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    paths = {}
    for name, seed in [("theta_0", None), ("theta_1", 1), ("theta_2", 2), ("theta_d", 3)]:
        model.load_state_dict(theta_0)
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                # named_parameters yields a tied weight once, so θ_D keeps lm_head == embed_tokens.
                for parameter in model.parameters():
                    parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        paths[name] = root / name
        model.save_pretrained(paths[name], **save_kwargs)
    return paths


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def msa(paths: dict[str, Path], out: Path, alpha: float, beta: float, **kwargs) -> dict:
    deltas = [
        StateDelta(-alpha, paths["theta_1"], paths["theta_0"]),
        StateDelta(beta, paths["theta_2"], paths["theta_0"]),
    ]
    return combine_checkpoints(paths["theta_d"], deltas, out, **kwargs)


def expected_msa(paths: dict[str, Path], alpha: float, beta: float) -> dict[str, torch.Tensor]:
    theta_0, theta_1, theta_2, theta_d = (
        load_weights(paths[name]) for name in ("theta_0", "theta_1", "theta_2", "theta_d")
    )
    return {
        name: theta_d[name] - alpha * (theta_1[name] - theta_0[name]) + beta * (theta_2[name] - theta_0[name])
        for name in theta_d
    }


@pytest.fixture(scope="module")
def untied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_family(tmp_path_factory.mktemp("untied"), tied=False)


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_family(tmp_path_factory.mktemp("tied"), tied=True)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_family(tmp_path_factory.mktemp("sharded"), tied=False, max_shard_size="20KB")


def test_zero_coefficients_reproduce_target_bit_for_bit(tied: dict[str, Path], tmp_path: Path) -> None:
    # A zero-coefficient delta is never opened, so even a missing checkpoint is fine.
    deltas = [
        StateDelta(0.0, tied["theta_1"], tied["theta_0"]),
        StateDelta(0.0, tmp_path / "does-not-exist", tied["theta_0"]),
    ]
    report = combine_checkpoints(tied["theta_d"], deltas, tmp_path / "out")

    target, result = load_weights(tied["theta_d"]), load_weights(tmp_path / "out")
    assert result.keys() == target.keys()
    assert all(torch.equal(result[name], target[name]) for name in target)
    assert report["delta_norms"] == [None, None]
    assert report["n_tensors"] == len(target)
    for name in ("config.json", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tied["theta_d"] / name).read_bytes()


def test_matches_hand_computation(untied: dict[str, Path], tmp_path: Path) -> None:
    alpha, beta = 0.7, 0.3
    report = msa(untied, tmp_path / "out", alpha, beta)

    expected = expected_msa(untied, alpha, beta)
    result = load_weights(tmp_path / "out")
    assert result.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(result[name], tensor, atol=ATOL, rtol=0)
        assert result[name].dtype == torch.float32

    theta_0, theta_1 = load_weights(untied["theta_0"]), load_weights(untied["theta_1"])
    forget_norm = math.sqrt(sum(float((theta_1[n] - theta_0[n]).double().pow(2).sum()) for n in theta_0))
    assert report["delta_norms"][0] == pytest.approx(forget_norm, rel=1e-6)
    assert report["output"] == str(tmp_path / "out")
    assert report["seconds"] >= 0


def test_linear_in_alpha(untied: dict[str, Path], tmp_path: Path) -> None:
    msa(untied, tmp_path / "single", alpha=0.5, beta=0.0)
    msa(untied, tmp_path / "double", alpha=1.0, beta=0.0)

    target = load_weights(untied["theta_d"])
    single, double = load_weights(tmp_path / "single"), load_weights(tmp_path / "double")
    for name in target:
        torch.testing.assert_close(
            double[name] - target[name], 2 * (single[name] - target[name]), atol=ATOL, rtol=0
        )


def test_tied_embeddings_updated_once(tied: dict[str, Path], tmp_path: Path) -> None:
    assert LM_HEAD not in load_weights(tied["theta_d"]), "transformers stores a tied weight once"
    alpha, beta = 1.5, 0.5
    msa(tied, tmp_path / "out", alpha, beta)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    lm_head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    assert lm_head.data_ptr() == embed.data_ptr()
    torch.testing.assert_close(embed.detach(), expected_msa(tied, alpha, beta)[EMBED], atol=ATOL, rtol=0)


def test_tied_keys_both_in_file_each_get_one_update(tied: dict[str, Path], tmp_path: Path) -> None:
    both_keys = {}
    for name, directory in tied.items():
        weights = load_weights(directory)
        weights[LM_HEAD] = weights[EMBED].clone()
        both_keys[name] = tmp_path / name
        shutil.copytree(directory, both_keys[name])
        save_file(weights, str(both_keys[name] / "model.safetensors"), metadata={"format": "pt"})
    alpha, beta = 1.5, 0.5
    msa(both_keys, tmp_path / "out", alpha, beta)

    result = load_weights(tmp_path / "out")
    expected = expected_msa(tied, alpha, beta)[EMBED]
    torch.testing.assert_close(result[EMBED], expected, atol=ATOL, rtol=0)
    assert torch.equal(result[LM_HEAD], result[EMBED])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(model.lm_head.weight.detach(), expected, atol=ATOL, rtol=0)


def _drop_tensor(weights: dict[str, torch.Tensor]) -> None:
    del weights["model.layers.1.mlp.up_proj.weight"]


def _reshape_tensor(weights: dict[str, torch.Tensor]) -> None:
    weights["model.layers.1.mlp.up_proj.weight"] = torch.zeros(64, 16)


def _cast_tensor(weights: dict[str, torch.Tensor]) -> None:
    weights["model.layers.1.mlp.up_proj.weight"] = weights["model.layers.1.mlp.up_proj.weight"].half()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_drop_tensor, "missing 1 tensor"),
        (_reshape_tensor, "shape mismatch"),
        (_cast_tensor, "dtype mismatch"),
    ],
)
def test_mismatched_checkpoint_is_rejected_before_writing(
    untied: dict[str, Path], tmp_path: Path, mutate: Callable[[dict[str, torch.Tensor]], None], message: str
) -> None:
    broken = tmp_path / "theta_1_broken"
    shutil.copytree(untied["theta_1"], broken)
    weights = load_weights(broken)
    mutate(weights)
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})

    with pytest.raises(StateArithmeticError, match=message) as raised:
        msa({**untied, "theta_1": broken}, tmp_path / "out", alpha=1.0, beta=1.0)
    assert "model.layers.1.mlp.up_proj.weight" in str(raised.value)
    assert str(broken) in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_bad_coefficient(untied: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointNotFoundError, match=str(missing)):
        msa({**untied, "theta_2": missing}, tmp_path / "out", alpha=1.0, beta=1.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        msa({**untied, "theta_2": empty}, tmp_path / "out", alpha=1.0, beta=1.0)
    with pytest.raises(StateArithmeticError, match="finite"):
        msa(untied, tmp_path / "out", alpha=float("nan"), beta=1.0)
    assert not (tmp_path / "out").exists()


def test_sharded_matches_unsharded(untied: dict[str, Path], sharded: dict[str, Path], tmp_path: Path) -> None:
    msa(untied, tmp_path / "plain", alpha=0.8, beta=0.4)
    report = msa(sharded, tmp_path / "sharded", alpha=0.8, beta=0.4)
    # Deltas need not share the target's layout.
    msa({**untied, "theta_d": sharded["theta_d"]}, tmp_path / "mixed", alpha=0.8, beta=0.4)

    input_shards = sorted(path.name for path in sharded["theta_d"].glob("*.safetensors"))
    output_shards = sorted(path.name for path in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(input_shards) > 1 and output_shards == input_shards
    assert report["n_files"] == len(input_shards)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert index == json.loads((sharded["theta_d"] / "model.safetensors.index.json").read_text())

    plain = load_weights(tmp_path / "plain")
    for directory in ("sharded", "mixed"):
        result = load_weights(tmp_path / directory)
        assert result.keys() == plain.keys()
        assert all(torch.equal(result[name], plain[name]) for name in plain)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    assert torch.equal(model.model.norm.weight.detach(), plain["model.norm.weight"])


def test_apply_deltas_in_place_matches_combine(tied: dict[str, Path], tmp_path: Path) -> None:
    alpha, beta = 0.9, 0.6
    msa(tied, tmp_path / "out", alpha, beta)

    model = AutoModelForCausalLM.from_pretrained(tied["theta_d"])
    theta_0 = load_weights(tied["theta_0"])  # file layout: the tied weight once
    theta_1 = load_weights(tied["theta_1"])
    theta_2 = dict(AutoModelForCausalLM.from_pretrained(tied["theta_2"]).state_dict())  # both tied names
    assert LM_HEAD not in theta_0 and LM_HEAD in theta_2
    report = apply_deltas_in_place(model, [(-alpha, theta_1, theta_0), (beta, theta_2, theta_0)])

    combined = load_weights(tmp_path / "out")
    state = model.state_dict()
    assert all(torch.equal(state[name], combined[name]) for name in combined)
    assert torch.equal(state[LM_HEAD], combined[EMBED])
    assert report["delta_norms"][0] > 0


def test_apply_deltas_in_place_rejects_mismatch_without_touching_model(tied: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(tied["theta_d"])
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    theta_0 = load_weights(tied["theta_0"])
    reshaped = {**theta_0, "model.norm.weight": torch.zeros(31)}
    with pytest.raises(StateArithmeticError, match="model.norm.weight"):
        apply_deltas_in_place(model, [(1.0, theta_0, theta_0), (1.0, reshaped, theta_0)])
    with pytest.raises(StateArithmeticError, match="unexpected 1 tensor"):
        apply_deltas_in_place(model, [(1.0, {**theta_0, "extra": torch.zeros(1)}, theta_0)])
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


def test_state_vector_arithmetic() -> None:
    base = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor([3])}
    first = {"w": torch.tensor([2.0, 4.0]), "steps": torch.tensor([5])}
    second = {"w": torch.tensor([1.0, 0.0]), "steps": torch.tensor([7])}

    forget, retain = StateVector.between(first, base), StateVector.between(second, base)
    assert set(forget) == {"w"}  # integer tensors carry no direction
    assert torch.equal(forget["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal((forget + retain)["w"], torch.tensor([1.0, 0.0]))
    assert torch.equal((forget - retain)["w"], torch.tensor([1.0, 4.0]))
    assert torch.equal((2 * forget)["w"], (forget * 2.0)["w"])
    assert forget.norm() == pytest.approx(math.sqrt(5.0))

    updated = (-forget).apply_to(first, scale=0.5)
    assert torch.equal(updated["w"], torch.tensor([1.5, 3.0]))
    assert updated["steps"] is first["steps"]
    assert torch.equal(first["w"], torch.tensor([2.0, 4.0])), "apply_to must not modify its input"
    with pytest.raises(StateArithmeticError):
        forget + StateVector({"other": torch.zeros(2)})


def test_tokenizer_mismatch_is_refused_before_writing(tmp_path):
    paths = save_family(tmp_path, tied=False)
    one = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}, "added_tokens": []}
    two = {"model": {"type": "BPE", "vocab": {"a": 1, "b": 0}, "merges": []}, "added_tokens": []}
    (paths["theta_0"] / "tokenizer.json").write_text(json.dumps(one))
    (paths["theta_1"] / "tokenizer.json").write_text(json.dumps(one))
    (paths["theta_d"] / "tokenizer.json").write_text(json.dumps(two))
    out = tmp_path / "out"
    with pytest.raises(StateArithmeticError, match="tokenizer of .* differs from that of the target"):
        combine_checkpoints(paths["theta_d"], [StateDelta(-1.0, paths["theta_1"], paths["theta_0"])], out)
    assert not out.exists()


def test_tokenizers_are_compared_by_vocabulary_not_bytes(tmp_path):
    """save_pretrained re-serialises tokenizer.json, and a base and an instruct release differ in templates and
    post-processing: what must match is the token -> row map, not the file's bytes."""
    paths = save_family(tmp_path, tied=False)
    vocab = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}, "added_tokens": []}
    for name, extra in [
        ("theta_0", {"post_processor": None}),
        ("theta_1", {"truncation": None}),
        ("theta_d", {}),
    ]:
        (paths[name] / "tokenizer.json").write_text(json.dumps(vocab | extra, indent=len(name)))
    combine_checkpoints(
        paths["theta_d"], [StateDelta(-1.0, paths["theta_1"], paths["theta_0"])], tmp_path / "out"
    )
    assert (tmp_path / "out").is_dir()


def test_alpha_has_no_effect_when_theta_1_equals_theta_0(untied: dict[str, Path], tmp_path: Path) -> None:
    same = {**untied, "theta_1": untied["theta_0"]}
    msa(same, tmp_path / "alpha", alpha=7.5, beta=0.3)
    msa(untied, tmp_path / "no_alpha", alpha=0.0, beta=0.3)
    with_alpha, without = load_weights(tmp_path / "alpha"), load_weights(tmp_path / "no_alpha")
    assert all(torch.equal(with_alpha[name], without[name]) for name in without)


def test_integer_tensors_are_copied_and_dtypes_kept(tmp_path: Path) -> None:
    """A bf16 checkpoint stays bf16, and an integer buffer (e.g. a step counter) is the target's, untouched."""
    paths = {}
    for name, shift in (("theta_0", 0.0), ("theta_1", 0.5), ("theta_2", 0.25), ("theta_d", 1.0)):
        paths[name] = tmp_path / name
        paths[name].mkdir()
        tensors = {
            "w": torch.full((4,), 1.0 + shift, dtype=torch.bfloat16),
            "steps": torch.tensor([3, int(shift * 4)]),
        }
        save_file(tensors, str(paths[name] / "model.safetensors"), metadata={"format": "pt"})
    msa(paths, tmp_path / "out", alpha=1.0, beta=2.0)
    result = load_weights(tmp_path / "out")
    assert result["w"].dtype == torch.bfloat16
    assert torch.equal(result["w"], torch.full((4,), 2.0 - 0.5 + 0.5, dtype=torch.bfloat16))
    assert torch.equal(result["steps"], torch.tensor([3, 4]))  # θ_D's, not θ_D − (θ1 − θ0) + 2(θ2 − θ0)
