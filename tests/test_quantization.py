"""The quantization attacks' weights (msa_bench/attacks/quantization.py): the written-back weights are what torchao's
quantized model computes with, only the transformer blocks' Linears change, the size is the packed size, and bad input
is refused with a message naming the attack and the tensor."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from msa_bench.attacks.quantization import quantize_weights
from msa_bench.errors import AttackError
from msa_bench.models.build import load_model, save_model
from tests.tiny_models import tiny_llama, tiny_tokenizer

VOCAB = 100
# tiny_llama: 2 blocks, hidden 32, intermediate 64, 2 heads of 16 (k and v are 32 x 32 too).
BLOCK_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
BLOCK_LINEARS += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _model(**overrides) -> nn.Module:
    # initializer_range 0.3: weights large enough that int4 and int8 logits differ visibly from full precision.
    return tiny_llama(VOCAB, initializer_range=0.3, **overrides).eval()


def _torchao_quantized(model: nn.Module, scheme: str, group_size: int | None) -> nn.Module:
    """torchao's own quantized model (tensor subclasses, its quantized matmul), built here independently of the module
    under test: the same configs, applied to the blocks' Linears."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    if scheme == "int8":
        config = Int8WeightOnlyConfig(set_inductor_config=False)
    else:
        config = IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerGroup(group_size), mapping_type=MappingType.ASYMMETRIC
        )
    quantized = copy.deepcopy(model)
    quantize_(
        quantized, config, filter_fn=lambda module, fqn: isinstance(module, nn.Linear) and ".layers." in fqn
    )
    return quantized


def _logits(model: nn.Module) -> torch.Tensor:
    tokens = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _attacked(model: nn.Module, scheme: str, group_size: int | None = None):
    attacked = copy.deepcopy(model)
    report = quantize_weights(attacked, scheme, group_size=group_size, attack=f"quantize_{scheme}")
    return attacked, report


def _squared_error(model: nn.Module, attacked: nn.Module) -> float:
    return sum(
        float((a - b).detach().pow(2).sum())
        for a, b in zip(model.parameters(), attacked.parameters(), strict=True)
    )


@pytest.mark.parametrize(("scheme", "group_size"), [("int8", None), ("int4", 32), ("int4", 16)])
def test_written_back_weights_give_torchaos_quantized_logits(scheme, group_size):
    model = _model()
    attacked, _ = _attacked(model, scheme, group_size)
    library_logits = _logits(_torchao_quantized(model, scheme, group_size))

    torch.testing.assert_close(_logits(attacked), library_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(
        _logits(model), library_logits, atol=1e-3
    )  # the quantization shows in the logits
    # A plain model again: no tensor subclass left, nothing of torchao bound to the modules.
    assert {type(parameter.data) for parameter in attacked.parameters()} == {torch.Tensor}
    assert repr(attacked) == repr(model)


def test_the_attacked_model_saves_and_loads_like_any_model(tmp_path):
    tokenizer = tiny_tokenizer(["the quantized model is saved like any other", "and loaded back unchanged"])
    attacked, _ = _attacked(_model(), "int4", group_size=32)
    save_model(attacked, tokenizer, tmp_path / "attacked")
    torch.testing.assert_close(_logits(load_model(tmp_path / "attacked")), _logits(attacked), rtol=0, atol=0)


def test_int4_with_one_group_per_row_matches_torchao():
    model = _model(intermediate_size=32)  # every quantized Linear then has in_features 32
    attacked, report = _attacked(model, "int4", group_size=32)

    torch.testing.assert_close(
        _logits(attacked), _logits(_torchao_quantized(model, "int4", 32)), rtol=1e-5, atol=1e-5
    )
    rows = 2 * (4 * 32 + 2 * 32 + 32)  # 2 blocks; q, k, v, o, gate, up, down all have 32 rows
    weights = 2 * 7 * 32 * 32
    rest = 2 * VOCAB * 32 + 2 * 2 * 32 + 32  # embeddings, lm_head, 2 norms per block, the final norm
    assert (
        report.model_size_bytes == weights // 2 + rows * 4 + rows // 2 + rest * 4
    )  # one fp32 scale, one zero point


def test_only_the_blocks_linears_change_and_int4_changes_them_more_than_int8():
    model = _model()
    errors = {}
    for scheme, group_size in (("int8", None), ("int4", 32)):
        attacked, report = _attacked(model, scheme, group_size)
        original = dict(model.named_parameters())
        changed = {name for name, p in attacked.named_parameters() if not torch.equal(p, original[name])}
        targeted = {f"model.layers.{block}.{linear}.weight" for block in range(2) for linear in BLOCK_LINEARS}
        assert changed == targeted  # every targeted Linear changed; embeddings, lm_head and norms did not
        assert report.quantized_tensors == len(targeted)
        assert all(p.dtype == torch.float32 for p in attacked.parameters())
        errors[scheme] = _squared_error(model, attacked)
    assert 0 < errors["int8"] < errors["int4"]


def test_tied_embeddings_stay_tied_and_unchanged():
    model = _model(tie_word_embeddings=True)
    attacked, _ = _attacked(model, "int4", group_size=32)
    assert attacked.lm_head.weight is attacked.model.embed_tokens.weight
    assert torch.equal(attacked.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_a_bfloat16_model_gets_bfloat16_weights_back():
    model = _model().to(torch.bfloat16)
    attacked, _ = _attacked(model, "int4", group_size=32)
    assert {p.dtype for p in attacked.parameters()} == {torch.bfloat16}
    assert {type(p.data) for p in attacked.parameters()} == {torch.Tensor}


def test_model_size_is_the_packed_size_by_hand():
    # Per block: q, k, v, o are 32 x 32 (128 rows, 4096 weights); gate and up 64 x 32, down 32 x 64 (160 rows,
    # 6144 weights). Two blocks: 20480 weights in 576 rows; in groups of 32: 640 groups.
    weights, rows, groups = (
        2 * (4 * 32 * 32 + 3 * 64 * 32),
        2 * (4 * 32 + 64 + 64 + 32),
        2 * (4 * 32 * 32 + 3 * 64 * 32) // 32,
    )
    assert (weights, rows, groups) == (20480, 576, 640)
    rest = (
        2 * VOCAB * 32 + 2 * 2 * 32 + 32
    )  # embeddings and lm_head (untied), 2 norms per block, the final norm
    model = _model()
    assert sum(p.numel() for p in model.parameters()) == weights + rest

    _, int8 = _attacked(model, "int8")
    _, int4 = _attacked(model, "int4", group_size=32)
    assert int8.full_size_bytes == int4.full_size_bytes == (weights + rest) * 4 == 108160
    # int8: 1 byte per weight + one fp32 scale per row (symmetric: no zero point) + the rest in fp32.
    assert int8.model_size_bytes == weights + rows * 4 + rest * 4 == 49024
    # int4: half a byte per weight + per group one fp32 scale and one 4-bit zero point + the rest in fp32.
    assert int4.model_size_bytes == weights // 2 + groups * 4 + groups // 2 + rest * 4 == 39360
    assert int4.model_size_bytes < int8.model_size_bytes < int8.full_size_bytes
    assert (int4.library, int4.group_size, int8.group_size) == ("torchao", 32, None)


def test_tied_weights_are_counted_once():
    _, report = _attacked(_model(tie_word_embeddings=True), "int8")
    assert report.full_size_bytes == (20480 + VOCAB * 32 + 2 * 2 * 32 + 32) * 4


def test_a_group_size_that_does_not_divide_in_features_is_refused_naming_the_tensor():
    model = _model(intermediate_size=100)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AttackError) as raised:
        quantize_weights(model, "int4", group_size=32, attack="quantize_int4")
    message = str(raised.value)
    assert message.startswith("quantize_int4: ")
    assert "model.layers.0.mlp.down_proj.weight, in_features 100" in message
    assert "choose a group_size that divides" in message and "e.g. 4" in message  # gcd(32, 100) = 4
    assert all(
        torch.equal(before[name], value) for name, value in model.state_dict().items()
    )  # left as it was


@pytest.mark.parametrize("scheme", ["nf4", "bnb_int8"])
def test_bitsandbytes_schemes_without_cuda_name_the_cpu_alternatives(scheme, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AttackError, match=rf"^quantize_{scheme}: .*no CUDA device") as raised:
        quantize_weights(_model(), scheme, group_size=64, attack=f"quantize_{scheme}")
    assert "attacks=quantize_int8" in str(raised.value) and "attacks=quantize_int4" in str(raised.value)


def test_an_unknown_scheme_lists_the_schemes():
    with pytest.raises(
        AttackError,
        match=r"^quantize_int3: unknown quantization scheme 'int3'; the schemes are int8, int4, nf4, bnb_int8$",
    ):
        quantize_weights(_model(), "int3", group_size=32, attack="quantize_int3")


def test_a_missing_group_size_is_refused():
    with pytest.raises(AttackError, match=r"^quantize_int4: group_size=None must be a positive integer$"):
        quantize_weights(_model(), "int4", group_size=None, attack="quantize_int4")


def test_importing_torchao_under_the_filter_prints_nothing():
    # A fresh interpreter, so that torchao is not imported yet (transformers' model classes import it too).
    script = (
        "from msa_bench.quiet_imports import quiet_torchao_import\n"
        "with quiet_torchao_import():\n"
        "    import torchao.quantization\n"
        "import logging; logging.getLogger('torchao').warning('after the import torchao logs again')\n"
    )
    repo_root = Path(__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": str(repo_root)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        cwd=repo_root,
    )
    assert result.stderr.strip() == "after the import torchao logs again"
