"""Disk preflight and the one-line errors for known failures (issue 12, items 5 and 8; style.md Part B 9, 11, 16):
a full disk, accelerator out-of-memory and a corrupt safetensors file each end a run in one line that names the
stage, path or batch size and says what to change; the traceback goes to the run's log."""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import msa_bench.cli as cli
from msa_bench.errors import ResourceError
from msa_bench.failures import describe_known_failure, forget_failure_context
from msa_bench.models.build import load_model
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.disk_space import model_states_bytes, require_space_for_states
from msa_bench.results.files import write_json_atomically
from msa_bench.sweeps.status import JobStatus
from msa_bench.training.trainer import CausalLMTrainer
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.pipeline_runs import run_job
from tests.tiny_models import tiny_llama

Usage = namedtuple("Usage", "total used free")
NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(autouse=True)
def _clear_failure_context():
    yield
    forget_failure_context()


def little_space_under(monkeypatch, folder: Path, free: int = 1000) -> None:
    """shutil.disk_usage reports `free` bytes for paths under `folder` and plenty elsewhere."""
    real = shutil.disk_usage

    def disk_usage(path):
        if Path(path).resolve() == folder.resolve() or folder.resolve() in Path(path).resolve().parents:
            return Usage(10**12, 10**12 - free, free)
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def tiny_model_dir(folder: Path) -> Path:
    tiny_llama(128, hidden_size=16, intermediate_size=32, tie_word_embeddings=True).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------- disk preflight
def test_disk_preflight_refuses_before_training_with_required_free_and_path(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    little_space_under(monkeypatch, cache)
    with pytest.raises(ResourceError) as caught:
        run_job(cache, tmp_path / "run", [])
    message = str(caught.value)
    assert message.startswith("not enough free disk space for pretraining (")
    assert f"and {cache} has 1,000 bytes (1000 B) free" in message
    assert "it needs about " in message and "MiB) and" in message
    assert "point MSA_BENCH_CACHE (paths.cache_dir) at a larger disk" in message
    assert not any(cache.glob("history/*/_artifact.json")) and not list(cache.glob("history/.tmp-*"))
    assert not (cache / "finetune").exists()


def test_full_run_directory_is_refused_before_training(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    little_space_under(monkeypatch, out)
    with pytest.raises(
        ResourceError, match=r"the run's files .* has 1,000 bytes \(1000 B\) free; .*hydra\.run\.dir="
    ):
        run_job(tmp_path / "cache", out, [])
    assert not (tmp_path / "cache" / "history").exists()


def test_estimate_counts_every_state_a_stage_writes(tmp_path, monkeypatch):
    one = model_states_bytes(1_000_000_000, "bfloat16")
    assert 2.0e9 < one < 2.5e9  # 2 bytes a parameter, plus the margin
    assert model_states_bytes(1_000_000_000, "bfloat16", 5) == pytest.approx(5 * one, abs=5)
    assert model_states_bytes(10, "float32") > model_states_bytes(10, "bfloat16") - 1
    little_space_under(monkeypatch, tmp_path, free=3 * 10**9)
    require_space_for_states(tmp_path, "fine-tune target", 1_000_000_000, "bfloat16")  # fits
    with pytest.raises(ResourceError, match=r"fine-tune target \(2 model states of 1,000,000,000 parameters"):
        require_space_for_states(tmp_path, "fine-tune target", 1_000_000_000, "bfloat16", n_states=2)


# ---------------------------------------------------------------------------------------------------- ENOSPC midway
def test_results_json_failing_midway_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "run" / "per_item.json"
    write_json_atomically(path, {"previous": True})
    before = path.read_bytes()
    real_write_text = Path.write_text

    def write_half_then_fail(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    with pytest.raises(ResourceError) as caught:
        write_json_atomically(path, {"new": list(range(1000))})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["per_item.json"]
    assert str(caught.value).startswith(f"no space left on device while writing {path} (")
    assert "the previous file, if any, is unchanged" in str(caught.value)


def test_model_save_failing_midway_leaves_no_entry_and_a_one_line_message(tmp_path, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    model = load_model(tiny_model_dir(tmp_path / "model"))
    store = ArtifactStore(tmp_path / "cache")
    first = store.get_or_build("finetune", {"n": 1}, lambda out: model.save_pretrained(out))
    weights = first.path / "model.safetensors"
    before = weights.read_bytes()

    def write_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", write_half_then_fail)
    with pytest.raises(OSError) as caught:
        store.get_or_build("finetune", {"n": 2}, lambda out: model.save_pretrained(out))
    assert weights.read_bytes() == before
    assert sorted(
        p.name for p in (tmp_path / "cache" / "finetune").iterdir() if not p.name.endswith(".lock")
    ) == [first.key]
    message = describe_known_failure(caught.value)
    assert re.fullmatch(
        r"no space left on device writing \S+/cache/finetune/\.tmp-\S+/model\.safetensors \([\d.]+ \w+ free\); "
        r"free space there, or point MSA_BENCH_CACHE \(paths\.cache_dir\) at a larger disk",
        message,
    ), message


def test_a_library_error_reporting_enospc_in_its_text_is_recognised(tmp_path):
    filename = str(tmp_path / "model.safetensors")  # the local the failing frame holds

    def save():
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    with pytest.raises(SafetensorError) as caught:
        save()
    message = describe_known_failure(caught.value)
    assert message is not None and message.startswith(f"no space left on device writing {filename} (")


# ---------------------------------------------------------------------------------------------------- out of memory
def test_out_of_memory_names_stage_and_batch_size_and_the_run_ends_failed(tmp_path, monkeypatch, capsys):
    def out_of_memory(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CausalLMTrainer, "compute_loss", out_of_memory)
    out = tmp_path / "run"
    overrides = ["model.pretrain.recipe.batch_size=8", "model.pretrain.recipe.gradient_accumulation_steps=2"]
    with pytest.raises(torch.OutOfMemoryError) as caught:
        run_job(tmp_path / "cache", out, overrides)
    assert not (out / "results.json").exists()

    config = validate_config(compose_config(["experiment=smoke", *overrides], output_dir=out))
    status = JobStatus(out)
    status.running()
    with pytest.raises(SystemExit) as exited:
        cli._report_failure(caught.value, config, status, out)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("msa-bench: error: out of GPU memory while stage 1 of ")
    assert "target θ_D (fine-tune on the benchmark)), building history" in line
    assert "at batch size 8 × gradient_accumulation_steps 2" in line
    for advice in (
        "model.pretrain.recipe",
        "gradient_accumulation_steps",
        "more GPUs",
        "gradient_checkpointing=true",
        "peft=lora",
        "the memory preflight estimated",  # the figures the preflight made for this stage (issue 13)
    ):
        assert advice in line
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    log_text = (out / "msa_bench.log").read_text()
    assert "Traceback" in log_text and "OutOfMemoryError" in log_text


def test_out_of_memory_while_evaluating_names_metrics_batch_size():
    config = validate_config(compose_config(["experiment=smoke", "metrics.batch_size=48"]))
    from msa_bench.failures import remember_failure_context

    error = torch.OutOfMemoryError("CUDA out of memory.")
    remember_failure_context(error, stage="stage 6 of 6 (evaluate msa), building evaluation")
    message = describe_known_failure(error, config)
    assert "while stage 6 of 6 (evaluate msa), building evaluation at metrics.batch_size=48" in message
    assert "lower the batch size (metrics.batch_size)" in message


# ---------------------------------------------------------------------------------------------------- corrupt weights
@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors_names_the_file_and_cache_verify(tmp_path, damage):
    folder = tiny_model_dir(tmp_path / "finetune" / "0123abcd")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 16 + data[16:])
    with pytest.raises(SafetensorError) as caught:
        load_model(folder)
    message = describe_known_failure(caught.value)
    assert message is not None
    assert message.startswith(f"{weights} is corrupt (Error while deserializing header")
    assert "msa-bench cache verify" in message and str(folder) in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------------- status on a full disk
def test_status_write_failing_on_a_full_disk_is_one_more_line_not_a_crash(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    status = JobStatus(out)
    status.running()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(status, "failed", full)
    error = ResourceError(f"no space left on device while writing {out / 'results.json'}")
    with pytest.raises(SystemExit) as exited:
        cli._report_failure(error, None, status, out)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"msa-bench: error: no space left on device while writing {out / 'results.json'}"
    assert lines[1].startswith(f"msa-bench: also: could not mark {out / 'status.json'} failed (No space left")
    assert len(lines) == 2


def test_other_errors_keep_their_traceback_and_mark_the_run_failed(tmp_path):
    out = tmp_path / "run"
    status = JobStatus(out)
    status.running()
    with pytest.raises(KeyError):
        cli._report_failure(KeyError("a bug"), None, status, out)
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
