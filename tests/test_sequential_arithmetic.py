"""msa_ties, msa_projected and msa_fisher after sequential deletion requests (docs/sequential_requests.md): each
transforms the cumulative forget vector Σ_{j≤k} τ_f^(j). By hand on small tensors; switched off, equal to sequential
msa bit for bit; through the sequential path with one request, equal to the single run bit for bit; msa_fisher's
Fisher per prefix of requests with the retain Fisher once; cache keys; and a smoke run of each with two requests."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import msa_bench.arithmetic.state_arithmetic as state_arithmetic
from msa_bench.arithmetic import StateDelta, combine_checkpoints
from msa_bench.arithmetic.difference_transforms import ProjectOffRetain, TrimAndElect
from msa_bench.arithmetic.importance_weights import FisherWeighting
from msa_bench.methods.registry import get_method
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.refs import ModelRef
from tests.pipeline_runs import run_job
from tests.test_arithmetic_family import LAYER_0, load_weights, save_checkpoint
from tests.test_arithmetic_streaming import save_family
from tests.test_msa_fisher import EXAMPLES, FisherPipeline, direct_fisher, save_fishers

torch.set_num_threads(1)
ALPHA, BETA = 0.7, 0.3


# ------------------------------------------------------------------------------------------- by hand

# Two requests' forget vectors; their sum S = [[0.125, 0, 0.25], [0.5, -0.25, 0]].
FIRST = torch.tensor([[0.5, -0.25, 0.125], [0.0, 0.25, -0.5]])
SECOND = torch.tensor([[-0.375, 0.25, 0.125], [0.5, -0.5, 0.5]])
RETAIN = torch.tensor([[0.25, 0.5, -0.5], [0.25, 0.0, 0.0]])


def request_family(root: Path, forgets: list[torch.Tensor], retains: list[torch.Tensor]) -> dict:
    """θ0 = 0, θ_D = 1, one θ1 per request and one θ2 per retain vector, on tensor LAYER_0."""
    zeros = {LAYER_0: torch.zeros(2, 3)}
    return {
        "theta_0": save_checkpoint(root / "theta_0", zeros),
        "theta_d": save_checkpoint(root / "theta_d", {LAYER_0: torch.ones(2, 3)}),
        "forget": [save_checkpoint(root / f"theta_1-{j}", {LAYER_0: t}) for j, t in enumerate(forgets)],
        "retain": [save_checkpoint(root / f"theta_2-{j}", {LAYER_0: t}) for j, t in enumerate(retains)],
    }


def combine_requests(paths, out, transform, alpha=1.0, beta=1.0) -> torch.Tensor:
    """θ_D − α Σ_j τ_f^(j) + β Σ_j τ_r^(j), terms in that order (forget terms first), through `transform`."""
    deltas = [StateDelta(-alpha, theta_1, paths["theta_0"]) for theta_1 in paths["forget"]]
    deltas += [StateDelta(beta, theta_2, paths["theta_0"]) for theta_2 in paths["retain"]]
    combine_checkpoints(paths["theta_d"], deltas, out, transform=transform)
    return load_weights(out)[LAYER_0]


@pytest.mark.parametrize(
    ("election", "kept"),
    [
        # n = 6, k = ⌈0.5·6⌉ = 3: the three largest |S| are 0.5, 0.25 and 0.25, so S's 0.125 goes. (Trimming each
        # request on its own would keep 0.5, −0.25, 0.25, −0.5 of the first and the three 0.5s of the second.)
        ("none", [[0.0, 0.0, 0.25], [0.5, -0.25, 0.0]]),
        # retain: S's 0.5 moves as τ_r's 0.25 does, so it is not negated; 0.25 against −0.5 and −0.25 against 0
        # stay.
        ("retain", [[0.0, 0.0, 0.25], [0.0, -0.25, 0.0]]),
    ],
)
def test_ties_trims_and_elects_the_sum_of_the_request_vectors_by_hand(tmp_path, election, kept):
    paths = request_family(tmp_path / "in", [FIRST, SECOND], [RETAIN])
    transform = TrimAndElect((0, 1), (2,), 0.5, election)
    result = combine_requests(paths, tmp_path / "out", transform)
    torch.testing.assert_close(result, 1 - torch.tensor(kept) + RETAIN, atol=1e-6, rtol=0)
    assert transform.summary()["ties"]["forget_values"] == 6 and transform.summary()["ties"]["trimmed"] == 3


def test_the_mass_election_weighs_the_sum_and_needs_one_forget_coefficient(tmp_path):
    paths = request_family(tmp_path / "in", [FIRST, SECOND], [RETAIN])
    # density 1, α = β = 1: the elected sign(−S + τ_r) is [[+, +, −], [−, +, 0]]. −S = [[−, 0, −], [−, +, 0]]
    # agrees at (0, 2), (1, 0) and (1, 1); τ_r = [[+, +, −], [+, 0, 0]] loses its 0.25 at (1, 0).
    result = combine_requests(paths, tmp_path / "out", TrimAndElect((0, 1), (2,), 1.0, "mass"))
    kept_forget = torch.tensor([[0.0, 0.0, 0.25], [0.5, -0.25, 0.0]])
    kept_retain = torch.tensor([[0.25, 0.5, -0.5], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(result, 1 - kept_forget + kept_retain, atol=1e-6, rtol=0)
    deltas = [
        StateDelta(-1.0, paths["forget"][0], paths["theta_0"]),
        StateDelta(-0.5, paths["forget"][1], paths["theta_0"]),
        StateDelta(1.0, paths["retain"][0], paths["theta_0"]),
    ]
    with pytest.raises(ValueError, match=r"the forget terms \[0, 1\] must share one coefficient"):
        combine_checkpoints(
            paths["theta_d"], deltas, tmp_path / "bad", transform=TrimAndElect((0, 1), 2, 1.0, "mass")
        )


def test_the_projection_takes_the_sum_off_the_sum_of_the_retain_vectors_by_hand(tmp_path):
    first, second = (
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]),
    )
    retains = [
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    ]
    # S = [[2, 2, 0], [0, 0, 1]], R = [[1, 0, 0], [0, 0, 1]]: c = (2 + 1) / 2 = 1.5, S − cR = [[0.5, 2, 0], [0, 0, −0.5]].
    paths = request_family(tmp_path / "in", [first, second], retains)
    result = combine_requests(paths, tmp_path / "out", ProjectOffRetain((0, 1), (2, 3), "per_tensor"))
    projected = torch.tensor([[0.5, 2.0, 0.0], [0.0, 0.0, -0.5]])
    torch.testing.assert_close(result, 1 - projected + retains[0] + retains[1], atol=1e-6, rtol=0)
    # By linearity: each request vector projected off the same R, then summed, is the same model.
    c_first, c_second = 1 / 2, (1 + 1) / 2
    each = (first - c_first * (retains[0] + retains[1])) + (second - c_second * (retains[0] + retains[1]))
    torch.testing.assert_close(each, projected, atol=1e-6, rtol=0)


def test_the_fisher_weight_multiplies_the_sum_by_hand(tmp_path):
    paths = request_family(tmp_path / "in", [FIRST, SECOND], [RETAIN])
    # r = [[.75, .25, 0], [.5, 1, .5]] (mean 0.5): w = [[1.5, 0.5, 0], [1, 2, 1]].
    fishers = save_fishers(
        tmp_path / "fisher",
        {LAYER_0: torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])},
        {LAYER_0: torch.tensor([[1.0, 3.0, 4.0], [0.0, 0.0, 1.0]])},
    )
    result = combine_requests(paths, tmp_path / "out", FisherWeighting((0, 1), fishers, "per_tensor"), 0.5)
    weight = torch.tensor([[1.5, 0.5, 0.0], [1.0, 2.0, 1.0]])
    torch.testing.assert_close(result, 1 - 0.5 * weight * (FIRST + SECOND) + RETAIN, atol=1e-6, rtol=0)


# ------------------------------------------------------------------- through produce_after_requests


def save_request_family(root: Path, dtype: torch.dtype) -> dict[str, Path]:
    """save_family's θ0, θ1, θ2, θ_D plus θ1' (θ0 perturbed by another seed): the second request's forget vector."""
    paths = save_family(root, tied=False, dtype=dtype)
    shutil.copytree(paths["theta_1"], root / "theta_1b")
    theta_0 = load_file(paths["theta_0"] / "model.safetensors")
    generator = torch.Generator().manual_seed(4)
    second = {
        name: (t.float() + 0.05 * torch.randn(t.shape, generator=generator)).to(t.dtype)
        if t.is_floating_point()
        else t
        for name, t in theta_0.items()
    }
    save_file(second, str(root / "theta_1b" / "model.safetensors"), metadata={"format": "pt"})
    return {**paths, "theta_1b": root / "theta_1b"}


class RequestsPipeline(FisherPipeline):
    """The stand-in pipeline of the variants' tests, answering each request's fine-tune with its own θ1 and keeping
    every arithmetic it builds by stage."""

    FORGET_VECTORS = {"forget_vector": "theta_1", "forget_vector (request 1)": "theta_1"}
    FORGET_VECTORS |= {"forget_vector (request 2)": "theta_1b"}

    def finetune(self, stage, base, items, recipe, data_id):
        self.finetuned = [*getattr(self, "finetuned", []), stage]
        return ModelRef(self.paths[self.FORGET_VECTORS.get(stage, "theta_2")], f"{stage}-key", stage)

    def cached_model(self, stage, kind, spec, build, label=None):
        out = self.root / f"built-{len(self.built)}"
        self.built.append((spec, build(out)["report"], out))
        self.by_stage = {**getattr(self, "by_stage", {}), stage: (spec, out)}
        return ModelRef(out, f"unlearned-{len(self.built)}", label)


def requests(count: int = 2):
    halves = [EXAMPLES["forget"][:2], EXAMPLES["forget"][2:]] if count == 2 else [EXAMPLES["forget"]]
    return [
        SimpleNamespace(index=k, items=items, data_id=f"forget10[request {k} of {count}]")
        for k, items in enumerate(halves, 1)
    ]


def after_requests(name, paths, root, store, count=2, **settings):
    """`name`'s models after requests 1..count, one call per step as the sequential driver makes them."""
    method_class = get_method(name)
    pipeline = RequestsPipeline(paths, root / f"{name}-{len(list(root.glob(f'{name}-*')))}", store)
    method = method_class(replace(method_class.config_class(), alpha=ALPHA, beta=BETA, **settings))
    for k in range(1, count + 1):
        method.produce_after_requests(pipeline, requests(count)[:k], None)
    return pipeline, method


def weights_bytes(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def test_switched_off_variants_after_requests_are_sequential_msa_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_request_family(tmp_path / "in", torch.bfloat16)
    store = ArtifactStore(tmp_path / "cache")
    msa, _ = after_requests("msa", paths, tmp_path, store)
    stages = ["arithmetic (request 1)", "arithmetic (request 2)"]
    assert list(msa.by_stage) == stages
    for name, settings in [
        ("msa_ties", {"density": 1.0, "election": "none"}),
        ("msa_projected", {"projection": "none"}),
        ("msa_fisher", {"importance": "none"}),
    ]:
        pipeline, _ = after_requests(name, paths, tmp_path, store, **settings)
        for stage in stages:
            spec, out = pipeline.by_stage[stage]
            msa_spec, msa_out = msa.by_stage[stage]
            assert spec == {**msa_spec, "method": name, **settings}, (name, stage)
            assert weights_bytes(out) == weights_bytes(msa_out), (name, stage)
        assert "fisher_retain" not in pipeline.costs
    assert not (tmp_path / "cache" / "fisher").exists()


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("msa_ties", {"density": 0.3, "election": "retain"}),
        ("msa_ties", {"density": 0.5, "election": "mass", "layer_scale": "linear"}),
        ("msa_projected", {"projection": "per_tensor"}),
        ("msa_projected", {"projection": "global"}),
        ("msa_fisher", {"normalization": "per_tensor"}),
    ],
)
def test_one_request_through_the_sequential_path_is_the_single_run_bit_for_bit(
    tmp_path, monkeypatch, name, settings
):
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_request_family(tmp_path / "in", torch.float32)
    store = ArtifactStore(tmp_path / "cache")
    single = RequestsPipeline(paths, tmp_path / "single", store)
    method_class = get_method(name)
    method_class(replace(method_class.config_class(), alpha=ALPHA, beta=BETA, **settings)).produce(single)
    # One request holding the whole forget set (its θ1 is the single run's); the driver never makes K = 1, but the
    # arithmetic of step k is this one's with k forget terms.
    sequential, _ = after_requests(name, paths, tmp_path, store, count=1, **settings)
    assert weights_bytes(sequential.built[-1][2]) == weights_bytes(single.built[-1][2])
    assert sequential.built[-1][1]["transform"] == single.built[-1][1]["transform"] != {}
    assert sequential.built[-1][0] != single.built[-1][0], "another stage and other terms: another key"


def test_the_transform_of_two_requests_is_that_of_their_summed_vector(tmp_path, monkeypatch):
    """After two requests, the TIES mask is computed on τ_f^(1) + τ_f^(2): the model equals the whole-tensor
    computation on the sum, and differs from trimming each request vector on its own."""
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_request_family(tmp_path / "in", torch.float32)
    pipeline, _ = after_requests("msa_ties", paths, tmp_path, ArtifactStore(tmp_path / "cache"), density=0.3)
    _, out = pipeline.by_stage["arithmetic (request 2)"]
    result = load_weights(out)
    t0, t1, t1b, t2, td = (
        load_weights(paths[n]) for n in ("theta_0", "theta_1", "theta_1b", "theta_2", "theta_d")
    )
    trims_differ = False
    for name, target in td.items():
        first, second, retain = (t[name] - t0[name] for t in (t1, t1b, t2))
        summed = first + second
        keep = (summed.abs() >= top_30_percent(summed)) & ~((summed.sign() == retain.sign()) & (retain != 0))
        expected = target - ALPHA * first * keep - ALPHA * second * keep + BETA * retain
        torch.testing.assert_close(result[name], expected, atol=1e-6, rtol=0)
        each = sum(vector * (vector.abs() >= top_30_percent(vector)) for vector in (first, second))
        trims_differ |= not torch.allclose(each, summed * (summed.abs() >= top_30_percent(summed)))
    assert trims_differ, "the sum's trim is not the sum of the requests' trims"


def top_30_percent(values: torch.Tensor) -> torch.Tensor:
    """The k-th largest magnitude, k = ⌈0.3·n⌉."""
    return values.abs().reshape(-1).sort(descending=True).values[-(-3 * values.numel() // 10) - 1]


# ----------------------------------------------------------------------------------- msa_fisher's Fishers


def test_fisher_after_requests_is_per_prefix_with_the_retain_fisher_once(tmp_path):
    paths = save_request_family(tmp_path / "in", torch.float32)
    store = ArtifactStore(tmp_path / "cache")
    pipeline, method = after_requests("msa_fisher", paths, tmp_path, store)
    costs = pipeline.costs
    assert {"fisher (request 1)", "fisher (request 2)", "fisher_retain"} <= set(
        costs
    ) and "fisher" not in costs
    assert costs["fisher (request 1)"]["artifact"] != costs["fisher (request 2)"]["artifact"]
    assert costs["fisher_retain"]["flops"] > 0 and costs["fisher (request 2)"]["wall_seconds"] > 0
    # F_f of step 2 is the Fisher of θ_D on the union of requests 1 and 2; F_r that of the retain subset.
    union = store.root / costs["fisher (request 2)"]["artifact"]
    expected = direct_fisher(paths["theta_d"], EXAMPLES["forget"], 1)
    stored = load_file(union / "forget" / "model.safetensors")
    assert not (union / "retain").exists()
    for name, tensor in expected.items():
        torch.testing.assert_close(stored[name], tensor, rtol=1e-5, atol=1e-12)
    record = json.loads((union / "_artifact.json").read_text())
    spec = record.get("spec", record)
    assert spec["forget"] == "forget10[request 1 of 2]+forget10[request 2 of 2]" and "retain" not in spec
    # The arithmetic's key names both Fishers; each step's differs.
    first, second = (pipeline.by_stage[f"arithmetic (request {k})"][0] for k in (1, 2))
    assert set(second["fisher"]) == {"forget", "retain"}
    assert first["fisher"]["retain"] == second["fisher"]["retain"] != second["fisher"]["forget"]
    assert first["fisher"]["forget"] != second["fisher"]["forget"]
    # Computed once: a second run over the same store rebuilds nothing.
    again, _ = after_requests("msa_fisher", paths, tmp_path, store)
    assert all(
        again.costs[s]["reused"] for s in ("fisher (request 1)", "fisher (request 2)", "fisher_retain")
    )


def test_sequential_settings_enter_each_requests_cache_key(tmp_path):
    paths = save_request_family(tmp_path / "in", torch.float32)
    store = ArtifactStore(tmp_path / "cache")
    runs = [
        after_requests("msa", paths, tmp_path, store),
        after_requests("msa_ties", paths, tmp_path, store),
        after_requests("msa_ties", paths, tmp_path, store, density=0.5),
        after_requests("msa_ties", paths, tmp_path, store, election="mass"),
        after_requests("msa_projected", paths, tmp_path, store),
        after_requests("msa_projected", paths, tmp_path, store, projection="global"),
        after_requests("msa_fisher", paths, tmp_path, store),
        after_requests("msa_fisher", paths, tmp_path, store, normalization="global"),
    ]
    for stage in ("arithmetic (request 1)", "arithmetic (request 2)"):
        keys = [json.dumps(pipeline.by_stage[stage][0], sort_keys=True) for pipeline, _ in runs]
        assert len(set(keys)) == len(keys), stage


# ---------------------------------------------------------------- end to end, on the smoke pipeline


@pytest.mark.slow
@pytest.mark.parametrize("name", ["msa_ties", "msa_projected", "msa_fisher"])
def test_a_smoke_run_with_two_requests_completes_with_per_request_keys(tmp_path_factory, name):
    # One cache for the three: the target, the oracles and the request vectors are trained once.
    root = tmp_path_factory.getbasetemp() / "sequential-variants"
    run_job(root / "cache", root / name, ["benchmark.requests=2", f"method={name}"])
    on_disk = json.loads((root / name / "results.json").read_text())
    metrics = on_disk["metrics"]
    for k in (1, 2):
        assert isinstance(metrics[f"request/{k}/forget/forget_Q_A_Prob"], float)
        assert isinstance(metrics[f"request/{k}/utility/model_utility"], float)
        assert metrics[f"request/{k}/cost/wall_seconds"] >= 0
        assert f"arithmetic (request {k})" in on_disk["cost"]
    assert isinstance(metrics["request/2/persistence/forget_Q_A_Prob"], float)
    assert metrics["request/2/utility/model_utility"] == pytest.approx(metrics["model_utility"])
    if name == "msa_fisher":
        assert {"fisher (request 1)", "fisher (request 2)", "fisher_retain"} <= set(on_disk["cost"])
