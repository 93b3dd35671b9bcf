"""No model with NaN or inf weights is written (issue 12, item 2): not by save_model after training, not by the
streaming state arithmetic, and so never into the artifact cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from msa_bench.arithmetic import StateDelta, combine_checkpoints
from msa_bench.errors import DivergenceError, NonFiniteWeightsError
from msa_bench.models.build import save_model
from msa_bench.models.finite import first_non_finite
from msa_bench.pipeline.artifacts import ArtifactStore
from tests.tiny_models import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

BAD_TENSOR = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(["the cat sat on the mat", "a dog ran in the park"])


def poisoned(tokenizer, values: list[float]):
    """A tiny model whose BAD_TENSOR starts with `values` (NaN, inf...)."""
    model = tiny_llama(len(tokenizer), tokenizer=tokenizer)
    with torch.no_grad():
        model.get_parameter(BAD_TENSOR).view(-1)[: len(values)] = torch.tensor(values)
    return model


def test_first_non_finite_stops_at_the_first_bad_tensor_and_counts_its_values() -> None:
    tensors = [
        ("steps", torch.tensor([1, 2])),  # integers cannot hold NaN and are not looked at
        ("fine", torch.ones(3)),
        ("bad", torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])),
        ("also_bad", torch.tensor([float("nan")])),
    ]
    found = first_non_finite(tensors)
    assert (found.name, found.n_nan, found.n_inf, found.numel) == ("bad", 1, 2, 4)
    assert first_non_finite(tensors[:2]) is None


def test_save_model_refuses_nan_weights_naming_the_tensor_and_writes_nothing(
    tokenizer, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    with pytest.raises(NonFiniteWeightsError) as raised:
        save_model(poisoned(tokenizer, [float("nan")] * 3 + [float("inf")]), tokenizer, out)
    message = str(raised.value)
    assert f"tensor {BAD_TENSOR!r} holds 3 NaN and 1 inf of its 2048 values" in message
    assert str(out) in message and "learning_rate" in message and "\n" not in message
    assert isinstance(raised.value, DivergenceError)
    assert not out.exists()


def test_a_stage_whose_model_has_nan_weights_is_not_committed_to_the_cache(tokenizer, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    spec = {"stage": "target", "seed": 0}
    with pytest.raises(NonFiniteWeightsError, match=BAD_TENSOR):
        store.get_or_build(
            "finetune", spec, lambda out: save_model(poisoned(tokenizer, [float("nan")]), tokenizer, out)
        )
    assert store.lookup("finetune", spec) is None
    left = [entry.name for entry in (tmp_path / "cache" / "finetune").iterdir()]
    assert [name for name in left if not name.endswith(".lock")] == []  # no entry, no temporary left


def test_save_model_accepts_finite_weights(tokenizer, tmp_path: Path) -> None:
    save_model(tiny_llama(len(tokenizer), tokenizer=tokenizer), tokenizer, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()


# --- state arithmetic ---------------------------------------------------------------------------------------------


def save_states(root: Path, dtype: torch.dtype) -> dict[str, Path]:
    """θ0, θ1 (θ0 moved by 0.05·noise) and θ_D = θ0, saved in `dtype`."""
    model = tiny_llama(64).to(dtype)
    paths = {}
    for name, seed in (("theta_0", None), ("theta_1", 1), ("theta_d", None)):
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_((0.05 * torch.randn(parameter.shape, generator=generator)).to(dtype))
        paths[name] = root / name
        model.save_pretrained(paths[name])
    return paths


def forget(paths: dict[str, Path], out: Path, alpha: float) -> dict:
    return combine_checkpoints(
        paths["theta_d"], [StateDelta(-alpha, paths["theta_1"], paths["theta_0"])], out
    )


def test_arithmetic_with_a_nan_in_an_input_names_the_input_and_the_tensor(tmp_path: Path) -> None:
    paths = save_states(tmp_path, torch.float32)
    weights = load_file(paths["theta_1"] / "model.safetensors")
    weights[BAD_TENSOR][0, :2] = float("nan")
    save_file(weights, str(paths["theta_1"] / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(NonFiniteWeightsError) as raised:
        forget(paths, out, alpha=1.0)
    message = str(raised.value)
    assert f"the combined tensor {BAD_TENSOR!r} holds 2 NaN and 0 inf" in message
    assert f"input checkpoint {paths['theta_1']} already holds non-finite values" in message
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("dtype", "alpha"), [(torch.float32, 1e39), (torch.bfloat16, 1e39), (torch.float16, 1e7)]
)
def test_arithmetic_that_overflows_the_dtype_names_the_tensor_and_the_coefficients(
    tmp_path: Path, dtype: torch.dtype, alpha: float
) -> None:
    paths = save_states(tmp_path, dtype)
    out = tmp_path / "out"
    with pytest.raises(NonFiniteWeightsError) as raised:
        forget(paths, out, alpha=alpha)
    message = str(raised.value)
    assert re.search(
        r"the combined tensor '[\w.]+' holds \d+ NaN and [1-9]\d* inf of its \d+ values", message
    )
    assert f"with coefficients [{-alpha}] overflows {str(dtype).removeprefix('torch.')}" in message
    assert "lower the coefficients (method.alpha, method.beta)" in message
    assert not (out / "model.safetensors").exists()
    forget(paths, out, alpha=1.0)  # a sane coefficient on the same checkpoints goes through
    assert (out / "model.safetensors").is_file()
