"""The paper-scale experiments (conf/experiment/paper/*), composed as written and run end to end, offline, against
tiny randomly initialised stand-ins of the paper's models laid out as hub revisions (tests/stand_in_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from msa_bench.errors import ModelSourceError
from msa_bench.pipeline.stages import StageError
from msa_bench.runner import resolved_container, run
from msa_bench.validation import validate_config
from tests.benchmark_fixtures import write_tiny_muse, write_tiny_restor, write_tiny_tofu
from tests.conftest import CONFIG_DIR, compose_config
from tests.stand_in_models import build_stand_in_revisions

torch.set_num_threads(1)

PAPER_EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment" / "paper").glob("*.yaml"))
OLMO_REVISIONS = [
    "main",
    "stage1-step119000-tokens500B",
    "stage1-step526000-tokens2207B",
    "stage1-step880000-tokens3691B",
    "stage1-step920000-tokens3859B",
]
# Small enough for a CPU test; everything else is the experiment as written.
SCALE_DOWN = [
    "model.dtype=float32",
    "model.max_position_embeddings=96",
    "device=cpu",
    "num_threads=1",
    "logger=none",
    "progress=false",
    "benchmark.target_recipe.epochs=1",
    "benchmark.target_recipe.batch_size=8",
    "benchmark.target_recipe.learning_rate=1e-3",
    "metrics.batch_size=8",
    "metrics.max_new_tokens=4",
]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_stand_in_revisions(root, "meta-llama/Llama-3.2-1B-Instruct", ["main"], chat_template=True)
    build_stand_in_revisions(root, "meta-llama/Llama-3.2-1B", ["main"], chat_template=False)
    build_stand_in_revisions(root, "meta-llama/Llama-3.1-8B-Instruct", ["main"], chat_template=True, seed=1)
    build_stand_in_revisions(root, "meta-llama/Llama-3.1-8B", ["main"], chat_template=False, seed=1)
    build_stand_in_revisions(root, "allenai/OLMo-2-1124-7B", OLMO_REVISIONS, chat_template=False, seed=2)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_tiny_tofu(root / "tofu")
    write_tiny_restor(root / "restor")
    write_tiny_muse(root / "muse-books")
    return root


def paper_job(name: str, tmp_path: Path, stand_ins: Path, extra: list[str]):
    cfg = compose_config(
        [
            f"experiment=paper/{name}",
            f"model.local_root={stand_ins}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *SCALE_DOWN,
            *extra,
        ],
        output_dir=tmp_path / "run",
    )
    return cfg


def run_paper_job(name, tmp_path, stand_ins, extra):
    cfg = paper_job(name, tmp_path, stand_ins, extra)
    return run(validate_config(cfg), resolved_container(cfg), tmp_path / "run")


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_every_paper_experiment_composes_and_documents_itself(name, monkeypatch, tmp_path):
    monkeypatch.setenv("MSA_BENCH_DATA", str(tmp_path))
    config = validate_config(compose_config([f"experiment=paper/{name}"], output_dir=tmp_path))
    assert config.model.source == "pretrained" and config.device == "cuda"
    assert config.model.dtype == "bfloat16" and config.model.arithmetic_dtype == "float32"
    assert config.benchmark.replay_fraction == 0
    header = (CONFIG_DIR / "experiment" / "paper" / f"{name}.yaml").read_text().splitlines()[1:6]
    text = " ".join(header)
    assert "Reproduces:" in text and "Command:" in text
    assert "Hardware:" in " ".join(
        (CONFIG_DIR / "experiment" / "paper" / f"{name}.yaml").read_text().splitlines()[:12]
    )


def test_the_olmo_revisions_are_marked_unverified():
    for path in (CONFIG_DIR / "checkpoint").glob("olmo2_7b_*.yaml"):
        text = path.read_text()
        assert "UNVERIFIED" in text and "unverified" in OmegaConf.load(path).provenance


@pytest.mark.slow
def test_tofu_llama32_1b_from_the_instruct_and_the_base_model(tmp_path, stand_ins, data):
    extra = [
        f"benchmark.data_dir={data / 'tofu'}",
        "metrics.names=[forget_Q_A_Prob,forget_quality,model_utility]",
    ]
    closest = run_paper_job("tofu_llama32_1b", tmp_path, stand_ins, [*extra, "checkpoint=closest"])
    base = run_paper_job("tofu_llama32_1b", tmp_path, stand_ins, [*extra, "checkpoint=llama32_1b_base"])
    assert closest["artifacts"]["target"] == base["artifacts"]["target"]  # one target, two θ0
    assert closest["artifacts"]["model"] != base["artifacts"]["model"]
    for results in (closest, base):
        assert 0.0 <= results["metrics"]["forget_Q_A_Prob"] <= 1.0
    # The chat template (with its pinned date) was used: the instruct stand-in's tokenizer has one.
    assert closest["config"]["model"]["prompt"]["format"] == "chat"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "checkpoint"),
    [("restor_llama31_8b", "llama31_8b_base"), ("restor_olmo2_7b", "olmo2_7b_500b")],
)
def test_restor_paper_experiments_run_on_stand_ins(name, checkpoint, tmp_path, stand_ins, data):
    results = run_paper_job(
        name,
        tmp_path,
        stand_ins,
        [
            f"benchmark.data_dir={data / 'restor'}",
            f"checkpoint={checkpoint}",
            "benchmark.block_size=32",
            "method.beta=0",
        ],
    )
    assert 0.0 <= results["metrics"]["restor_accuracy"] <= 100.0
    # A pretrained model is its own clean model: the oracle is the starting model, never trained here.
    assert "clean" not in results["cost"]
    model_hub_id = {
        "restor_llama31_8b": "meta-llama/Llama-3.1-8B-Instruct",
        "restor_olmo2_7b": "allenai/OLMo-2-1124-7B",
    }
    assert Path(results["artifacts"]["oracle"]) == stand_ins / model_hub_id[name] / "main"


@pytest.mark.slow
def test_muse_books_olmo2_7b_runs_on_stand_ins(tmp_path, stand_ins, data):
    results = run_paper_job(
        "muse_books_olmo2_7b",
        tmp_path,
        stand_ins,
        [
            f"benchmark.data_dir={data / 'muse-books'}",
            "benchmark.block_size=32",
            "metrics.muse.verbmem_max_new_tokens=4",
            "metrics.muse.knowmem_max_new_tokens=4",
            "metrics.muse.icl_shots=1",
        ],
    )
    assert {"forget_verbmem_ROUGE", "muse_privleak", "retain_knowmem_ROUGE"} <= set(results["metrics"])


@pytest.mark.slow
def test_checkpoint_distance_sweep_names_existing_checkpoints_and_runs(tmp_path, stand_ins, data):
    cfg = paper_job("checkpoint_distance_olmo2", tmp_path, stand_ins, [])
    swept = str(cfg.hydra.sweeper.params.checkpoint).split(",") if "hydra" in cfg else None
    if swept is None:  # compose() drops the hydra node; read the experiment file instead
        swept = OmegaConf.load(
            CONFIG_DIR / "experiment/paper/checkpoint_distance_olmo2.yaml"
        ).hydra.sweeper.params
        swept = swept.checkpoint.split(",")
    assert len(swept) == 5
    extra = [f"benchmark.data_dir={data / 'tofu'}", "metrics.names=[forget_Q_A_Prob]"]
    for checkpoint in swept[:2]:
        assert (CONFIG_DIR / "checkpoint" / f"{checkpoint}.yaml").is_file()
        results = run_paper_job(
            "checkpoint_distance_olmo2", tmp_path, stand_ins, [*extra, f"checkpoint={checkpoint}"]
        )
        assert results["checkpoint"] == checkpoint


def test_embedded_stages_are_refused_for_a_pretrained_model(tmp_path, stand_ins, data):
    with pytest.raises(StageError, match="checkpoint.stage='base' names a stage of the embedded model"):
        run_paper_job(
            "tofu_llama32_1b", tmp_path, stand_ins, [f"benchmark.data_dir={data / 'tofu'}", "checkpoint=base"]
        )


def test_a_missing_revision_names_the_folder_looked_in(tmp_path, stand_ins, data):
    with pytest.raises(ModelSourceError, match=r"stage1-step1-tokens4B.*not found.*allenai/OLMo-2-1124-7B"):
        run_paper_job(
            "restor_olmo2_7b",
            tmp_path,
            stand_ins,
            [
                f"benchmark.data_dir={data / 'restor'}",
                "checkpoint=olmo2_7b_500b",
                "checkpoint.revision=stage1-step1-tokens4B",
            ],
        )
    assert not (tmp_path / "cache" / "finetune").exists()


@pytest.mark.slow
def test_hub_states_stored_in_another_dtype_are_converted_before_arithmetic(tmp_path, data):
    root = tmp_path / "models"
    build_stand_in_revisions(root, "meta-llama/Llama-3.2-1B-Instruct", ["main"], dtype=torch.bfloat16)
    build_stand_in_revisions(
        root, "meta-llama/Llama-3.2-1B", ["main"], chat_template=False, dtype=torch.bfloat16
    )
    results = run_paper_job(
        "tofu_llama32_1b",
        tmp_path,
        root,
        [
            f"benchmark.data_dir={data / 'tofu'}",
            "checkpoint=llama32_1b_base",
            "metrics.names=[forget_Q_A_Prob]",
        ],
    )
    assert 0.0 <= results["metrics"]["forget_Q_A_Prob"] <= 1.0
    assert (tmp_path / "cache" / "hub_model").is_dir()  # the float32 copies of the two bf16 hub states
