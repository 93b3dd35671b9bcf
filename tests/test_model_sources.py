"""Pretrained model sources (local root, hub cache), fingerprints, loading, and arithmetic over stand-in revisions."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file

import msa_bench.arithmetic.checkpoint_files as checkpoint_files
import msa_bench.arithmetic.state_arithmetic as state_arithmetic
from msa_bench.arithmetic.state_arithmetic import (
    StateArithmeticError,
    StateDelta,
    arithmetic_dtype,
    check_tokenizers_match,
    combine_checkpoints,
)
from msa_bench.data.tokenizer import PAD_TOKEN, train_bpe_tokenizer
from msa_bench.models import build
from msa_bench.models.build import ensure_pad_token, load_model, load_tokenizer
from msa_bench.models.sources import MODELS_ENV_VAR, ModelSourceError, model_fingerprint, resolve_model_dir
from tests.stand_in_models import (
    END_OF_TEXT,
    END_OF_TURN,
    build_stand_in_model,
    build_stand_in_revisions,
)

torch.set_num_threads(1)

INSTRUCT = "stand-in/Llama-Tiny-Instruct"
BASE = "stand-in/Llama-Tiny"
REVISIONS = ["main", "stage1-step100", "stage1-step200"]


@pytest.fixture(autouse=True)
def _no_models_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODELS_ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_stand_in_revisions(root, INSTRUCT, REVISIONS)
    build_stand_in_model(root, BASE)
    return root


@pytest.fixture(scope="module")
def sharded_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sharded")
    build_stand_in_revisions(root, INSTRUCT, REVISIONS, shard=True)
    return root


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def formula(target: Path, finetuned: Path, base: Path, alpha: float) -> dict[str, torch.Tensor]:
    """θ_D − α(θ1 − θ0) in fp32, in memory."""
    theta_d, theta_1, theta_0 = load_weights(target), load_weights(finetuned), load_weights(base)
    return {
        name: theta_d[name].float() - alpha * (theta_1[name].float() - theta_0[name].float())
        for name in theta_d
    }


# --------------------------------------------------------------------------------------------------
# Resolving model folders


def test_resolves_nested_local_folder(root: Path) -> None:
    found = resolve_model_dir(INSTRUCT, "stage1-step100", root)
    assert found == root / "stand-in" / "Llama-Tiny-Instruct" / "stage1-step100"
    assert (
        resolve_model_dir(INSTRUCT, "main", str(root)) == root / "stand-in" / "Llama-Tiny-Instruct" / "main"
    )


def test_environment_variable_is_the_default_local_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODELS_ENV_VAR, str(root))
    assert resolve_model_dir(BASE, "main", None) == root / "stand-in" / "Llama-Tiny" / "main"


def test_missing_revision_names_path_revision_and_remedy(root: Path) -> None:
    with pytest.raises(ModelSourceError) as raised:
        resolve_model_dir(INSTRUCT, "stage2-step999", root)
    message = str(raised.value)
    assert str(root / "stand-in" / "Llama-Tiny-Instruct" / "stage2-step999") in message
    assert "'stage2-step999'" in message and f"'{INSTRUCT}'" in message
    assert "main, stage1-step100, stage1-step200" in message  # the revisions that are there
    assert "model.local_root" in message and MODELS_ENV_VAR in message and "network" in message
    assert isinstance(raised.value, FileNotFoundError)


def test_missing_repository_and_root(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"stand-in/Llama-Other.* does not exist"):
        resolve_model_dir("stand-in/Llama-Other", "main", root)
    with pytest.raises(ModelSourceError, match=r"the local root .*nowhere does not exist"):
        resolve_model_dir(INSTRUCT, "main", tmp_path / "nowhere")
    with pytest.raises(ModelSourceError, match="not a valid name"):
        resolve_model_dir("../escape", "main", root)


def test_folder_without_weights_or_config_is_incomplete(root: Path, tmp_path: Path) -> None:
    source = root / "stand-in" / "Llama-Tiny" / "main"
    no_weights = tmp_path / "org" / "model" / "no-weights"
    shutil.copytree(source, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelSourceError, match=r"incomplete: no weights \(model\.safetensors") as raised:
        resolve_model_dir("org/model", "no-weights", tmp_path)
    assert str(no_weights) in str(raised.value) and "'no-weights'" in str(raised.value)

    no_config = tmp_path / "org" / "model" / "no-config"
    shutil.copytree(source, no_config, ignore=shutil.ignore_patterns("config.json"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model_dir("org/model", "no-config", tmp_path)


def test_sharded_folder_with_missing_shard_is_incomplete(sharded_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / INSTRUCT / "main"
    shutil.copytree(sharded_root / INSTRUCT / "main", folder)
    assert resolve_model_dir(INSTRUCT, "main", tmp_path) == folder
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelSourceError, match=f"missing: {shard.name}"):
        resolve_model_dir(INSTRUCT, "main", tmp_path)


def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Make sure the hub is never contacted, and record every snapshot_download call."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    calls: list[dict] = []
    real = huggingface_hub.snapshot_download

    def spy(**kwargs):
        calls.append(kwargs)
        assert kwargs["local_files_only"] is True, "the hub must not be contacted in tests"
        return real(**kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return calls


def test_hub_offline_and_not_cached_names_hub_id_and_revision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _offline_hub(monkeypatch)
    with pytest.raises(ModelSourceError) as raised:
        resolve_model_dir("meta-llama/Llama-3.1-8B", "main", None, cache_dir=tmp_path / "hf-cache")
    message = str(raised.value)
    assert "'meta-llama/Llama-3.1-8B'" in message and "revision 'main'" in message
    assert "Hugging Face hub" in message and "LocalEntryNotFoundError" in message
    assert "offline mode is on (HF_HUB_OFFLINE" in message
    assert "model.local_root" in message and MODELS_ENV_VAR in message
    assert len(calls) == 1 and "*.safetensors" in calls[0]["allow_patterns"]


def _fake_cache(cache: Path, hub_id: str, source: Path, commit: str, *, weights: bool = True) -> Path:
    """An HF hub cache entry for hub_id@main, as snapshot_download leaves it (refs/main -> snapshots/<commit>)."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    ignore = None if weights else shutil.ignore_patterns("*.safetensors")
    shutil.copytree(source, snapshot, ignore=ignore)
    return snapshot


def test_hub_cache_is_used_without_network(
    root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _offline_hub(monkeypatch)
    cache = tmp_path / "hf-cache"
    snapshot = _fake_cache(cache, "meta-llama/Llama-3.1-8B", root / BASE / "main", "a" * 40)
    assert resolve_model_dir("meta-llama/Llama-3.1-8B", "main", None, cache_dir=cache) == snapshot
    assert len(calls) == 1

    # A snapshot that lacks weights (only configs were fetched before) is not good enough.
    _fake_cache(cache, "meta-llama/Llama-3.1-8B-Instruct", root / INSTRUCT / "main", "b" * 40, weights=False)
    with pytest.raises(ModelSourceError, match=r"cached snapshot .* is incomplete \(no weights"):
        resolve_model_dir("meta-llama/Llama-3.1-8B-Instruct", "main", None, cache_dir=cache)


# --------------------------------------------------------------------------------------------------
# Fingerprints


def test_fingerprint_is_content_based(root: Path, tmp_path: Path) -> None:
    main = root / INSTRUCT / "main"
    fingerprint = model_fingerprint(main)
    assert len(fingerprint) == 16 and fingerprint == model_fingerprint(main)

    copy = tmp_path / "copy"
    shutil.copytree(main, copy)
    assert model_fingerprint(copy) == fingerprint, "the path must not matter"
    (copy / ".cache").mkdir()
    (copy / "_artifact.json").write_text("{}")
    (copy / ".lock").write_text("")
    assert model_fingerprint(copy) == fingerprint, "cache markers and hidden files must not matter"

    assert model_fingerprint(root / INSTRUCT / "stage1-step100") != fingerprint
    # Weights replaced by another revision's (same names, same sizes, same header).
    shutil.copy2(root / INSTRUCT / "stage1-step100" / "model.safetensors", copy / "model.safetensors")
    assert (copy / "model.safetensors").stat().st_size == (main / "model.safetensors").stat().st_size
    assert model_fingerprint(copy) != fingerprint
    shutil.copy2(main / "model.safetensors", copy / "model.safetensors")
    assert model_fingerprint(copy) == fingerprint
    # Tokenizer configuration (here: the chat template) is part of the model.
    (copy / "chat_template.jinja").write_text("{{ messages }}")
    assert model_fingerprint(copy) != fingerprint


def test_hub_snapshot_fingerprint_uses_the_commit(root: Path, tmp_path: Path) -> None:
    source = root / BASE / "main"
    first = _fake_cache(tmp_path / "one", "org/model", source, "a" * 40)
    same_commit = _fake_cache(tmp_path / "two", "org/model", source, "a" * 40)
    other_commit = _fake_cache(tmp_path / "three", "org/model", source, "c" * 40)
    assert model_fingerprint(first) == model_fingerprint(same_commit)
    assert model_fingerprint(first) != model_fingerprint(other_commit)
    assert model_fingerprint(first) != model_fingerprint(source)


# --------------------------------------------------------------------------------------------------
# Loading


def test_load_stand_in_in_fp32_and_train_a_few_steps(root: Path) -> None:
    model_dir = resolve_model_dir(INSTRUCT, "main", root)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "cpu", "float32")
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query, as Llama 3

    text = "Question: Where was the author born?\nAnswer: The author was born in Paris, France."
    batch = tokenizer([text], return_tensors="pt")
    assert batch["input_ids"][0, 0] == tokenizer.bos_token_id
    assert len(tokenizer.tokenize(text)) < len(text) / 2, "the vocabulary should hold whole words"
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_load_bf16_checkpoint_in_requested_dtype(tmp_path: Path) -> None:
    folder = build_stand_in_model(tmp_path, BASE, dtype=torch.bfloat16)
    assert {tensor.dtype for tensor in load_weights(folder).values()} == {torch.bfloat16}
    assert next(load_model(folder, "cpu", "float32").parameters()).dtype == torch.float32
    assert next(load_model(folder, "cpu", "bfloat16").parameters()).dtype == torch.bfloat16


def test_accelerator_load_places_weights_directly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Off the CPU the model is loaded with a device map (each tensor goes straight to the device in the requested
    dtype), not loaded on the host and moved; checked by the arguments, as the test machines have no GPU."""
    calls = []

    class Loaded:
        def to(self, device):
            raise AssertionError("an accelerator model must not be moved after loading")

    def fake_from_pretrained(model_dir, **kwargs):
        calls.append(kwargs)
        return Loaded()

    monkeypatch.setattr(build.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(
        b""
    )  # the folder check looks for the file, from_pretrained is fake
    load_model(tmp_path, "cuda:1", "bfloat16")
    assert calls == [
        {
            "dtype": torch.bfloat16,
            "device_map": {"": torch.device("cuda", 1)},
            "local_files_only": True,
            "use_safetensors": True,
            "trust_remote_code": False,
        }
    ]


def test_pad_token_falls_back_to_eos(root: Path, tmp_path: Path) -> None:
    instruct = load_tokenizer(root / INSTRUCT / "main")
    assert instruct.eos_token == END_OF_TURN and instruct.pad_token == END_OF_TURN
    assert instruct.pad_token_id == instruct.eos_token_id
    assert instruct.chat_template is not None
    base = load_tokenizer(root / BASE / "main")
    assert base.eos_token == END_OF_TEXT and base.pad_token == END_OF_TEXT and base.chat_template is None
    # Same vocabulary: base and instruct states can enter the same arithmetic.
    check_tokenizers_match(
        root / INSTRUCT / "main", [root / BASE / "main", root / INSTRUCT / "stage1-step100"]
    )

    # The embedded tokenizer has its own pad token, which stays.
    embedded = train_bpe_tokenizer(["the author was born in the city"] * 4, vocab_size=280)
    embedded.save_pretrained(tmp_path / "embedded")
    assert load_tokenizer(tmp_path / "embedded").pad_token == PAD_TOKEN
    assert ensure_pad_token(embedded) is False

    instruct.eos_token = None
    instruct.pad_token = None
    with pytest.raises(ValueError, match="neither a pad nor an eos token"):
        ensure_pad_token(instruct)


# --------------------------------------------------------------------------------------------------
# Arithmetic


def test_arithmetic_dtype_names() -> None:
    assert arithmetic_dtype("float32") is torch.float32
    assert arithmetic_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(StateArithmeticError, match=r"model.arithmetic_dtype='float16'.*float32, bfloat16"):
        arithmetic_dtype("float16")


def _msa(root: Path, out: Path, alpha: float, **kwargs) -> dict:
    """θ_D = main; θ1 = step200, θ0 = step100 (the forget delta between two revisions)."""
    folders = {revision: resolve_model_dir(INSTRUCT, revision, root) for revision in REVISIONS}
    delta = StateDelta(-alpha, folders["stage1-step200"], folders["stage1-step100"])
    return combine_checkpoints(folders["main"], [delta], out, **kwargs)


def test_arithmetic_over_revisions_matches_formula(root: Path, tmp_path: Path) -> None:
    alpha = 0.8
    report = _msa(root, tmp_path / "out", alpha)
    expected = formula(
        root / INSTRUCT / "main",
        root / INSTRUCT / "stage1-step200",
        root / INSTRUCT / "stage1-step100",
        alpha,
    )
    result = load_weights(tmp_path / "out")
    assert result.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(result[name], tensor, atol=1e-6, rtol=0)
    assert report["delta_norms"][0] > 0
    # The output is a complete model folder of the same family.
    assert (tmp_path / "out" / "chat_template.jinja").is_file()
    model = load_model(tmp_path / "out")
    torch.testing.assert_close(
        model.model.norm.weight.detach(), expected["model.norm.weight"], atol=1e-6, rtol=0
    )


def test_bf16_arithmetic_is_close_to_fp32(root: Path, tmp_path: Path) -> None:
    alpha = 0.8
    _msa(root, tmp_path / "fp32", alpha, compute_dtype=arithmetic_dtype("float32"))
    _msa(root, tmp_path / "bf16", alpha, compute_dtype=arithmetic_dtype("bfloat16"))
    exact, approximate = load_weights(tmp_path / "fp32"), load_weights(tmp_path / "bf16")
    differs = False
    for name, tensor in exact.items():
        assert approximate[name].dtype == torch.float32  # written in the target's dtype
        # bf16 keeps 8 significant bits: a few roundings of values of this magnitude.
        torch.testing.assert_close(approximate[name], tensor, rtol=2**-6, atol=1e-3)
        differs |= not torch.equal(approximate[name], tensor)
    assert differs, "bf16 arithmetic should round somewhere"


def test_bf16_checkpoints(tmp_path: Path) -> None:
    """Hub checkpoints are stored in bf16: fp32 arithmetic rounds once, bf16 arithmetic stays close."""
    folders = build_stand_in_revisions(tmp_path / "models", INSTRUCT, REVISIONS, dtype=torch.bfloat16)
    alpha = 1.3
    delta = StateDelta(-alpha, folders["stage1-step200"], folders["stage1-step100"])
    combine_checkpoints(folders["main"], [delta], tmp_path / "fp32")
    combine_checkpoints(folders["main"], [delta], tmp_path / "bf16", compute_dtype=torch.bfloat16)
    expected = formula(folders["main"], folders["stage1-step200"], folders["stage1-step100"], alpha)
    exact, approximate = load_weights(tmp_path / "fp32"), load_weights(tmp_path / "bf16")
    for name, tensor in expected.items():
        assert exact[name].dtype == torch.bfloat16 and approximate[name].dtype == torch.bfloat16
        assert torch.equal(exact[name], tensor.to(torch.bfloat16))
        torch.testing.assert_close(approximate[name].float(), tensor, rtol=2**-5, atol=1e-3)


def test_sharded_streaming_reads_one_shard_per_input_at_a_time(
    sharded_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = {revision: sharded_root / INSTRUCT / revision for revision in REVISIONS}
    shards = sorted(path.name for path in folders["main"].glob("model-*.safetensors"))
    assert len(shards) > 2

    open_files: set[Path] = set()
    open_per_save: list[tuple[str, set[Path]]] = []

    class CountingReader(checkpoint_files.TensorFileReader):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            open_files.add(self.path)

        def close(self) -> None:
            open_files.discard(self.path)
            super().close()

    class RecordingWriter(state_arithmetic.StreamingSafetensorsWriter):
        def close(self) -> None:
            open_per_save.append((self.path.name, set(open_files)))
            super().close()

    monkeypatch.setattr(checkpoint_files, "TensorFileReader", CountingReader)
    monkeypatch.setattr(state_arithmetic, "StreamingSafetensorsWriter", RecordingWriter)
    alpha, beta = 0.6, 0.4
    deltas = [
        StateDelta(-alpha, folders["stage1-step200"], folders["stage1-step100"]),
        StateDelta(beta, folders["stage1-step100"], folders["main"]),
    ]
    report = combine_checkpoints(folders["main"], deltas, tmp_path / "out")

    assert not open_files, "every input file is closed at the end"
    assert [name for name, _ in open_per_save] == shards and report["n_files"] == len(shards)
    for shard, opened in open_per_save:
        # When an output shard is finished, only that shard of each input is open, nothing else.
        assert opened == {folders[revision] / shard for revision in REVISIONS}

    theta_d, theta_1, theta_0 = (
        load_weights(folders[revision]) for revision in ("main", "stage1-step200", "stage1-step100")
    )
    result = load_weights(tmp_path / "out")
    for name, tensor in theta_d.items():
        expected = tensor - alpha * (theta_1[name] - theta_0[name]) + beta * (theta_0[name] - tensor)
        torch.testing.assert_close(result[name], expected, atol=1e-6, rtol=0)
    combine_checkpoints(folders["main"], deltas, tmp_path / "bf16", compute_dtype=torch.bfloat16)
    for name, tensor in load_weights(tmp_path / "bf16").items():
        torch.testing.assert_close(tensor, result[name], rtol=2**-6, atol=1e-3)
