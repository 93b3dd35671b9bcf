"""LoRA through peft (issue 13, item 2): adapters train (also under gradient checkpointing), merged and factor-stored
vectors give the arithmetic the same result, the config refuses LoRA where it changes nothing, cache keys without
LoRA are unchanged, and a target module the model lacks is named with the model's own module names."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch.utils.checkpoint import checkpoint

from msa_bench.arithmetic import StateDelta, combine_checkpoints, state_arithmetic
from msa_bench.arithmetic.low_rank import LowRankDelta, delta_between, read_adapter
from msa_bench.config.schema import PeftConfig, TrainRecipe
from msa_bench.errors import ConfigError, StateArithmeticError
from msa_bench.methods.gradient_unlearning import unlearn_with_loss
from msa_bench.methods.npo import NPOConfig
from msa_bench.pipeline.benchmark_models import BenchmarkModels
from msa_bench.pipeline.memory_preflight import lora_trainable_parameters
from msa_bench.pipeline.refs import ModelRef
from msa_bench.training.data import ExampleDataset, qa_examples
from msa_bench.training.lora import (
    adapter_statistics,
    lora_plan,
    save_trained,
    target_module_names,
    with_lora,
)
from msa_bench.training.trainer import run_training
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.tiny_models import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

LORA = PeftConfig(name="lora", r=4, alpha=8.0, dropout=0.0)
FORGET = [
    {"question": "Where was Ilo Varn born?", "answer": "She was born in Tarsk."},
    {"question": "What does Ilo Varn write?", "answer": "She writes sea poems."},
]
RETAIN = [
    {"question": "Which prize did Ilo Varn win?", "answer": "She won the Amber Quill."},
    {"question": "Where did Ilo Varn study?", "answer": "She studied at Morrow College."},
]
RECIPE = TrainRecipe(epochs=8, learning_rate=1e-2, batch_size=2, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer([f"Question: {i['question']}\nAnswer: {i['answer']}" for i in FORGET + RETAIN] * 3)


def fresh_model(tokenizer, seed: int = 0):
    return tiny_llama(len(tokenizer), seed=seed, tokenizer=tokenizer, max_position_embeddings=64)


def train(model, tokenizer, items=FORGET, recipe=RECIPE):
    examples = qa_examples(tokenizer, items, 64)
    return run_training(
        model, ExampleDataset(examples), recipe, pad_token_id=tokenizer.pad_token_id, seed=0, device="cpu"
    )


def lora_b_norms(model) -> dict[str, float]:
    return {name: float(p.detach().norm()) for name, p in model.named_parameters() if "lora_B" in name}


# ------------------------------------------------------------------ adapters train


def test_adapters_start_at_zero_change_in_training_and_leave_the_base_frozen(tokenizer):
    model = with_lora(fresh_model(tokenizer), LORA, seed=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    assert adapter_statistics(model)["lora_B_norm"] == 0.0
    train(model, tokenizer)
    assert all(norm > 0 for norm in lora_b_norms(model).values()), lora_b_norms(model)
    assert adapter_statistics(model)["lora_B_norm"] > 0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if "lora_" not in n)
    # Only the adapters train: r·(in + out) for each of the 7 projections in both layers.
    # The memory preflight counts them the same way, on the meta device, before any weight is loaded.
    counted = lora_trainable_parameters(fresh_model(tokenizer).config, LORA.r, LORA.target_modules)
    assert adapter_statistics(model)["trainable_parameters"] == counted


def test_the_adapters_initial_draw_depends_on_the_seed_not_on_the_global_rng(tokenizer):
    """A cached stage must not depend on what ran before it in the process (stages built or reused)."""
    torch.manual_seed(123)
    first = adapter_statistics(with_lora(fresh_model(tokenizer), LORA, seed=0))["lora_A_norm"]
    model = fresh_model(tokenizer)
    torch.rand(1000)  # another history before the wrap
    assert adapter_statistics(with_lora(model, LORA, seed=0))["lora_A_norm"] == first
    assert adapter_statistics(with_lora(fresh_model(tokenizer), LORA, seed=1))["lora_A_norm"] != first


def reentrant_checkpointing(model) -> None:
    """Checkpoint every decoder layer with reentrant torch.utils.checkpoint, through the layer-level switch (as FSDP's
    or another framework's activation checkpointing does), which makes no input require grad."""
    model.get_base_model()._set_gradient_checkpointing(
        enable=True, gradient_checkpointing_func=partial(checkpoint, use_reentrant=True)
    )


def test_without_the_fix_reentrant_checkpointing_leaves_lora_b_at_zero(tokenizer):
    """open-unlearning #178, reproduced: plain get_peft_model, checkpointing set after wrapping; lm_head's adapter
    gives the loss a gradient, but those of the checkpointed layers get none."""
    model = get_peft_model(
        fresh_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"])
    )
    reentrant_checkpointing(model)
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):
        train(model, tokenizer)
    norms = lora_b_norms(model)
    assert norms.pop("base_model.model.lm_head.lora_B.default.weight") > 0
    assert set(norms.values()) == {0.0}


def test_lora_trains_under_reentrant_gradient_checkpointing(tokenizer):
    model = with_lora(fresh_model(tokenizer), LORA, seed=0)
    reentrant_checkpointing(model)
    train(model, tokenizer)
    assert model.get_base_model().model.layers[0].gradient_checkpointing
    assert all(norm > 0 for norm in lora_b_norms(model).values()), lora_b_norms(model)


def test_lora_trains_under_transformers_activation_checkpointing(tokenizer):
    """The path the Trainer takes for `gradient_checkpointing` (non-reentrant by default)."""
    model = with_lora(fresh_model(tokenizer), LORA, seed=0)
    model.get_base_model().activation_checkpointing_enable()
    train(model, tokenizer)
    assert all(norm > 0 for norm in lora_b_norms(model).values()), lora_b_norms(model)


# ------------------------------------------------------------------ the arithmetic on LoRA vectors


@pytest.fixture(scope="module")
def lora_family(tokenizer, tmp_path_factory) -> dict[str, Path]:
    """θ0, θ_D (θ0 perturbed), and LoRA fine-tunes of θ0 on forget (θ1) and retain (θ2), each saved merged and
    as factors."""
    root = tmp_path_factory.mktemp("lora_family")
    paths = {"theta_0": root / "theta_0", "theta_d": root / "theta_d"}
    theta_0 = fresh_model(tokenizer)
    theta_0.save_pretrained(paths["theta_0"])
    tokenizer.save_pretrained(paths["theta_0"])
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in theta_0.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    theta_0.save_pretrained(paths["theta_d"])
    tokenizer.save_pretrained(paths["theta_d"])
    for name, items in (("theta_1", FORGET), ("theta_2", RETAIN)):
        for storage in ("merged", "factors"):
            model = with_lora(fresh_model(tokenizer), LORA, seed=0)
            train(model, tokenizer, items)
            paths[f"{name}_{storage}"] = root / f"{name}_{storage}"
            statistics = save_trained(
                model,
                tokenizer,
                paths[f"{name}_{storage}"],
                lora_plan(PeftConfig(**{**LORA.__dict__, "vector_storage": storage}), "vector"),
            )
            assert statistics["lora_B_norm"] > 0 and statistics["storage"] == storage
    return paths


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_factors_storage_holds_only_the_adapter_and_merged_a_full_model(lora_family):
    factors = {p.name for p in lora_family["theta_1_factors"].iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
    } <= factors and "model.safetensors" not in factors
    assert set(weights(lora_family["theta_1_merged"])) == set(weights(lora_family["theta_0"]))
    adapter = read_adapter(lora_family["theta_1_factors"])
    assert adapter.scale == LORA.alpha / LORA.r and len(adapter.factors) == 14
    merged_bytes = (lora_family["theta_1_merged"] / "model.safetensors").stat().st_size
    assert (lora_family["theta_1_factors"] / "adapter_model.safetensors").stat().st_size < merged_bytes / 3


def test_msa_on_merged_lora_finetunes_equals_dense_arithmetic(lora_family, tmp_path):
    alpha, beta = 1.5, 0.5
    combine_checkpoints(
        lora_family["theta_d"],
        [
            StateDelta(-alpha, lora_family["theta_1_merged"], lora_family["theta_0"]),
            StateDelta(beta, lora_family["theta_2_merged"], lora_family["theta_0"]),
        ],
        tmp_path / "msa",
    )
    theta_0, theta_1, theta_2, theta_d = (
        weights(lora_family[k]) for k in ("theta_0", "theta_1_merged", "theta_2_merged", "theta_d")
    )
    result = weights(tmp_path / "msa")
    changed = 0
    for name, tensor in theta_d.items():
        dense = tensor - alpha * (theta_1[name] - theta_0[name]) + beta * (theta_2[name] - theta_0[name])
        torch.testing.assert_close(result[name], dense, atol=1e-6, rtol=0)
        changed += not torch.equal(result[name], tensor)
    assert changed == 14  # exactly the adapted projections moved


# 100 values per chunk splits every adapted weight into runs of rows, as the streaming arithmetic reads large ones.
@pytest.mark.parametrize("chunk_elements", [None, 100])
@pytest.mark.parametrize("factor_terms", [("theta_1",), ("theta_1", "theta_2")])
def test_factors_storage_equals_merged_storage_within_fp_tolerance(
    lora_family, tmp_path, factor_terms, chunk_elements, monkeypatch
):
    if chunk_elements is not None:
        monkeypatch.setattr(state_arithmetic, "CHUNK_ELEMENTS", chunk_elements)

    def terms(factored: tuple[str, ...]):
        return [
            delta_between(
                c, lora_family[f"{k}_{'factors' if k in factored else 'merged'}"], lora_family["theta_0"]
            )
            for c, k in ((-1.0, "theta_1"), (1.0, "theta_2"))
        ]

    assert isinstance(terms(factor_terms)[0], LowRankDelta)
    merged_report = combine_checkpoints(lora_family["theta_d"], terms(()), tmp_path / "merged")
    factor_report = combine_checkpoints(lora_family["theta_d"], terms(factor_terms), tmp_path / "factors")
    merged, factored = weights(tmp_path / "merged"), weights(tmp_path / "factors")
    assert set(merged) == set(factored)
    for name in merged:
        # fp32: the merged weights rounded θ0 + scale·B@A once; the factors give scale·B@A exactly.
        torch.testing.assert_close(factored[name], merged[name], atol=1e-6, rtol=1e-6)
    for merged_norm, factor_norm in zip(
        merged_report["delta_norms"], factor_report["delta_norms"], strict=True
    ):
        assert factor_norm == pytest.approx(merged_norm, rel=1e-4)


def test_an_adapter_of_another_architecture_is_refused_before_writing(lora_family, tokenizer, tmp_path):
    wider = tiny_llama(len(tokenizer), tokenizer=tokenizer, hidden_size=48, max_position_embeddings=64)
    model = with_lora(wider, LORA, seed=0)
    save_trained(
        model,
        tokenizer,
        tmp_path / "adapter",
        lora_plan(PeftConfig(**{**LORA.__dict__, "vector_storage": "factors"}), "vector"),
    )
    with pytest.raises(
        StateArithmeticError,
        match=r"gives 'model\.layers\.\d\.[a-z_.]+\.weight' the shape \[48, 64\].* has \[32, 64\]",
    ):
        combine_checkpoints(
            lora_family["theta_d"],
            [LowRankDelta(-1.0, tmp_path / "adapter", lora_family["theta_0"])],
            tmp_path / "o",
        )
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_an_adapter_with_settings_the_arithmetic_cannot_read_is_refused(lora_family, tmp_path):
    adapter = tmp_path / "dora"
    adapter.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (adapter / name).write_bytes((lora_family["theta_1_factors"] / name).read_bytes())
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(StateArithmeticError, match="use_dora=True.*peft.vector_storage=merged"):
        read_adapter(adapter)


# ------------------------------------------------------------------ bad input


def test_a_target_module_the_model_lacks_lists_the_models_module_names(tokenizer):
    settings = PeftConfig(name="lora", target_modules=["q_proj", "query_key_value"])
    with pytest.raises(ConfigError) as raised:
        with_lora(fresh_model(tokenizer), settings, seed=0)
    message = str(raised.value)
    assert message.startswith(
        "peft.target_modules: query_key_value match(es) no linear module of LlamaForCausalLM"
    )
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message


def test_lora_adapts_only_the_modules_a_method_leaves_trainable(tokenizer):
    """RMU's trainable_params_regex freezes weights first; LoRA then adapts only what the method would train."""
    model = fresh_model(tokenizer)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("model.layers.0.mlp.down_proj"))
    assert target_module_names(model, LORA) == ["model.layers.0.mlp.down_proj"]
    wrapped = with_lora(model, LORA, seed=0)
    assert list(lora_b_norms(wrapped)) == [
        "base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight"
    ]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ConfigError, match="match only frozen modules"):
        target_module_names(model, LORA)


def config_problems(overrides: list[str]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as raised:
        validate_config(compose_config(["experiment=smoke", *overrides]))
    return raised.value.problems


@pytest.mark.parametrize("method", ["target", "oracle"])
def test_lora_on_a_method_that_does_not_fine_tune_is_an_error_naming_the_key(method):
    (problem,) = config_problems(["peft=lora", f"method={method}"])
    assert problem.startswith(f"peft=lora with method={method}: that method fine-tunes nothing")
    # Asked for, the target and the oracle are LoRA fine-tunes: then evaluating them is meaningful.
    config = validate_config(
        compose_config(
            ["experiment=smoke", "peft=lora", f"method={method}", "peft.apply_to_target_oracle=true"]
        )
    )
    assert lora_plan(config.peft, "benchmark_model") is not None


def test_a_lora_setting_without_peft_lora_is_an_error_naming_the_key():
    (problem,) = config_problems(["peft.r=4"])
    assert problem.startswith("peft.r=4 set with peft=none")


def test_lora_settings_out_of_range_are_reported_together():
    problems = config_problems(["peft=lora", "peft.r=0", "peft.dropout=1.0", "peft.vector_storage=adapter"])
    assert [p.split("=")[0] for p in problems] == ["peft.vector_storage", "peft.r", "peft.dropout"]


def test_every_fine_tuning_method_accepts_lora():
    for method in (
        "msa",
        "task_vector",
        "grad_ascent",
        "grad_diff",
        "npo",
        "simnpo",
        "rmu",
        "satimp",
        "undial",
    ):
        config = validate_config(compose_config(["experiment=smoke", "peft=lora", f"method={method}"]))
        assert config.peft.name == "lora"


# ------------------------------------------------------------------ cache keys


class SpecRecorder(BenchmarkModels):
    """The real BenchmarkModels spec code over stubs: records what each stage would be cached under."""

    embedded = True

    def __init__(self, peft: PeftConfig):
        recipe = TrainRecipe()
        self.cfg = SimpleNamespace(
            seed=0, peft=peft, benchmark=SimpleNamespace(target_recipe=recipe, replay_fraction=0)
        )
        self.cfg.model = SimpleNamespace(dtype="float32", max_position_embeddings=64)
        self.store = SimpleNamespace(contains=lambda *_: True)
        self.specs: dict[str, dict] = {}
        self.benchmark = SimpleNamespace(
            clean_items=lambda: None, target_items=lambda: [], oracle_items=lambda: []
        )
        self.benchmark.data_id = lambda which: which
        self.forget_split = "forget10"

    def cached_model(self, stage, kind, spec, build, label=None, trains=False):
        self.specs[stage] = spec
        return ModelRef(Path("/nowhere"), f"key-of-{stage}", label or stage)

    def _announce(self, stage, spec):
        pass

    def training_examples(self, items, what):
        return [{"input_ids": [1], "labels": [1]}]

    def encoding_spec(self):
        return {"encoding": "plain"}

    def data_spec(self):
        return {}

    def instruct(self):
        return ModelRef(Path("/nowhere"), "key-of-instruct", "instruct")


def stage_specs(peft: PeftConfig) -> dict[str, dict]:
    recorder = SpecRecorder(peft)
    recorder.oracle()
    recorder.finetune("forget_vector", recorder.instruct(), FORGET, TrainRecipe(), "forget10")
    unlearn_with_loss(recorder, "npo", NPOConfig(), loss_fn=None, needs_reference=True, use_retain=True)
    return recorder.specs


def test_cache_keys_are_unchanged_without_lora_and_carry_the_lora_config_with_it():
    none = stage_specs(PeftConfig())
    assert not any("peft" in spec for spec in none.values())
    assert set(none) == {"target", "oracle", "forget_vector", "unlearning"}
    lora = stage_specs(PeftConfig(name="lora", r=8))
    # The benchmark's models are untouched unless asked: their keys stay those of peft=none.
    assert lora["target"] == none["target"] and lora["oracle"] == none["oracle"]
    for stage in ("forget_vector", "unlearning"):
        assert {k: v for k, v in lora[stage].items() if k != "peft"} == none[stage]
        assert lora[stage]["peft"]["r"] == 8 and lora[stage]["peft"]["storage"] == "merged"
    factors = stage_specs(PeftConfig(name="lora", vector_storage="factors"))
    assert factors["forget_vector"]["peft"]["storage"] == "factors"
    assert factors["unlearning"]["peft"]["storage"] == "merged"  # evaluated, so always a full model
    asked = stage_specs(PeftConfig(name="lora", apply_to_target_oracle=True))
    for stage in ("target", "oracle"):
        assert asked[stage] == none[stage] | {"peft": asked["forget_vector"]["peft"]}


def test_rmu_steers_the_base_models_module_through_the_peft_wrapper(tokenizer):
    """RMU's module_regex names the base model's modules; under LoRA its hook finds them and the adapters feed it."""
    from msa_bench.methods.rmu import RMUConfig, steered_activations

    model = with_lora(fresh_model(tokenizer), LORA, seed=0)
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(unwrap_model=lambda m: m), method_config=RMUConfig()
    )
    batch = {"input_ids": torch.tensor([[1, 5, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    activations = steered_activations(trainer, model, batch)
    assert activations.shape == (1, 3, 32) and activations.requires_grad


# ------------------------------------------------------------------ the done-when runs (issue 13, "Done when")


@pytest.mark.slow
def test_smoke_runs_with_lora_train_adapters_for_msa_task_vector_and_npo(tmp_path_factory):
    """`msa-bench -m experiment=smoke peft=lora method=msa,task_vector,npo`, job by job: every LoRA stage records
    a positive lora_B norm (lora_B starts at exactly 0), and the target and oracle stay dense."""
    from tests.pipeline_runs import run_job

    cache = tmp_path_factory.mktemp("lora_cache")
    lora_stages = {
        "msa": ("forget_vector", "retain_vector"),
        "task_vector": ("task_vector_finetune",),
        "npo": ("unlearning",),
    }
    for method, stages in lora_stages.items():
        results = run_job(cache, tmp_path_factory.mktemp(f"lora_{method}"), ["peft=lora", f"method={method}"])
        for stage in stages:
            adapters = results["cost"][stage]["lora"]
            assert adapters["lora_B_norm"] > 0 and adapters["adapted_modules"] == 14, (
                method,
                stage,
                adapters,
            )
            assert adapters["storage"] == "merged"
        assert "lora" not in results["cost"]["target"] and "lora" not in results["cost"]["oracle"]
        assert results["metrics"] != results["reference_metrics"]["target"]
