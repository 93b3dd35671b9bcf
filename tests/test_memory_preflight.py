"""Issue 13, item 3 (memory) and Bad input line 2: the recipe's memory options, the memory preflight, OOM messages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, TrainingArguments

import msa_bench.pipeline.benchmark_models as benchmark_models
import msa_bench.pipeline.memory_preflight as memory_preflight
from msa_bench.config.schema import TrainRecipe
from msa_bench.errors import ConfigError, InsufficientMemoryError
from msa_bench.failures import describe_known_failure, remember_failure_context, remember_memory_estimate
from msa_bench.pipeline.memory_preflight import (
    TrainingShape,
    estimate_evaluation,
    estimate_training,
    lora_trainable_parameters,
    model_shape,
    suggested_lora,
)
from msa_bench.pipeline.refs import plain
from msa_bench.training.trainer import memory_arguments
from msa_bench.validation import validate_config
from tests.conftest import compose_config
from tests.stand_in_models import LLAMA32_1B
from tests.tiny_models import tiny_llama

GiB = 2**30


def llama_3_2_1b_config() -> LlamaConfig:
    """The shape of meta-llama/Llama-3.2-1B(-Instruct), from its config.json (offline: no hub here)."""
    return LlamaConfig(**LLAMA32_1B)


@pytest.fixture(scope="module")
def llama_1b():
    return model_shape(llama_3_2_1b_config())


def test_llama_3_2_1b_full_fine_tune_figures(llama_1b):
    # P, counted on the meta device: embeddings 128256·2048 = 262,668,288 (tied with the head, counted once);
    # per layer q 2048², k and v 2048·512 each, o 2048², gate/up/down 3·2048·8192, two norms 2·2048:
    # 4,194,304·2 + 1,048,576·2 + 50,331,648 + 4,096 = 60,821,504; ×16 = 973,144,064; + final norm 2048
    # -> 1,235,814,400 (the 1.236 B of the model card).
    assert llama_1b.n_parameters == 1_235_814_400
    estimate = estimate_training(TrainingShape(llama_1b, "bfloat16", batch_size=8, sequence_length=512))
    parts = estimate.components
    assert parts["weights"] == 2 * 1_235_814_400  # bf16: 2.47 GB
    assert parts["optimizer states"] == 4 * 1_235_814_400  # AdamW's two bf16 states: 4.94 GB
    # Saved per token and layer (bytes): norms 2·(4+2)·2048 = 24,576; attention and MLP internals
    # 2·(4·2048 + 3·8192) = 65,536; projection inputs 2·(3·2048 + 8192) = 28,672 -> 118,784; ×16 layers
    # = 1,900,544; final norm and head input (4+2)·2048 + 2·2048 = 16,384 -> 1,916,928 per token; ×4096 tokens.
    assert parts["activations"] == 4096 * 1_916_928  # 7.85 GB
    assert parts["loss (logits)"] == 4096 * 128256 * 12 == 6_304_038_912  # the 128k vocabulary dominates
    # The backward pass's start (states + activations + loss = 19.10 GB) outweighs the optimizer step
    # (gradients + states + foreach temp = 8·P = 9.89 GB), so the peak is 2.47 + 19.10 = 21.57 GB (20.09 GiB).
    assert estimate.total_bytes == 21_570_662_400


def test_lora_count_by_peft_matches_the_layer_shapes_and_shrinks_the_estimate(llama_1b):
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    counted = lora_trainable_parameters(llama_3_2_1b_config(), 16, targets)
    # r·(in + out) per projection: q 16·4096, k and v 16·2560 each, o 16·4096, gate/up 16·10240 each, down 16·10240
    # = 704,512 per layer; ×16 = 11,272,192.
    assert counted == 11_272_192 == suggested_lora(llama_1b).trainable_parameters
    full = TrainingShape(llama_1b, "bfloat16", batch_size=8, sequence_length=512)
    lora = replace(full, lora=memory_preflight.LoraShape(counted, 16, targets))
    with_lora, without = estimate_training(lora).components, estimate_training(full).components
    assert with_lora["optimizer states"] == 2 * 4 * counted  # float32 adapters: 90 MB instead of 4.94 GB
    assert estimate_training(lora).total_bytes < estimate_training(full).total_bytes - GiB
    # but peft casts each adapted projection's bf16 input to float32 for its adapter, and autograd keeps those
    # copies: on all seven projections, LoRA saves more activations than full fine-tuning (measured with
    # saved-tensor hooks on a small Llama: 40.6 kB against 31.0 kB a token).
    assert with_lora["activations"] > without["activations"]


def test_gradient_checkpointing_shrinks_activations(llama_1b):
    shape = TrainingShape(llama_1b, "bfloat16", batch_size=8, sequence_length=512)
    plain_run = estimate_training(shape).components["activations"]
    checkpointed = estimate_training(replace(shape, gradient_checkpointing=True)).components["activations"]
    # 16 layer inputs (2·2048 bytes a token) + one layer recomputed, instead of 16 layers' activations.
    assert checkpointed == 4096 * (16 * 2 * 2048 + 118_784 + 16_384)
    assert checkpointed < plain_run / 5


def test_eight_bit_adam_and_evaluation_figures(llama_1b):
    shape = TrainingShape(llama_1b, "bfloat16", batch_size=1, sequence_length=128)
    assert (
        estimate_training(replace(shape, optimizer="adamw_8bit")).components["optimizer states"]
        == 2 * 1_235_814_400
    )
    evaluation = estimate_evaluation(
        llama_1b, "bfloat16", batch_size=4, sequence_length=256, max_new_tokens=200
    )
    # scoring: 1024 tokens × 128256 × (2 + 8) + KV cache 1024 × 2·16·512·2 = 1,313,341,440 + 33,554,432
    assert evaluation.components["scoring (logits, KV cache)"] == 1_313_341_440 + 33_554_432
    assert evaluation.components["weights"] == 2 * 1_235_814_400


def _fake_pipeline(cfg, tmp_path: Path, tokenizer):
    """Just enough of a Pipeline for BenchmarkModels.finetuned_model: the store builds straight into a folder."""

    class Fake(benchmark_models.BenchmarkModels):
        embedded = False
        device = "cpu"
        scratch_root = tmp_path

        def encoding_spec(self):
            return {}

        def _announce(self, stage, spec):
            pass

        def tokenizer(self):
            return tokenizer

        def cached_model(self, stage, kind, spec, build, label=None, trains=False):
            build(tmp_path / "out")

    fake = Fake()
    fake.cfg = cfg
    fake.store = SimpleNamespace(root=tmp_path)
    return fake


def test_a_stage_that_cannot_fit_is_refused_before_load_model(tmp_path, monkeypatch):
    tokenizer = SimpleNamespace(pad_token_id=0)
    model = tiny_llama(vocab_size=320)
    model.save_pretrained(tmp_path / "base")
    cfg = validate_config(compose_config(["experiment=smoke"]))
    monkeypatch.setattr(memory_preflight, "_mem_available", lambda: 2**20)  # a device with 1 MiB free
    loaded = []

    class Loaded(Exception):
        pass

    def load_model(*args, **kwargs):
        loaded.append(args)
        raise Loaded

    monkeypatch.setattr(benchmark_models, "load_model", load_model)
    examples = [{"input_ids": list(range(1, 200)), "labels": list(range(1, 200))}] * 4
    base = SimpleNamespace(path=tmp_path / "base", key="k", label="base")
    pipeline = _fake_pipeline(cfg, tmp_path, tokenizer)
    with pytest.raises(InsufficientMemoryError) as refused:
        pipeline.finetuned_model("target", base, examples, cfg.benchmark.target_recipe, {})
    assert loaded == []
    message = str(refused.value)
    assert message.startswith("stage target would need about ")
    assert "and 1.0 MiB is free (weights " in message and "nothing was loaded" in message
    for option in (
        "peft=lora",
        "benchmark.target_recipe.gradient_checkpointing=true",
        "preflight.memory=false",
    ):
        assert option in message, option

    cfg.preflight.memory = False  # the switch skips the refusal; the stage goes on to load its model
    with pytest.raises(Loaded):
        pipeline.finetuned_model("target", base, examples, cfg.benchmark.target_recipe, {})
    assert len(loaded) == 1


def test_the_smaller_batch_option_is_the_largest_that_fits(llama_1b):
    shape = TrainingShape(llama_1b, "bfloat16", batch_size=16, sequence_length=512)
    available = estimate_training(replace(shape, batch_size=5)).total_bytes
    options = dict(memory_preflight.training_options(shape, available, "method.recipe"))
    assert "method.recipe.batch_size=5 with gradient_accumulation_steps × 4 (same effective batch)" in options
    # FSDP shards weights, gradients and optimizer states, not activations: with room for half the states it fits
    full = estimate_training(shape)
    sharded = full.components["weights"] + full.components["optimizer states"]
    options = dict(memory_preflight.training_options(shape, full.total_bytes - sharded // 2, "method.recipe"))
    assert any(option.startswith("FSDP over 2 GPUs") for option in options)
    assert "method.recipe.gradient_checkpointing=true" in options
    assert "method.recipe.optimizer=adamw_8bit (pip install bitsandbytes)" in options


def test_out_of_memory_message_carries_the_estimate_and_options():
    remember_memory_estimate(
        "the memory preflight estimated 20.1 GiB for stage target (weights 2.3 GiB); options: peft=lora"
    )
    try:
        error = torch.OutOfMemoryError("CUDA out of memory.")
        remember_failure_context(error, stage="stage 3 of 6 (target)", batch_size=16)
        message = describe_known_failure(error)
    finally:
        remember_memory_estimate(None)
    assert "at batch size 16; the memory preflight estimated 20.1 GiB for stage target" in message
    assert "gradient_checkpointing=true" in message and "peft=lora" in message and "FSDP" in message


def test_default_recipe_trains_with_the_arguments_used_before_the_options():
    assert memory_arguments(TrainRecipe(), "cpu") == {"optim": "adamw_torch", "bf16": False, "fp16": False}
    before = TrainingArguments(output_dir="/tmp/x", optim="adamw_torch", use_cpu=True, report_to="none")
    now = TrainingArguments(
        output_dir="/tmp/x", use_cpu=True, report_to="none", **memory_arguments(TrainRecipe(), "cpu")
    )
    assert before.to_dict() == now.to_dict()


def test_recipe_options_reach_training_arguments():
    recipe = TrainRecipe(gradient_checkpointing=True, optimizer="adamw_torch_fused", mixed_precision="bf16")
    args = TrainingArguments(
        output_dir="/tmp/x", use_cpu=True, report_to="none", **memory_arguments(recipe, "cpu")
    )
    assert args.activation_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.optim == "adamw_torch_fused" and args.bf16 is True
    assert memory_arguments(TrainRecipe(optimizer="adamw_8bit"), "cuda")["optim"] == "adamw_bnb_8bit"
    with pytest.raises(ConfigError, match="need a CUDA GPU"):
        memory_arguments(TrainRecipe(mixed_precision="fp16"), "cpu")


def test_gradient_checkpointing_trains_the_same_loss(tmp_path):
    from msa_bench.training.data import ExampleDataset
    from msa_bench.training.trainer import run_training

    examples = [
        {
            "input_ids": [1 + (i * 7 + j) % 300 for j in range(24)],
            "labels": [1 + (i * 7 + j) % 300 for j in range(24)],
        }
        for i in range(8)
    ]
    losses = []
    for checkpointing in (False, True):
        recipe = TrainRecipe(epochs=2, batch_size=4, learning_rate=1e-3, gradient_checkpointing=checkpointing)
        stats = run_training(
            tiny_llama(vocab_size=320),
            ExampleDataset(examples),
            recipe,
            pad_token_id=0,
            seed=0,
            device="cpu",
            progress=False,
            scratch_root=tmp_path,
        )
        losses.append(stats.final_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_default_memory_options_leave_cache_keys_unchanged():
    before = {
        "epochs",
        "learning_rate",
        "batch_size",
        "gradient_accumulation_steps",
        "weight_decay",
        "warmup_ratio",
        "lr_scheduler",
        "max_grad_norm",
    }
    assert set(plain(TrainRecipe())) == before
    assert plain(TrainRecipe(gradient_checkpointing=True))["gradient_checkpointing"] is True
    assert plain(TrainRecipe(optimizer="adamw_torch_fused"))["optimizer"] == "adamw_torch_fused"
    cfg = validate_config(compose_config(["experiment=smoke"]))
    assert "optimizer" not in plain(cfg.model)["instruct"]  # nested recipes too (the history's key)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("benchmark.target_recipe.optimizer=sgd", "benchmark.target_recipe.optimizer='sgd' is not valid"),
        ("model.instruct.mixed_precision=fp8", "model.instruct.mixed_precision='fp8' is not valid"),
        (
            "benchmark.target_recipe.mixed_precision=fp16",
            "benchmark.target_recipe.mixed_precision=fp16 needs a CUDA GPU",
        ),
        ("+method.forget_recipe={optimizer: adamw_8bit}", "method.forget_recipe.optimizer=adamw_8bit"),
    ],
)
def test_invalid_memory_options_name_the_key(override, expected):
    overrides = ["experiment=smoke", "device=cpu", override]
    with pytest.raises(ConfigError) as invalid:
        validate_config(compose_config(overrides))
    assert expected in str(invalid.value)


def test_a_cgroup_limit_below_the_hosts_free_memory_is_what_a_cpu_stage_gets(tmp_path, monkeypatch):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    files = ((str(limit), str(usage)),)
    limit.write_text("max\n")
    usage.write_text("123\n")
    assert memory_preflight.cgroup_memory_left(files) is None  # no limit set
    limit.write_text(f"{4 * 2**30}\n")
    usage.write_text(f"{3 * 2**30}\n")
    assert memory_preflight.cgroup_memory_left(files) == 2**30
    assert memory_preflight.cgroup_memory_left(((str(tmp_path / "absent"), str(usage)),)) is None
    # A Slurm --mem of 4 GiB with 3 GiB used leaves 1 GiB, whatever the host has free.
    monkeypatch.setattr(memory_preflight, "_mem_available", lambda: 64 * 2**30)
    monkeypatch.setattr(memory_preflight, "_CGROUP_FILES", files)
    available, where = memory_preflight.available_memory("cpu")
    assert available == 2**30 and "cgroup" in where
