"""The arithmetic variants of MSA: method.layer_scale, msa_ties and msa_projected.

Hand-computed results on small tensors; each variant with its change switched off is msa bit for bit (through the
methods' own `produce`, with a stand-in pipeline that also shows the cache keys); each streams chunk by chunk and
shard by shard with the result of a whole-tensor computation; and bad settings fail naming their key.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import msa_bench.arithmetic.state_arithmetic as state_arithmetic
from msa_bench.arithmetic import StateDelta, combine_checkpoints
from msa_bench.arithmetic.difference_transforms import (
    ChainedTransforms,
    DifferenceTransform,
    ProjectOffRetain,
    ScaleCoefficient,
    TensorChunks,
    TrimAndElect,
    kept_count,
    kth_largest,
)
from msa_bench.arithmetic.tensor_arithmetic import apply_differences, state_difference
from msa_bench.errors import ConfigError
from msa_bench.methods.layer_scale import check_layer_scale, layer_factors
from msa_bench.methods.registry import get_method
from msa_bench.pipeline.refs import ModelRef
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.test_arithmetic_streaming import save_family

torch.set_num_threads(1)

LAYER_0, LAYER_1, EMBED = (
    "model.layers.0.mlp.weight",
    "model.layers.1.mlp.weight",
    "model.embed_tokens.weight",
)


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def small_family(root: Path, forget: dict, retain: dict) -> dict[str, Path]:
    """θ0 = 0, θ1 = τ_f, θ2 = τ_r and θ_D = 1 on the tensors given, plus an integer tensor."""
    zeros = {name: torch.zeros_like(t) for name, t in forget.items()}
    steps = {"steps": torch.tensor([3, 4])}
    return {
        "theta_0": save_checkpoint(root / "theta_0", {**zeros, **steps}),
        "theta_1": save_checkpoint(root / "theta_1", {**forget, **steps}),
        "theta_2": save_checkpoint(root / "theta_2", {**retain, **steps}),
        "theta_d": save_checkpoint(
            root / "theta_d", {**{n: torch.ones_like(t) for n, t in forget.items()}, **steps}
        ),
    }


def combine(paths, out, alpha, beta, transform=None) -> tuple[dict[str, torch.Tensor], dict]:
    deltas = [
        StateDelta(-alpha, paths["theta_1"], paths["theta_0"]),
        StateDelta(beta, paths["theta_2"], paths["theta_0"]),
    ]
    report = combine_checkpoints(paths["theta_d"], deltas, out, transform=transform)
    return load_weights(out), report


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for file in sorted(folder.glob("*.safetensors")):
        weights |= load_file(file)
    return weights


# ------------------------------------------------------------------------------------------- hand computations


def test_layer_scale_profiles_and_mapping_by_hand(tmp_path):
    ones = {name: torch.ones(2, 3) for name in (LAYER_0, LAYER_1)} | {EMBED: torch.ones(2, 2)}
    paths = small_family(tmp_path / "in", ones, {n: torch.zeros_like(t) for n, t in ones.items()})
    names = [LAYER_0, LAYER_1, EMBED, "steps"]
    # L = 2 blocks: linear 2(i+1)/(L+1) = 2/3, 4/3 (mean 1); decreasing 4/3, 2/3; outside the blocks 1.
    assert layer_factors("linear", names) == pytest.approx({LAYER_0: 2 / 3, LAYER_1: 4 / 3})
    assert layer_factors("linear_decreasing", names) == pytest.approx({LAYER_0: 4 / 3, LAYER_1: 2 / 3})
    assert layer_factors("uniform", names) == {}
    # First match wins; unmatched tensors keep 1 (and are not listed).
    assert layer_factors({"layers.1": 0.5, "embed": 2.0, "mlp": 3.0}, names) == {
        LAYER_1: 0.5,
        EMBED: 2.0,
        LAYER_0: 3.0,
    }
    alpha = 1.5
    for profile, expected in [
        ("linear", {LAYER_0: 1 - 1.0, LAYER_1: 1 - 2.0, EMBED: 1 - 1.5}),
        ("linear_decreasing", {LAYER_0: 1 - 2.0, LAYER_1: 1 - 1.0, EMBED: 1 - 1.5}),
        ({"layers.1": 0.5, "embed": 2.0}, {LAYER_0: 1 - 1.5, LAYER_1: 1 - 0.75, EMBED: 1 - 3.0}),
    ]:
        transform = ScaleCoefficient(0, layer_factors(profile, names))
        result, _ = combine(paths, tmp_path / f"out-{profile}", alpha, 1.0, transform)
        for name, value in expected.items():
            torch.testing.assert_close(result[name], torch.full_like(result[name], value), atol=1e-6, rtol=0)
        assert torch.equal(result["steps"], torch.tensor([3, 4]))


TIES_FORGET = torch.tensor([[0.5, -0.125, 0.25], [-0.375, 0.0625, 0.25]])
TIES_RETAIN = torch.tensor([[0.25, 0.5, -0.5], [-0.125, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("density", "election", "kept_forget", "kept_retain"),
    [
        # n = 6, k = ⌈0.5·6⌉ = 3: the third largest magnitude is 0.25, and both 0.25s are kept (a tie).
        (0.5, "none", [[0.5, 0, 0.25], [-0.375, 0, 0.25]], TIES_RETAIN.tolist()),
        # retain: 0.5 and −0.375 move as τ_r does (0.25, −0.125), so they are not negated; 0.25 against −0.5 and
        # 0.25 against 0 stay.
        (0.5, "retain", [[0, 0, 0.25], [0, 0, 0.25]], TIES_RETAIN.tolist()),
        # mass, α = β = 1: sign(−τ̂_f + τ_r) = [[−, +, −], [+, 0, −]]; the forget entries all agree, τ_r's 0.25 and
        # −0.125 do not and are dropped.
        (0.5, "mass", [[0.5, 0, 0.25], [-0.375, 0, 0.25]], [[0, 0.5, -0.5], [0, 0, 0]]),
        # density 1: no trim; retain election alone.
        (1.0, "retain", [[0, -0.125, 0.25], [0, 0.0625, 0.25]], TIES_RETAIN.tolist()),
    ],
)
def test_ties_trim_and_election_by_hand(tmp_path, density, election, kept_forget, kept_retain):
    paths = small_family(tmp_path / "in", {LAYER_0: TIES_FORGET}, {LAYER_0: TIES_RETAIN})
    result, report = combine(paths, tmp_path / "out", 1.0, 1.0, TrimAndElect(0, 1, density, election))
    expected = 1 - torch.tensor(kept_forget) + torch.tensor(kept_retain)
    torch.testing.assert_close(result[LAYER_0], expected, atol=1e-6, rtol=0)
    assert torch.equal(result["steps"], torch.tensor([3, 4]))
    counts = report["transform"]["ties"]
    assert counts["forget_values"] == 6 and counts["trimmed"] == (2 if density < 1 else 0)
    if election == "retain":
        assert counts["elected_out"] == 2


def test_projection_per_tensor_and_global_by_hand(tmp_path):
    forget = {
        LAYER_0: torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]),
        LAYER_1: torch.ones(2, 3),
        EMBED: torch.eye(2),
    }
    retain = {
        LAYER_0: torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        LAYER_1: torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]),
        EMBED: torch.zeros(2, 2),  # τ_r = 0: nothing to project off
    }
    paths = small_family(tmp_path / "in", forget, retain)
    # per tensor: c = 1/1 on layer 0, 2/4 on layer 1; global: c = (1 + 2) / (1 + 4) = 0.6 everywhere.
    projected = {
        "per_tensor": {
            LAYER_0: [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
            LAYER_1: [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]],
        },
        "global": {
            LAYER_0: [[0.4, 2.0, 0.0], [0.0, 0.0, 0.0]],
            LAYER_1: [[1.0, 1.0, 1.0], [1.0, 1.0, -0.2]],
        },
    }
    for mode, expected_forget in projected.items():
        result, report = combine(paths, tmp_path / mode, 1.0, 1.0, ProjectOffRetain(0, 1, mode))
        for name, values in {**expected_forget, EMBED: torch.eye(2).tolist()}.items():
            expected = 1 - torch.tensor(values) + retain[name]
            torch.testing.assert_close(result[name], expected, atol=1e-6, rtol=0)
        removed = {"per_tensor": math.sqrt(1 + 1), "global": 3 / math.sqrt(5)}[mode]
        assert report["transform"]["projection"]["removed_norm"] == pytest.approx(removed)
    # What remains of τ_f is orthogonal to τ_r, per tensor.
    per_tensor = load_weights(tmp_path / "per_tensor")
    for name in (LAYER_0, LAYER_1):
        remaining = 1 + retain[name] - per_tensor[name]
        assert float((remaining * retain[name]).sum()) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------- off means msa, bit for bit


class StandInPipeline:
    """What ModelStateArithmetic.produce asks of a pipeline, over saved θ0, θ1, θ2 and θ_D; every arithmetic it
    requests is built into a folder of its own, and its cache spec and report kept."""

    def __init__(self, paths: dict[str, Path], root: Path) -> None:
        self.paths, self.root = paths, root
        self.cfg = SimpleNamespace(
            benchmark=SimpleNamespace(target_recipe=None), model=SimpleNamespace(arithmetic_dtype="float32")
        )
        self.store = SimpleNamespace(root=root)
        self.forget_split = "forget10"
        self.built: list[tuple[dict, dict, Path]] = []

    def retain_subset(self, *args, **kwargs):
        return [], "retain_subset"

    def target(self):
        return ModelRef(self.paths["theta_d"], "target-key", "target")

    def checkpoint(self):
        return ModelRef(self.paths["theta_0"], "theta0-key", "checkpoint")

    def forget_items(self):
        return []

    def finetune(self, stage, base, items, recipe, data_id):
        return ModelRef(
            self.paths["theta_1" if stage == "forget_vector" else "theta_2"], f"{stage}-key", stage
        )

    def cached_model(self, stage, kind, spec, build, label=None):
        assert (stage, kind) == ("arithmetic", "unlearned")
        out = self.root / f"built-{len(self.built)}"
        self.built.append((spec, build(out)["report"], out))
        return ModelRef(out, "unlearned-key", label)


def produce(name: str, paths, root, **settings):
    method_class = get_method(name)
    pipeline = StandInPipeline(paths, root / f"{name}-{len(list(root.glob('*')))}")
    method_class(replace(method_class.config_class(), alpha=0.7, beta=0.3, **settings)).produce(pipeline)
    return pipeline.built[-1]


MSA_SPEC = {
    "method": "msa",
    "target": "target-key",
    "terms": [
        {"coefficient": -0.7, "finetuned": "forget_vector-key", "base": "theta0-key"},
        {"coefficient": 0.3, "finetuned": "retain_vector-key", "base": "theta0-key"},
    ],
}


def test_switched_off_variants_are_msa_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.bfloat16)
    spec, report, msa_out = produce("msa", paths, tmp_path)
    assert spec == MSA_SPEC, "uniform layer scale keeps msa's cache key exactly"
    assert "transform" not in report
    expected = (msa_out / "model.safetensors").read_bytes()
    for name, settings, extra_spec in [
        ("msa_ties", {"density": 1.0, "election": "none"}, {"density": 1.0, "election": "none"}),
        ("msa_projected", {"projection": "none"}, {"projection": "none"}),
        # A mapping whose factors are all 1 scales nothing (its key still differs: the setting is recorded).
        ("msa", {"layer_scale": {"mlp": 1.0}}, {"layer_scale": [["mlp", 1.0]]}),
    ]:
        spec, _, out = produce(name, paths, tmp_path, **settings)
        assert spec == {**MSA_SPEC, "method": name, **extra_spec}
        assert (out / "model.safetensors").read_bytes() == expected, (name, settings)


def test_settings_enter_the_cache_key(tmp_path):
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32)
    keys = [
        produce("msa", paths, tmp_path, layer_scale="linear")[0],
        produce("msa", paths, tmp_path, layer_scale="linear_decreasing")[0],
        produce("msa_ties", paths, tmp_path, density=0.5)[0],
        produce("msa_ties", paths, tmp_path, density=0.5, election="mass")[0],
        produce("msa_ties", paths, tmp_path, density=0.5, layer_scale="linear")[0],
        produce("msa_projected", paths, tmp_path)[0],
        produce("msa_projected", paths, tmp_path, projection="global")[0],
    ]
    assert len({repr(sorted(key.items())) for key in keys}) == len(keys)
    assert keys[0]["layer_scale"] == "linear" and keys[4]["layer_scale"] == "linear"
    assert keys[2]["density"] == 0.5 and keys[3]["election"] == "mass"
    assert keys[6]["projection"] == "global"


# -------------------------------------------------------------------------------------------------- streaming


def whole_tensor_reference(paths, alpha: float, beta: float, variant: str) -> dict[str, torch.Tensor]:
    """The variant computed on whole tensors loaded in memory (no chunks), as the definitions state it."""
    t0, t1, t2, td = (load_weights(paths[n]) for n in ("theta_0", "theta_1", "theta_2", "theta_d"))
    forget = {n: state_difference(t1[n], t0[n], torch.float32) for n in td}
    retain = {n: state_difference(t2[n], t0[n], torch.float32) for n in td}
    if variant == "projected_global":
        inner = sum(float((forget[n].double() * retain[n].double()).sum()) for n in td)
        squared = sum(float(retain[n].double().pow(2).sum()) for n in td)
    factors = layer_factors("linear", list(td))
    result = {}
    for n in td:
        f, r, coefficient = forget[n], retain[n], -alpha
        if variant == "ties":
            magnitudes = f.abs().reshape(-1)
            kept = math.ceil(0.3 * magnitudes.numel())
            threshold = magnitudes.sort(descending=True).values[kept - 1]
            conflict = (torch.sign(f) == torch.sign(r)) & (r != 0)
            f = f * ((f.abs() >= threshold) & ~conflict)
            coefficient *= factors.get(n, 1.0)
        elif variant == "projected_tensor":
            c = float((f.double() * r.double()).sum()) / float(r.double().pow(2).sum())
            f = f - c * r
        elif variant == "projected_global":
            f = f - (inner / squared) * r
        result[n] = apply_differences(td[n], [(coefficient, f), (beta, r)], torch.float32)
    return result


class RecordingTransform(DifferenceTransform):
    """Passes `inner` through, recording the largest chunk of values it is given to observe or to apply."""

    def __init__(self, inner: DifferenceTransform) -> None:
        self.inner, self.scope, self.observed_terms = inner, inner.scope, inner.observed_terms
        self.largest = 0
        self.observed_tensors: list[str] = []

    def observe(self, name, chunks):
        def recorded():
            for chunk in chunks:
                self.largest = max([self.largest, *(d.numel() for d in chunk.values())])
                yield chunk

        self.observed_tensors.append(name)
        self.inner.observe(name, TensorChunks(chunks.numel, recorded()))

    def apply(self, name, terms):
        self.largest = max([self.largest, *(d.numel() for _, _, d in terms)])
        return self.inner.apply(name, terms)


def streaming_transform(variant: str, names: list[str]) -> DifferenceTransform:
    if variant == "ties":  # with the linear layer scale chained after the trim
        return ChainedTransforms(
            [TrimAndElect(0, 1, 0.3, "retain"), ScaleCoefficient(0, layer_factors("linear", names))]
        )
    return ProjectOffRetain(0, 1, "per_tensor" if variant == "projected_tensor" else "global")


@pytest.mark.parametrize(
    ("variant", "exact"),
    [
        # Trim and election are element-wise given the threshold, which is the same over chunks or a whole tensor.
        ("ties", True),
        # The inner products are summed chunk by chunk in float64: equal to the whole-tensor sum up to rounding.
        ("projected_tensor", False),
        ("projected_global", False),
    ],
)
@pytest.mark.parametrize("max_shard_size", [None, "20KB"], ids=["unsharded", "sharded"])
def test_variants_stream_chunk_by_chunk_and_shard_by_shard(
    tmp_path, monkeypatch, variant, exact, max_shard_size
):
    monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", 100)
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32, max_shard_size=max_shard_size)
    transform = streaming_transform(variant, list(load_weights(paths["theta_d"])))
    recording = RecordingTransform(transform)
    result, _ = combine(paths, tmp_path / "out", 0.7, 0.3, recording)
    # Every tensor of the tiny Llama has more than 100 values; none was handed over whole.
    assert 0 < recording.largest <= 100
    floating = [n for n, t in load_weights(paths["theta_d"]).items() if t.is_floating_point()]
    assert sorted(recording.observed_tensors) == sorted(floating), "one pass per tensor (or per model)"
    if max_shard_size is not None:
        assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1
    reference = whole_tensor_reference(paths, 0.7, 0.3, variant)
    assert result.keys() == reference.keys()
    for name, tensor in reference.items():
        if exact:
            assert torch.equal(result[name], tensor), name
        else:
            torch.testing.assert_close(result[name], tensor, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=msa_ties", "method.density=0"], r"method\.density=0\.0 must be in \(0, 1\]"),
        (["method=msa_ties", "method.density=1.5"], r"method\.density=1\.5 must be in \(0, 1\]"),
        (["method=msa_ties", "method.election=vote"], r"method\.election='vote' must be one of retain, mass"),
        (["method=msa_ties", "method.beta=0"], r"method\.election=retain .* method\.beta=0"),
        (
            ["method=msa_projected", "method.projection=sideways"],
            r"method\.projection='sideways' must be one of",
        ),
        (["method=msa_projected", "method.beta=0"], r"method\.projection=per_tensor .* method\.beta=0"),
        (
            ["method=msa", "method.layer_scale=cubic"],
            r"method\.layer_scale='cubic' must be one of uniform, linear",
        ),
        (["method=msa", "method.layer_scale={mlp:-1}"], r"method\.layer_scale: the factor of 'mlp' is -1"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


def test_variant_configs_validate_with_their_defaults():
    ties = validate_config(compose_config(["method=msa_ties"])).method
    assert (ties.density, ties.election, ties.layer_scale) == (0.2, "retain", "uniform")
    projected = validate_config(compose_config(["method=msa_projected", "method.layer_scale=linear"])).method
    assert (projected.projection, projected.layer_scale) == ("per_tensor", "linear")
    mapping = validate_config(
        compose_config(["method=msa", "method.layer_scale={mlp:1.5,self_attn:0.5}"])
    ).method
    assert mapping.layer_scale == {"mlp": 1.5, "self_attn": 0.5}


def test_layer_scale_regex_matching_nothing_lists_tensor_names(tmp_path):
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32)
    with pytest.raises(ConfigError) as raised:
        produce("msa", paths, tmp_path, layer_scale={"mlp": 2.0, "transformer\\.h\\.": 0.5})
    message = str(raised.value)
    assert message.startswith("method.layer_scale: the regex(es) ['transformer\\\\.h\\\\.'] match no tensor")
    assert "model.embed_tokens.weight" in message and "in total)" in message
    assert not list(tmp_path.glob("msa-*/built-*")), "nothing was built"
    with pytest.raises(ConfigError, match=r"method\.layer_scale=linear: no tensor name holds a block index"):
        layer_factors("linear", ["embed.weight", "head.weight"])
    # (Hydra's override grammar cannot spell this one on the command line; a YAML file can.)
    with pytest.raises(ValueError, match=r"method\.layer_scale: 'mlp\(' is not a valid regex"):
        check_layer_scale({"mlp(": 2.0})


def test_kth_largest_is_exact_with_ties_and_zeros():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5000, generator=generator).abs()
    values[:700] = 0.0
    values[700:900] = values[1000]  # a run of ties
    descending = values.sort(descending=True).values
    for k in (1, 2, 17, 899, 1000, 4300, 4301, 5000):
        assert torch.equal(kth_largest(values, k), descending[k - 1]), k
    assert torch.equal(kth_largest(torch.zeros(3), 2), torch.tensor(0.0))


def test_transforms_refuse_bad_arguments():
    with pytest.raises(ValueError, match="density=0 must be in"):
        TrimAndElect(0, 1, 0, "retain")
    with pytest.raises(ValueError, match="election='x'"):
        TrimAndElect(0, 1, 0.5, "x")
    with pytest.raises(ValueError, match="projection='none'"):
        ProjectOffRetain(0, 1, "none")
    with pytest.raises(ValueError, match="at most one transform may observe"):
        ChainedTransforms([TrimAndElect(0, 1, 0.5, "none"), ProjectOffRetain(0, 1, "global")])


def test_an_anchored_block_regex_scales_that_block_alone_and_the_report_counts_matches(tmp_path, caplog):
    names = [f"model.layers.{i}.mlp.weight" for i in (0, 1, 10, 12)] + ["model.embed_tokens.weight"]
    assert layer_factors({"layers[.]1[.]": 2.0}, names) == {"model.layers.1.mlp.weight": 2.0}
    with caplog.at_level("WARNING", logger="msa_bench.methods"):
        assert len(layer_factors({"layers.1": 2.0}, names)) == 3  # layers.1, .10 and .12: unanchored
    assert "matches tensors of 3 blocks (1, 10, 12)" in caplog.text and "layers[.]1[.]" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="msa_bench.methods"):
        layer_factors({"layers[.]1[.]": 2.0, "mlp": 0.5}, names)
    assert not caplog.text  # one block, and a regex naming no block
    # The command line's spelling of the anchored form (Hydra keeps an unquoted key's backslashes).
    cli = validate_config(compose_config(["method=msa", "method.layer_scale={layers\\.1\\.:2.0}"])).method
    assert layer_factors(cli.layer_scale, names) == {"model.layers.1.mlp.weight": 2.0}
    paths = save_family(tmp_path / "in", tied=False, dtype=torch.float32)
    _, report, _ = produce("msa", paths, tmp_path, layer_scale={"layers[.]1[.]": 2.0, "mlp": 0.5})
    matched = report["transform"]["layer_scale"]["tensors_matched"]
    assert list(matched) == ["layers[.]1[.]", "mlp"] and matched["layers[.]1[.]"] >= 1 and matched["mlp"] >= 1


@pytest.mark.parametrize("density", [0.07, 0.14, 0.28, 0.55, 0.56, 0.2, 1.0])
def test_the_kept_count_is_exact_ceil_of_density_times_n(density):
    assert kept_count(density, 100) == round(density * 100)  # e.g. ceil(0.07 * 100) in floats is 8


def test_the_trim_fills_one_buffer_as_with_chunks_that_do_not_say_their_size():
    chunks = [{0: torch.tensor([[-3.0, 1.0], [2.0, -0.5]])}, {0: torch.tensor([[4.0, 0.25]])}]
    sized, unsized = TrimAndElect(0, None, 0.5, "none"), TrimAndElect(0, None, 0.5, "none")
    sized.observe("w", TensorChunks(6, chunks))
    unsized.observe("w", iter(chunks))
    assert sized._thresholds["w"].item() == unsized._thresholds["w"].item() == 2.0  # the 3rd largest of 6
