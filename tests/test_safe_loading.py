"""Loading a model never runs code from its files: pickle weights and untrusted remote code are refused, without a
prompt (style.md Part B item 13; issue 12, "Remote code can run")."""

from __future__ import annotations

import builtins
import io
import json
import logging
import pickle
import sys
from pathlib import Path

import pytest
import torch

from msa_bench.models import build
from msa_bench.models.build import load_model, load_tokenizer, save_model
from msa_bench.models.safety import UnsafeModelError, check_model_folder
from msa_bench.models.sources import ModelSourceError, resolve_model_dir
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.tiny_models import tiny_llama, tiny_tokenizer


class _CreatesSentinel:
    """Unpickling this creates the file `path`: the stand-in for a malicious payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def write_malicious_pickle(path: Path, sentinel: Path) -> None:
    path.write_bytes(pickle.dumps({"model.embed_tokens.weight": _CreatesSentinel(sentinel)}))


@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    """A real tiny model folder (config.json, model.safetensors, tokenizer files)."""
    tokenizer = tiny_tokenizer(["alpha beta gamma delta", "one two three four"])
    folder = tmp_path / "org" / "model" / "main"
    save_model(tiny_llama(len(tokenizer), tokenizer=tokenizer), tokenizer, folder)
    return folder


@pytest.fixture
def no_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    """`echo y |` on stdin, and any prompt fails the test."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))

    def refuse_prompt(*args, **kwargs):
        raise AssertionError("loading a model asked an interactive question")

    monkeypatch.setattr(builtins, "input", refuse_prompt)


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt"])
def test_pickle_checkpoint_is_refused(saved_model: Path, tmp_path: Path, pickle_name: str) -> None:
    sentinel = tmp_path / "sentinel"
    (saved_model / "model.safetensors").rename(
        saved_model / "stray.safetensors"
    )  # a stray file must not count
    write_malicious_pickle(saved_model / pickle_name, sentinel)

    with pytest.raises(UnsafeModelError) as raised:
        load_model(saved_model)
    message = str(raised.value)
    assert str(saved_model) in message and pickle_name in message
    assert "never loads" in message and "save_pretrained" in message  # says why and how to convert
    with pytest.raises(ModelSourceError, match=f"incomplete: its weights are pickles \\({pickle_name}\\)"):
        resolve_model_dir("org/model", "main", tmp_path)
    assert not sentinel.exists()

    # The payload is live: unpickling it is what the loader avoided.
    pickle.loads((saved_model / pickle_name).read_bytes())
    assert sentinel.exists()


def test_an_index_of_pickle_shards_is_refused(saved_model: Path, tmp_path: Path) -> None:
    (saved_model / "model.safetensors").unlink()
    write_malicious_pickle(saved_model / "pytorch_model-00001-of-00001.bin", tmp_path / "sentinel")
    index = {"weight_map": {"model.embed_tokens.weight": "pytorch_model-00001-of-00001.bin"}}
    (saved_model / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(
        UnsafeModelError, match=r"pytorch_model-00001-of-00001\.bin, pytorch_model\.bin\.index\.json"
    ):
        load_model(saved_model)
    assert not (tmp_path / "sentinel").exists()


def test_safetensors_weights_win_over_a_pickle_beside_them(saved_model: Path, tmp_path: Path) -> None:
    # What transformers loads with use_safetensors=True is model.safetensors; the pickle is never opened.
    write_malicious_pickle(saved_model / "pytorch_model.bin", tmp_path / "sentinel")
    model = load_model(saved_model)
    assert isinstance(model, torch.nn.Module)
    assert not (tmp_path / "sentinel").exists()


def _add_remote_code(folder: Path, file_name: str, sentinel: Path, *, own_class: bool = True) -> None:
    """An auto_map whose module would touch `sentinel`; with `own_class`, for an architecture (or tokenizer class)
    transformers does not have, so that only the repository's code could load it."""
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(sentinel)!r}).touch()\n")
    config = json.loads((folder / file_name).read_text())
    config["auto_map"] = {
        "AutoModelForCausalLM": "evil.EvilModel",
        "AutoTokenizer": ["evil.EvilTokenizer", None],
    }
    if own_class:
        config["model_type" if file_name == "config.json" else "tokenizer_class"] = "EvilArchitecture"
    (folder / file_name).write_text(json.dumps(config))


@pytest.mark.parametrize("file_name", ["config.json", "tokenizer_config.json"])
def test_remote_code_is_refused_without_a_prompt(
    saved_model: Path, tmp_path: Path, no_prompt, file_name
) -> None:
    sentinel = tmp_path / "sentinel"
    _add_remote_code(saved_model, file_name, sentinel)
    for load in (load_model, load_tokenizer):
        with pytest.raises(UnsafeModelError) as raised:
            load(saved_model)
        message = str(raised.value)
        assert str(saved_model) in message and f"auto_map in {file_name}" in message
        assert "model.trust_remote_code=true" in message
    assert not sentinel.exists()


def test_an_auto_map_beside_a_class_transformers_has_is_ignored_not_refused(
    saved_model: Path, tmp_path: Path, no_prompt
) -> None:
    # Many hub repositories of built-in architectures still ship an auto_map; untrusted, transformers loads its own
    # class, so refusing them would only push users to trust_remote_code=true, which runs the repository's code.
    sentinel = tmp_path / "sentinel"
    _add_remote_code(saved_model, "config.json", sentinel, own_class=False)
    assert isinstance(load_model(saved_model), torch.nn.Module)
    assert not sentinel.exists()


def test_trusted_remote_code_is_passed_on_and_warned_about_once(
    saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _add_remote_code(saved_model, "config.json", tmp_path / "sentinel")
    calls = []

    def fake_from_pretrained(path, **kwargs):  # the code would run here; the test stops short of it
        calls.append(kwargs)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(build.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with caplog.at_level(logging.WARNING, logger="msa_bench.models"):
        load_model(saved_model, trust_remote_code=True)
        check_model_folder(saved_model, trust_remote_code=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(saved_model) in warnings[0] and "evil.EvilModel" in warnings[0]
    assert calls[0]["trust_remote_code"] is True and calls[0]["use_safetensors"] is True


def test_trust_remote_code_defaults_to_false_and_true_warns_naming_the_repository(caplog) -> None:
    assert validate_config(compose_config(["model=olmo2_7b"])).model.trust_remote_code is False
    with caplog.at_level(logging.WARNING, logger="msa_bench"):
        config = validate_config(compose_config(["model=olmo2_7b", "model.trust_remote_code=true"]))
    assert config.model.trust_remote_code is True
    assert any(
        "allenai/OLMo-2-1124-7B" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    )
