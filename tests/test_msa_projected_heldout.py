"""msa_projected's `method.project_off=heldout`: the forget vector projected off a format vector θh − θ0 learnt from
held-out QA of the same format, which the arithmetic reads as a term of coefficient 0; the held-out data per
benchmark, disjoint from the forget set and from every evaluated set; the default left as it was."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from msa_bench.arithmetic import StateDelta, combine_checkpoints
from msa_bench.arithmetic.difference_transforms import ProjectOffRetain
from msa_bench.benchmarks.base import BENCHMARKS, Benchmark, discover_benchmarks
from msa_bench.config.schema import TrainRecipe
from msa_bench.data.overlap import collapsed
from msa_bench.data.synthetic import format_only_authors_qa, generate_world
from msa_bench.data.synthetic_vocabulary import _template_words
from msa_bench.errors import BenchmarkError, ConfigError, StageError
from msa_bench.methods.registry import get_method
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.refs import ModelRef
from msa_bench.pipeline.stages import Pipeline
from msa_bench.validation import validate_config
from tests.benchmark_fixtures import TINY_WORLD, write_tiny_restor, write_tiny_tofu
from tests.conftest import compose_config
from tests.pipeline_runs import run_job
from tests.test_arithmetic_family import EMBED, LAYER_0, LAYER_1, load_weights, save_checkpoint
from tests.test_benchmark_sources import SHARED_TOFU, needs_tofu

torch.set_num_threads(1)

ALPHA, BETA = 0.7, 0.3
FORGET = {
    LAYER_0: torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]),
    LAYER_1: torch.ones(2, 3),
    EMBED: torch.eye(2),
}
# τ_r is orthogonal to τ_f on every tensor: projecting off it would change nothing, so any change is τ_h's.
RETAIN = {
    LAYER_0: torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    LAYER_1: torch.zeros(2, 3),
    EMBED: torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
}
FORMAT = {
    LAYER_0: torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    LAYER_1: torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]),
    EMBED: torch.zeros(2, 2),  # τ_h = 0: nothing to project off
}
# τ_f − c·τ_h by hand. per tensor: c = 1/1 on layer 0, 2/4 on layer 1, none on the embedding; global: c = 3/5.
PROJECTED = {
    "per_tensor": {
        LAYER_0: [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
        LAYER_1: [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]],
        EMBED: [[1.0, 0.0], [0.0, 1.0]],
    },
    "global": {
        LAYER_0: [[0.4, 2.0, 0.0], [0.0, 0.0, 0.0]],
        LAYER_1: [[1.0, 1.0, 1.0], [1.0, 1.0, -0.2]],
        EMBED: [[1.0, 0.0], [0.0, 1.0]],
    },
}


@pytest.fixture
def family(tmp_path) -> dict[str, Path]:
    """θ0 = 0, θ1 = τ_f, θ2 = τ_r, θh = τ_h and θ_D = 1, plus an integer tensor every state shares."""
    steps = {"steps": torch.tensor([3, 4])}
    states = {
        "theta_0": {name: torch.zeros_like(t) for name, t in FORGET.items()},
        "theta_1": FORGET,
        "theta_2": RETAIN,
        "theta_h": FORMAT,
        "theta_d": {name: torch.ones_like(t) for name, t in FORGET.items()},
    }
    return {name: save_checkpoint(tmp_path / name, {**tensors, **steps}) for name, tensors in states.items()}


def expected_output(mode: str | None) -> dict[str, torch.Tensor]:
    """θ_D − α·(projected τ_f) + β·τ_r; mode None: plain msa."""
    return {
        name: 1
        - ALPHA * (torch.tensor(PROJECTED[mode][name]) if mode else FORGET[name])
        + BETA * RETAIN[name]
        for name in FORGET
    }


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
def test_projection_onto_a_given_vector_by_hand(family, tmp_path, mode):
    deltas = [
        StateDelta(-ALPHA, family["theta_1"], family["theta_0"]),
        StateDelta(BETA, family["theta_2"], family["theta_0"]),
        StateDelta(0.0, family["theta_h"], family["theta_0"]),  # read for the projection, never added
    ]
    report = combine_checkpoints(
        family["theta_d"], deltas, tmp_path / "out", transform=ProjectOffRetain(0, 2, mode)
    )
    result = load_weights(tmp_path / "out")
    for name, expected in expected_output(mode).items():
        torch.testing.assert_close(result[name], expected, atol=1e-6, rtol=0)
    assert torch.equal(result["steps"], torch.tensor([3, 4]))
    assert report["deltas"][2]["coefficient"] == 0.0 and not report["deltas"][2]["skipped"]


def test_a_direction_orthogonal_to_the_forget_vector_leaves_msa_bit_for_bit(family, tmp_path):
    """c = 0 everywhere (τ_h = τ_r here, orthogonal to τ_f): the coefficient-0 term is read but adds nothing."""
    msa = [
        StateDelta(-ALPHA, family["theta_1"], family["theta_0"]),
        StateDelta(BETA, family["theta_2"], family["theta_0"]),
    ]
    combine_checkpoints(family["theta_d"], msa, tmp_path / "msa")
    with_direction = [*msa, StateDelta(0.0, family["theta_2"], family["theta_0"])]
    combine_checkpoints(
        family["theta_d"],
        with_direction,
        tmp_path / "projected",
        transform=ProjectOffRetain(0, 2, "per_tensor"),
    )
    assert (tmp_path / "projected" / "model.safetensors").read_bytes() == (
        tmp_path / "msa" / "model.safetensors"
    ).read_bytes()


# --------------------------------------------------------------------------------------------- through the method


class StandInPipeline:
    """What msa_projected's produce asks of a pipeline, over the saved family: it records each fine-tune asked for
    and each held-out draw, and builds each arithmetic into a folder of its own."""

    RETAIN_ITEMS = [{"question": f"r{i}", "answer": "a"} for i in range(3)]

    def __init__(self, family: dict[str, Path], root: Path) -> None:
        self.family, self.root = family, root
        self.cfg = SimpleNamespace(
            benchmark=SimpleNamespace(target_recipe=TrainRecipe(epochs=1), requests=None),
            model=SimpleNamespace(arithmetic_dtype="float32"),
        )
        self.store = SimpleNamespace(root=root)
        self.forget_split = "forget10"
        self.finetunes: dict[str, tuple] = {}
        self.heldout_draws: list[tuple] = []
        self.built: list[tuple[dict, Path]] = []

    def retain_subset(self, size, seed, **kwargs):
        return self.RETAIN_ITEMS, "retain-subset"

    def heldout_subset(self, size, seed, draw="sample"):
        self.heldout_draws.append((size, seed, draw))
        return [{"question": f"h{i}", "answer": "a"} for i in range(size)], "heldout-subset"

    def target(self):
        return ModelRef(self.family["theta_d"], "target-key", "target")

    def checkpoint(self):
        return ModelRef(self.family["theta_0"], "theta0-key", "checkpoint")

    def forget_items(self):
        return []

    def finetune(self, stage, base, items, recipe, data_id):
        self.finetunes[stage] = (base.key, len(items), recipe, data_id)
        state = {"forget_vector": "theta_1", "retain_vector": "theta_2", "format_vector": "theta_h"}[stage]
        return ModelRef(self.family[state], f"{stage}-key", stage)

    def cached_model(self, stage, kind, spec, build, label=None):
        out = self.root / f"built-{len(self.built)}"
        build(out)
        self.built.append((spec, out))
        return ModelRef(out, "unlearned-key", label)


def produce(family, root: Path, **settings) -> tuple[dict, dict[str, torch.Tensor], StandInPipeline]:
    method_class = get_method("msa_projected")
    config = replace(method_class.config_class(), **{"alpha": ALPHA, "beta": BETA, **settings})
    pipeline = StandInPipeline(family, root)
    method = method_class(config)
    method.preflight(pipeline)
    method.produce(pipeline)
    spec, out = pipeline.built[-1]
    return spec, load_weights(out), pipeline


TERMS = [
    {"coefficient": -ALPHA, "finetuned": "forget_vector-key", "base": "theta0-key"},
    {"coefficient": BETA, "finetuned": "retain_vector-key", "base": "theta0-key"},
]


def test_the_default_projects_off_the_retain_vector_with_its_old_key_and_bytes(family, tmp_path):
    spec, _, pipeline = produce(family, tmp_path / "default")
    # The key msa_projected had before method.project_off existed.
    assert spec == {
        "method": "msa_projected",
        "target": "target-key",
        "terms": TERMS,
        "projection": "per_tensor",
    }
    assert set(pipeline.finetunes) == {"forget_vector", "retain_vector"} and not pipeline.heldout_draws
    explicit, _, _ = produce(family, tmp_path / "explicit", project_off="retain")
    assert explicit == spec
    direct = tmp_path / "direct"
    combine_checkpoints(
        family["theta_d"],
        [
            StateDelta(-ALPHA, family["theta_1"], family["theta_0"]),
            StateDelta(BETA, family["theta_2"], family["theta_0"]),
        ],
        direct,
        transform=ProjectOffRetain(0, 1, "per_tensor"),
    )
    for built in ("default", "explicit"):
        assert (tmp_path / built / "built-0" / "model.safetensors").read_bytes() == (
            direct / "model.safetensors"
        ).read_bytes()


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
def test_heldout_projects_off_the_format_vector_and_adds_the_retain_term(family, tmp_path, mode):
    recipe = TrainRecipe(epochs=2, learning_rate=1e-3)
    spec, result, pipeline = produce(
        family, tmp_path, project_off="heldout", projection=mode, retain_recipe=recipe, retain_seed=5
    )
    for name, expected in expected_output(mode).items():
        torch.testing.assert_close(result[name], expected, atol=1e-6, rtol=0)
    format_term = {"coefficient": 0.0, "finetuned": "format_vector-key", "base": "theta0-key"}
    assert spec == {
        "method": "msa_projected",
        "target": "target-key",
        "terms": [*TERMS, format_term],
        "projection": mode,
        "project_off": "heldout",
    }
    # θh: θ0 fine-tuned with θ2's recipe, on as many held-out items as θ2's, drawn with θ2's seed and draw.
    assert pipeline.finetunes["format_vector"] == ("theta0-key", 3, recipe, "heldout-subset")
    assert pipeline.finetunes["retain_vector"][1:3] == (3, recipe)
    assert set(pipeline.heldout_draws) == {(3, 5, "sample")}


def test_heldout_with_beta_zero_needs_no_retain_vector(family, tmp_path):
    spec, result, pipeline = produce(family, tmp_path, project_off="heldout", beta=0.0)
    assert set(pipeline.finetunes) == {"forget_vector", "format_vector"}
    assert spec["terms"][1] == {"coefficient": 0.0, "finetuned": "format_vector-key", "base": "theta0-key"}
    for name in FORGET:
        expected = 1 - ALPHA * torch.tensor(PROJECTED["per_tensor"][name])
        torch.testing.assert_close(result[name], expected, atol=1e-6, rtol=0)


def test_planned_stages_name_the_format_vector_only_when_it_is_trained():
    method_class = get_method("msa_projected")
    stages = method_class(replace(method_class.config_class(), project_off="heldout")).planned_stages()
    assert stages[-2].startswith("format vector") and stages[-1].startswith("arithmetic")
    assert not any("format" in stage for stage in method_class(method_class.config_class()).planned_stages())


# --------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.project_off=format"], r"method\.project_off='format' must be one of retain, heldout"),
        (
            ["method.project_off=heldout", "method.projection=none"],
            r"method\.project_off=heldout .* method\.projection=none projects nothing",
        ),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(["method=msa_projected", *overrides]))


def test_settings_validate():
    assert validate_config(compose_config(["method=msa_projected"])).method.project_off == "retain"
    heldout = ["method=msa_projected", "method.project_off=heldout", "method.beta=0"]
    assert validate_config(compose_config(heldout)).method.project_off == "heldout"


def test_benchmarks_without_heldout_qa_refuse_naming_the_key():
    discover_benchmarks()
    refusing = {kind for kind, cls in BENCHMARKS.items() if cls.heldout_qa is Benchmark.heldout_qa}
    assert {"muse", "restor"} <= refusing and not {"tofu", "synthetic_tofu"} & refusing
    for kind in refusing:
        context = SimpleNamespace(cfg=SimpleNamespace(benchmark=SimpleNamespace(kind=kind)))
        with pytest.raises(
            BenchmarkError, match=rf"method\.project_off=heldout .*benchmark\.kind={kind} has none"
        ):
            BENCHMARKS[kind](context).heldout_qa()


def test_the_refusal_comes_before_anything_is_trained(tmp_path):
    data = write_tiny_restor(tmp_path / "restor")
    overrides = ["benchmark=restor", "metrics=restor", "checkpoint=closest", f"benchmark.data_dir={data}"]
    with pytest.raises(BenchmarkError, match=r"method\.project_off=heldout"):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            [*overrides, "method=msa_projected", "method.project_off=heldout"],
        )
    assert not (tmp_path / "cache" / "finetune").exists()


def test_heldout_with_sequential_requests_refuses_before_anything_is_trained(tmp_path):
    # Projecting off the retain vector runs sequentially; off the format vector the sequential path reads no θh.
    with pytest.raises(ConfigError, match=r"project_off=heldout cannot unlearn sequential .*requests=2"):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            ["method=msa_projected", "method.project_off=heldout", "benchmark.requests=2"],
        )
    assert not (tmp_path / "cache" / "finetune").exists()


def tiny_tofu_pipeline(tmp_path, forget_split: str) -> Pipeline:
    data = tmp_path / "tofu" if (tmp_path / "tofu").is_dir() else write_tiny_tofu(tmp_path / "tofu")
    overrides = ["benchmark=tofu", f"benchmark.data_dir={data}", f"benchmark.forget_split={forget_split}"]
    return pipeline_for(tmp_path, overrides)


def pipeline_for(tmp_path, overrides: list[str]) -> Pipeline:
    config = validate_config(compose_config(["logger=none", "method=msa_projected", *overrides], tmp_path))
    return Pipeline(config, ArtifactStore(tmp_path / "cache"), "cpu")


def test_tofu_forget10_refuses_and_a_small_pool_names_its_size(tmp_path):
    with pytest.raises(BenchmarkError, match=r"forget10's non-members \(holdout10\) are all of them"):
        tiny_tofu_pipeline(tmp_path, "forget10").heldout_subset(1, 0)
    pipeline = tiny_tofu_pipeline(tmp_path, "forget05")  # the tiny world: 2 holdout authors, forget05 takes 1
    pool, _ = pipeline.benchmark.heldout_qa()
    assert len(pool) == 10
    with pytest.raises(StageError, match=r"as many items as the retain vector \(11\).* holds 10"):
        pipeline.heldout_subset(11, 0)


# ------------------------------------------------------------------------- the held-out data is never evaluated


def assert_never_evaluated(pipeline: Pipeline) -> list[dict]:
    """Every held-out item is outside the forget set, the target's data and every eval set the benchmark has
    (asked for by question, inside a prompt or text, or by answer); returns the held-out pool."""
    benchmark = pipeline.benchmark
    pool, _ = benchmark.heldout_qa()
    assert pool
    questions = {item["question"] for item in pool}
    answers = {item["answer"] for item in pool}
    assert not questions & {item["question"] for item in benchmark.forget_items()}
    assert not questions & {item["question"] for item in benchmark.target_items()}
    for name, items in benchmark.eval_sets(benchmark.eval_set_names()).items():
        for item in items:
            assert item.get("question") not in questions, name
            assert item.get("answer") not in answers, name
            texts = [
                collapsed(item[key]) for key in ("prompt", "text", "gt") if isinstance(item.get(key), str)
            ]
            assert not any(collapsed(q) in text for q in questions for text in texts), name
    drawn, data_id = pipeline.heldout_subset(len(pool) // 2, 3)
    assert all(item in pool for item in drawn) and "sha256" in data_id
    return pool


def test_tiny_tofu_heldout_is_never_evaluated(tmp_path):
    assert_never_evaluated(tiny_tofu_pipeline(tmp_path, "forget01"))


@needs_tofu
@pytest.mark.parametrize(("forget_split", "size"), [("forget01", 360), ("forget05", 200)])
def test_real_tofu_heldout_is_holdout10_less_the_runs_holdout_and_never_evaluated(
    tmp_path, forget_split, size
):
    overrides = [
        "benchmark=tofu",
        f"benchmark.data_dir={SHARED_TOFU}",
        f"benchmark.forget_split={forget_split}",
    ]
    pipeline = pipeline_for(tmp_path, overrides)
    assert len(assert_never_evaluated(pipeline)) == size


WORDS = re.compile(r"[A-Za-z]+")


def test_synthetic_format_authors_are_never_evaluated_and_share_no_proper_noun_with_the_world(tmp_path):
    pipeline = pipeline_for(tmp_path, ["experiment=smoke"])
    pool = assert_never_evaluated(pipeline)
    world_files = {
        name: pipeline.split(name) for name in ("full", "holdout10", "instruct", "real_authors_perturbed")
    }
    world_subjects = {item["subject"] for items in world_files.values() for item in items}
    assert not {item["subject"] for item in pool} & world_subjects
    # Beyond the templates' words and the countries (the format's), no word of theirs is in the world's texts.
    world = generate_world(TINY_WORLD)
    texts = [*world.pretraining_documents]
    for records in world.qa_files.values():
        for record in records:
            texts += [
                record["question"],
                record["answer"],
                record["paraphrased_answer"],
                *record["perturbed_answer"],
            ]
    world_words = {word for text in texts for word in WORDS.findall(text)}
    shared = {
        word
        for record in format_only_authors_qa(world, 20)
        for word in WORDS.findall(f"{record['question']} {record['answer']}")
        if word in world_words
    }
    countries = {country.name for country in world.countries}
    assert {word for word in shared if word.lower() not in _template_words() and word not in countries} <= {
        "and"
    }
    assert len(format_only_authors_qa(world, 20)) == 200
    assert format_only_authors_qa(world, 20) == format_only_authors_qa(generate_world(TINY_WORLD), 20)


# ------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_run_with_heldout_completes_and_differs_from_the_default(tmp_path):
    """`msa-bench experiment=smoke method=msa_projected method.project_off=heldout`: θh is a cached stage with its
    cost, trained only when asked for, and the result is not the default's."""
    default = run_job(tmp_path / "cache", tmp_path / "default", ["method=msa_projected"])
    heldout = run_job(
        tmp_path / "cache", tmp_path / "heldout", ["method=msa_projected", "method.project_off=heldout"]
    )
    assert "format_vector" not in default["cost"]
    format_cost = heldout["cost"]["format_vector"]
    assert not format_cost["reused"] and format_cost["wall_seconds"] > 0 and format_cost["flops"] > 0
    for stage in ("forget_vector", "retain_vector"):  # shared with the default run, reused
        assert heldout["cost"][stage]["artifact"] == default["cost"][stage]["artifact"]
        assert heldout["cost"][stage]["reused"]
    assert heldout["cost"]["arithmetic"]["artifact"] != default["cost"]["arithmetic"]["artifact"]
    assert heldout["metrics"]["forget_Q_A_Prob"] != default["metrics"]["forget_Q_A_Prob"]
    assert heldout["metrics"]["model_utility"] != default["metrics"]["model_utility"]
