"""msa_fisher: the importance weights by hand, the Fisher stage against a direct computation of mean squared
gradients, switched off equal to msa bit for bit, streaming chunk by chunk, cache keys and reuse, and bad settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import msa_bench.arithmetic.state_arithmetic as state_arithmetic
from msa_bench.arithmetic.importance_weights import FisherWeighting, importance_ratio
from msa_bench.arithmetic.tensor_arithmetic import apply_differences, state_difference
from msa_bench.errors import ConfigError, StateArithmeticError
from msa_bench.methods.msa_fisher import MSAFisher, MSAFisherConfig
from msa_bench.methods.registry import get_method
from msa_bench.models.build import load_model
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.stages import Pipeline
from msa_bench.training.fisher import write_fisher
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.test_arithmetic_family import (
    EMBED,
    LAYER_0,
    LAYER_1,
    MSA_SPEC,
    StandInPipeline,
    combine,
    load_weights,
    small_family,
)
from tests.test_arithmetic_streaming import save_family

torch.set_num_threads(1)
NORM = "model.norm.weight"


def save_fishers(folder: Path, forget: dict, retain: dict) -> dict[str, Path]:
    dirs = {"forget": folder / "forget", "retain": folder / "retain"}
    for role, tensors in (("forget", forget), ("retain", retain)):
        dirs[role].mkdir(parents=True)
        write_fisher(dirs[role] / "model.safetensors", tensors)
    return dirs


# ------------------------------------------------------------------------------------------- by hand


def test_importance_ratio_by_hand():
    forget = torch.tensor([3.0, 1.0, 0.0, 0.0, 2.0])
    retain = torch.tensor([1.0, 3.0, 4.0, 0.0, 0.0])
    assert importance_ratio(forget, retain).tolist() == [0.75, 0.25, 0.0, 0.5, 1.0]


@pytest.mark.parametrize("normalization", ["per_tensor", "global"])
def test_weights_by_hand(tmp_path, normalization):
    shapes = {LAYER_0: (2, 2), LAYER_1: (2, 2), NORM: (2,), EMBED: (2, 2)}
    ones = {name: torch.ones(shape) for name, shape in shapes.items()}
    paths = small_family(tmp_path / "in", ones, {n: torch.zeros_like(t) for n, t in ones.items()})
    # r: layer 0 [[.75, .25], [0, .5]] (mean .375); layer 1 [[1, 0], [.5, .5]] (mean .5); norm [0, 0] (mean 0).
    # The embedding has no Fisher (w = 1). Global mean: (1.5 + 2 + 0) / 10 = 0.35.
    forget = {
        LAYER_0: torch.tensor([[3.0, 1.0], [0.0, 0.0]]),
        LAYER_1: torch.tensor([[2.0, 0.0], [0.0, 0.0]]),
    }
    retain = {
        LAYER_0: torch.tensor([[1.0, 3.0], [4.0, 0.0]]),
        LAYER_1: torch.tensor([[0.0, 2.0], [0.0, 0.0]]),
    }
    forget[NORM], retain[NORM] = torch.zeros(2), torch.tensor([1.0, 2.0])
    dirs = save_fishers(tmp_path / "fisher", forget, retain)
    weights = {
        "per_tensor": {LAYER_0: [[2.0, 2 / 3], [0.0, 4 / 3]], LAYER_1: [[2.0, 0.0], [1.0, 1.0]]},
        "global": {
            LAYER_0: [[0.75 / 0.35, 0.25 / 0.35], [0.0, 0.5 / 0.35]],
            LAYER_1: [[1 / 0.35, 0.0], [0.5 / 0.35] * 2],
        },
    }[normalization]
    weights |= {NORM: [0.0, 0.0], EMBED: [[1.0, 1.0], [1.0, 1.0]]}
    # θ_D = 1, τ_f = 1, τ_r = 0, α = 0.5: θ = 1 − 0.5·w.
    result, report = combine(paths, tmp_path / "out", 0.5, 1.0, FisherWeighting(0, dirs, normalization))
    for name, w in weights.items():
        torch.testing.assert_close(result[name], 1 - 0.5 * torch.tensor(w), atol=1e-6, rtol=0)
    assert torch.equal(result["steps"], torch.tensor([3, 4]))
    summary = report["transform"]["fisher"]
    assert summary["normalization"] == normalization and summary["tensors"] == 3
    assert summary["weight_min"] == 0.0
    assert summary["weight_max"] == pytest.approx(2.0 if normalization == "per_tensor" else 1 / 0.35)


# ----------------------------------------------------------------------------------- the Fisher stage

EXAMPLES = {
    "forget": [
        {"input_ids": [1, 5, 9, 12, 7], "labels": [-100, -100, 9, 12, 7]},
        {"input_ids": [1, 6, 3], "labels": [-100, 6, 3]},
        {"input_ids": [1, 8, 8, 2, 40, 41], "labels": [-100, -100, -100, 2, 40, 41]},
    ],
    "retain": [
        {"input_ids": [1, 20, 21, 22], "labels": [-100, -100, 21, 22]},
        {"input_ids": [1, 30, 31, 32, 33], "labels": [-100, 30, 31, 32, 33]},
    ],
}


class FisherPipeline(StandInPipeline):
    """The stand-in arithmetic pipeline with a real artifact store, for the Fisher stage and its cost."""

    record_stage = Pipeline.record_stage

    def __init__(self, paths, root, store, examples=EXAMPLES, retain_id="retain-subset-id"):
        super().__init__(paths, root)
        self.cfg.model.dtype, self.cfg.seed = "float32", 0
        self.store, self.device, self.costs = store, "cpu", {}
        self.examples, self.retain_id = examples, retain_id

    def forget_items(self):
        return self.examples["forget"]

    def retain_subset(self, *args, **kwargs):
        return self.examples["retain"], self.retain_id

    def training_examples(self, items, what=""):
        return list(items)  # the items are already tokenized examples

    def tokenizer(self):
        return SimpleNamespace(pad_token_id=0)

    def data_spec(self):
        return {}

    def encoding_spec(self):
        return {}


def produce_fisher(paths, root, store, pipeline_kwargs=None, **settings):
    pipeline = FisherPipeline(
        paths, root / f"run-{len(list(root.glob('run-*')))}", store, **(pipeline_kwargs or {})
    )
    method = MSAFisher(replace(MSAFisherConfig(), alpha=0.7, beta=0.3, **settings))
    method.produce(pipeline)
    return pipeline, method


def direct_fisher(model_dir: Path, examples, batch_size: int) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of the batch's mean labelled-token NLL, written out plainly."""
    model = load_model(model_dir).eval()
    sums = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    for batch in batches:
        length = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [0] * (length - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (length - len(e["labels"])) for e in batch])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (length - len(e["input_ids"])) for e in batch])
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)).backward()
        for name, p in model.named_parameters():
            sums[name] += p.grad**2
    return {name: s / len(batches) for name, s in sums.items()}


@pytest.mark.parametrize("batch_size", [1, 2])
def test_fisher_stage_is_the_mean_squared_gradient(tmp_path, batch_size):
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32)
    store = ArtifactStore(tmp_path / "cache")
    pipeline, method = produce_fisher(paths, tmp_path, store, fisher_batch_size=batch_size)
    fisher_dir = method._fisher.path
    for role in ("forget", "retain"):
        stored = load_file(fisher_dir / role / "model.safetensors")
        expected = direct_fisher(paths["theta_d"], EXAMPLES[role], batch_size)
        assert stored.keys() == expected.keys()
        for name, tensor in expected.items():
            torch.testing.assert_close(stored[name], tensor, rtol=1e-5, atol=1e-12)
        assert any(float(t.max()) > 0 for t in stored.values())
    assert method._fisher.meta["fisher"]["forget"]["batches"] == -(-3 // batch_size)


def test_fisher_stage_is_cached_reused_and_costed(tmp_path):
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32)
    store = ArtifactStore(tmp_path / "cache")
    first, method = produce_fisher(paths, tmp_path, store)
    cost = first.costs["fisher"]
    assert cost["reused"] is False and cost["artifact"].startswith("fisher/")
    tokens = sum(len(e["input_ids"]) for role in EXAMPLES.values() for e in role)
    assert cost["tokens"] == tokens and cost["flops"] > 0 and cost["wall_seconds"] > 0
    second, again = produce_fisher(paths, tmp_path, store)
    assert second.costs["fisher"]["reused"] is True
    assert second.costs["fisher"]["artifact"] == cost["artifact"]
    assert again._fisher.content_key == method._fisher.content_key
    # The arithmetic's key names the Fisher it used.
    assert first.built[-1][0]["fisher"] == method._fisher.content_key


def test_settings_give_different_cache_keys(tmp_path):
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32)
    store = ArtifactStore(tmp_path / "cache")
    runs = [
        produce_fisher(paths, tmp_path, store),
        produce_fisher(paths, tmp_path, store, fisher_batch_size=2),
        produce_fisher(paths, tmp_path, store, fisher_max_items=2),
        produce_fisher(paths, tmp_path, store, pipeline_kwargs={"retain_id": "another-retain-subset"}),
    ]
    fisher_keys = [method._fisher.key for _, method in runs]
    assert len(set(fisher_keys)) == len(fisher_keys)
    assert runs[2][1]._fisher.meta["fisher"]["forget"]["examples"] == 2
    # Same Fisher, other normalization: another arithmetic key.
    global_run = produce_fisher(paths, tmp_path, store, normalization="global")
    assert global_run[1]._fisher.key == fisher_keys[0]
    specs = [runs[0][0].built[-1][0], global_run[0].built[-1][0]]
    assert specs[0]["normalization"] == "per_tensor" and specs[1]["normalization"] == "global"
    assert specs[0] != specs[1]


# ------------------------------------------------------------------------------- off means msa, bit for bit


def test_importance_none_is_msa_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.bfloat16)
    msa = StandInPipeline(paths, tmp_path / "msa")
    get_method("msa")(replace(get_method("msa").config_class(), alpha=0.7, beta=0.3)).produce(msa)
    store = ArtifactStore(tmp_path / "cache")
    pipeline, method = produce_fisher(paths, tmp_path, store, importance="none")
    spec, report, out = pipeline.built[-1]
    assert spec == {**MSA_SPEC, "method": "msa_fisher", "importance": "none"}
    assert "transform" not in report and method._fisher is None and "fisher" not in pipeline.costs
    assert not (tmp_path / "cache" / "fisher").exists(), "no Fisher computed"
    assert (out / "model.safetensors").read_bytes() == (msa.built[-1][2] / "model.safetensors").read_bytes()


# -------------------------------------------------------------------------------------------------- streaming


class RecordingWeighting(FisherWeighting):
    """Records the largest chunk of differences and of Fisher rows it handles."""

    largest = 0

    def _rows(self, role, name, start, stop):
        rows = super()._rows(role, name, start, stop)
        self.largest = max(self.largest, rows.numel())
        return rows

    def apply_rows(self, name, rows, terms):
        self.largest = max([self.largest, *(d.numel() for _, _, d in terms)])
        return super().apply_rows(name, rows, terms)


@pytest.mark.parametrize("normalization", ["per_tensor", "global"])
@pytest.mark.parametrize("max_shard_size", [None, "20KB"], ids=["unsharded", "sharded"])
def test_streams_chunk_by_chunk_and_shard_by_shard(tmp_path, monkeypatch, normalization, max_shard_size):
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32, max_shard_size=max_shard_size)
    target = load_weights(paths["theta_d"])
    generator = torch.Generator().manual_seed(0)
    fishers = {}
    for role in ("forget", "retain"):  # random importances, a quarter of them 0
        fishers[role] = {
            n: torch.rand(t.shape, generator=generator) * (torch.rand(t.shape, generator=generator) > 0.25)
            for n, t in target.items()
        }
    weighting = RecordingWeighting(0, save_fishers(tmp_path / "fisher", *fishers.values()), normalization)
    result, _ = combine(paths, tmp_path / "out", 0.7, 0.3, weighting)
    assert 0 < weighting.largest <= 100, "no tensor (nor its Fisher) was handed over whole"
    if max_shard_size is not None:
        assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1
    # The whole-tensor computation, as the definition states it.
    t0, t1, t2 = (load_weights(paths[n]) for n in ("theta_0", "theta_1", "theta_2"))
    ratios = {n: importance_ratio(fishers["forget"][n], fishers["retain"][n]) for n in target}
    global_mean = sum(float(r.double().sum()) for r in ratios.values()) / sum(
        r.numel() for r in ratios.values()
    )
    for name, tensor in target.items():
        mean = global_mean if normalization == "global" else float(ratios[name].double().mean())
        forget = state_difference(t1[name], t0[name], torch.float32) * (ratios[name] / mean)
        retain = state_difference(t2[name], t0[name], torch.float32)
        expected = apply_differences(tensor, [(-0.7, forget), (0.3, retain)], torch.float32)
        torch.testing.assert_close(result[name], expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.importance=gradient"], r"method\.importance='gradient' must be one of fisher, none"),
        (
            ["method.normalization=per_row"],
            r"method\.normalization='per_row' must be one of per_tensor, global",
        ),
        (["method.fisher_batch_size=0"], r"method\.fisher_batch_size=0 must be an integer >= 1"),
        (["method.fisher_max_items=0"], r"method\.fisher_max_items=0 must be an integer >= 1 or null"),
        (["method.alpha=0"], r"method\.importance=fisher weights the forget vector .* method\.alpha=0"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(["method=msa_fisher", *overrides]))


def test_defaults_validate_and_beta_zero_still_reads_retain_data():
    cfg = validate_config(compose_config(["method=msa_fisher"])).method
    assert (cfg.importance, cfg.normalization, cfg.fisher_batch_size, cfg.fisher_max_items) == (
        "fisher",
        "per_tensor",
        1,
        None,
    )
    assert MSAFisher(replace(cfg, beta=0.0)).reads_retain_data()
    assert not MSAFisher(replace(cfg, importance="none")).reads_retain_data()


def test_weighting_refuses_bad_fishers(tmp_path):
    with pytest.raises(ValueError, match="normalization='x'"):
        FisherWeighting(0, {}, "x")
    names = {LAYER_0: torch.ones(2, 3)}
    mismatched = save_fishers(tmp_path / "a", names, {LAYER_0: torch.ones(3, 2)})
    with pytest.raises(StateArithmeticError, match="different tensors or shapes"):
        FisherWeighting(0, mismatched, "per_tensor")
    dirs = save_fishers(tmp_path / "b", {LAYER_0: torch.ones(2, 2)}, {LAYER_0: torch.ones(2, 2)})
    paths = small_family(tmp_path / "in", {LAYER_0: torch.ones(2, 3)}, {LAYER_0: torch.zeros(2, 3)})
    with pytest.raises(
        StateArithmeticError, match=r"Fisher of tensor 'model\.layers\.0\.mlp\.weight' has shape"
    ):
        combine(paths, tmp_path / "out", 1.0, 1.0, FisherWeighting(0, dirs, "per_tensor"))
