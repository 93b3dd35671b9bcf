"""Streaming state arithmetic: the bytes it writes are those of the previous in-memory path (save_file on whole
computed tensors), the files load in transformers and safetensors, and its peak memory stays below one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import msa_bench.arithmetic.state_arithmetic as state_arithmetic
from msa_bench.arithmetic import StateArithmeticError, StateDelta, combine_checkpoints
from msa_bench.arithmetic.checkpoint_files import read_layout
from msa_bench.arithmetic.safetensors_stream import StreamingSafetensorsWriter, TensorFileReader, row_chunks
from msa_bench.arithmetic.tensor_arithmetic import apply_differences, state_difference
from msa_bench.errors import NonFiniteWeightsError
from tests.tiny_models import tiny_llama

torch.set_num_threads(1)

REPOSITORY = Path(__file__).resolve().parents[1]
ALPHA, BETA = 0.7, 0.3


def save_family(
    root: Path, *, tied: bool, dtype: torch.dtype, max_shard_size: str | None = None
) -> dict[str, Path]:
    """θ0 and three perturbations of it (θ1, θ2, θ_D), saved by save_pretrained in `dtype`."""
    model = tiny_llama(64, tie_word_embeddings=tied).to(dtype)
    theta_0 = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    paths = {}
    for name, seed in [("theta_0", None), ("theta_1", 1), ("theta_2", 2), ("theta_d", 3)]:
        model.load_state_dict(theta_0)
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_((0.05 * torch.randn(parameter.shape, generator=generator)).to(dtype))
        paths[name] = root / name
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(paths[name], **kwargs)
    return paths


def msa_deltas(paths: dict[str, Path]) -> list[StateDelta]:
    return [
        StateDelta(-ALPHA, paths["theta_1"], paths["theta_0"]),
        StateDelta(BETA, paths["theta_2"], paths["theta_0"]),
    ]


def write_with_previous_path(paths: dict[str, Path], out: Path, compute_dtype: torch.dtype) -> None:
    """What combine_checkpoints wrote before streaming: each output shard computed whole in memory, then save_file."""
    layout = read_layout(paths["theta_d"])
    out.mkdir()
    for file_name, names in layout.keys_by_file.items():
        inputs = {checkpoint: load_file(path / file_name) for checkpoint, path in paths.items()}
        output = {}
        for name in names:
            terms = [
                (-ALPHA, state_difference(inputs["theta_1"][name], inputs["theta_0"][name], compute_dtype)),
                (BETA, state_difference(inputs["theta_2"][name], inputs["theta_0"][name], compute_dtype)),
            ]
            output[name] = apply_differences(inputs["theta_d"][name], terms, compute_dtype).contiguous()
        save_file(output, str(out / file_name), metadata=layout.metadata_by_file[file_name])


@pytest.mark.parametrize(
    ("tied", "dtype", "max_shard_size", "compute_dtype"),
    [
        (False, torch.float32, None, torch.float32),
        (True, torch.bfloat16, None, torch.float32),
        (False, torch.bfloat16, "20KB", torch.float32),
        (True, torch.float32, "20KB", torch.bfloat16),
    ],
    ids=["fp32-unsharded", "bf16-tied-unsharded", "bf16-sharded", "fp32-tied-sharded-bf16-compute"],
)
def test_output_bytes_equal_the_previous_in_memory_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tied: bool,
    dtype: torch.dtype,
    max_shard_size: str | None,
    compute_dtype: torch.dtype,
) -> None:
    # Chunks of 100 values: every matrix is split across many chunks, some rows of the 64-wide ones in two.
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_family(tmp_path / "in", tied=tied, dtype=dtype, max_shard_size=max_shard_size)
    combine_checkpoints(
        paths["theta_d"], msa_deltas(paths), tmp_path / "streamed", compute_dtype=compute_dtype
    )
    write_with_previous_path(paths, tmp_path / "previous", compute_dtype)

    expected = sorted(path.name for path in (tmp_path / "previous").glob("*.safetensors"))
    assert sorted(path.name for path in (tmp_path / "streamed").glob("*.safetensors")) == expected
    assert len(expected) == (
        1 if max_shard_size is None else len(list(paths["theta_d"].glob("*.safetensors")))
    )
    for file_name in expected:
        assert (tmp_path / "streamed" / file_name).read_bytes() == (
            tmp_path / "previous" / file_name
        ).read_bytes()
    assert not list((tmp_path / "streamed").glob(".*")), "no partial file is left"

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() or not tied
    previous = {}
    for file_name in expected:
        previous |= load_file(tmp_path / "previous" / file_name)
    for name, tensor in model.state_dict().items():
        stored = previous.get(name, previous.get("model.embed_tokens.weight"))  # lm_head when tied
        assert torch.equal(tensor, stored), name


def test_writer_matches_save_file_for_every_dtype_and_odd_shapes(tmp_path: Path) -> None:
    tensors = {
        "z.bf16": torch.randn(5, 3).to(torch.bfloat16),
        "a.fp32": torch.randn(7, 2, 3),
        "m.fp16": torch.randn(4).half(),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "steps": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False, True]),
        "codes": torch.arange(9, dtype=torch.uint8),
        "i32": torch.arange(4, dtype=torch.int32),
        "f8": torch.randn(6).to(torch.float8_e4m3fn),
    }
    entries = {name: (dtype_name(tensor), tuple(tensor.shape)) for name, tensor in tensors.items()}
    for metadata in (None, {"format": "pt"}, {}, {"format": 'pt é \n \x01 " \\'}):
        save_file(tensors, str(tmp_path / "expected.safetensors"), metadata=metadata)
        with StreamingSafetensorsWriter(tmp_path / "streamed.safetensors", entries, metadata) as writer:
            for name in writer.order:
                for chunk in row_chunks(tensors[name].shape, 4):
                    rows = (
                        tensors[name] if tensors[name].dim() == 0 else tensors[name][chunk.start : chunk.stop]
                    )
                    writer.write(name, rows)
        expected = (tmp_path / "expected.safetensors").read_bytes()
        assert (tmp_path / "streamed.safetensors").read_bytes() == expected, metadata

    # Reading rows back by plain reads gives the stored values.
    reader = TensorFileReader(tmp_path / "streamed.safetensors")
    with safe_open(str(tmp_path / "streamed.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": 'pt é \n \x01 " \\'}
        for name, tensor in tensors.items():
            dtype, shape = entries[name]
            stop = shape[0] if shape else 1
            assert torch.equal(reader.read_rows(name, dtype, shape, 0, stop), handle.get_tensor(name))
            if len(shape) > 1 and shape[0] > 2:
                assert torch.equal(reader.read_rows(name, dtype, shape, 1, 3), tensor[1:3])
    reader.close()


def dtype_name(tensor: torch.Tensor) -> str:
    from msa_bench.arithmetic.safetensors_stream import TORCH_DTYPES

    return next(name for name, dtype in TORCH_DTYPES.items() if dtype == tensor.dtype)


def test_writer_refuses_out_of_order_or_missing_tensors_and_leaves_no_file(tmp_path: Path) -> None:
    entries = {"a": ("F32", (2,)), "b": ("F32", (3,))}
    path = tmp_path / "w.safetensors"
    with pytest.raises(StateArithmeticError, match=r"tensor 'b' written out of order; expected a"):
        with StreamingSafetensorsWriter(path, entries, None) as writer:
            writer.write("b", torch.zeros(3))
    with pytest.raises(StateArithmeticError, match=r"tensor 'b' and 0 more were not written"):
        with StreamingSafetensorsWriter(path, entries, None) as writer:
            writer.write("a", torch.zeros(2))
    with pytest.raises(StateArithmeticError, match=r"more bytes written for tensor 'a' than its shape holds"):
        with StreamingSafetensorsWriter(path, entries, None) as writer:
            writer.write("a", torch.zeros(5))
    assert list(tmp_path.iterdir()) == []


def test_non_finite_tensor_in_a_later_chunk_stops_the_shard_and_counts_the_whole_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32)
    weights = load_file(paths["theta_1"] / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    weights[name][-1, :3] = float("inf")  # in the last chunk of that tensor
    weights[name][0, 0] = float("nan")  # and in its first
    save_file(weights, str(paths["theta_1"] / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(NonFiniteWeightsError) as raised:
        combine_checkpoints(paths["theta_d"], msa_deltas(paths), out)
    numel = weights[name].numel()
    assert f"the combined tensor {name!r} holds 1 NaN and 3 inf of its {numel} values" in str(raised.value)
    assert f"input checkpoint {paths['theta_1'].resolve()} already holds non-finite values" in str(
        raised.value
    )
    assert [path.name for path in out.iterdir() if "safetensors" in path.name] == []


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS"
)
def test_peak_memory_of_streaming_stays_below_one_model(tmp_path: Path) -> None:
    """combine_checkpoints on four ~12 MB unsharded bf16 checkpoints, in a fresh process: the peak RSS grows by less
    than 1.2 models plus 64 MB (one chunk's working set, about 50 MB, and allocator slack). The previous
    implementation grew by 12.9 models at 20 MB (the fp32 temporaries of the whole embedding matrix, and the mapped
    pages of every input shard)."""
    command = [
        sys.executable,
        str(REPOSITORY / "scripts" / "bench_arithmetic_memory.py"),
        *("--hidden", "256", "--intermediate", "1024", "--layers", "2", "--heads", "4", "--kv-heads", "2"),
        *("--vocab", "16000", "--shard-mb", "1000", "--skip-baseline", "--json"),
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "TMPDIR": str(tmp_path)}
    completed = subprocess.run(
        command, env=environment, capture_output=True, text=True, check=False, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(completed.stdout)
    model_bytes = figures["model_bytes"]
    assert 10e6 < model_bytes < 14e6 and figures["n_shards"] == 1
    measured = figures["streaming"]
    growth = measured["peak_bytes"] - measured["rss_before_bytes"]
    assert growth < 1.2 * model_bytes + 64 * 2**20, figures
