"""The paper experiments' recipes, prompts, generation lengths and retain subsets (issue 13, item 4).

"Embedded-model learning rate", as this file checks it: a learning rate at or above the smallest one that any
embedded-scale default uses. Those defaults are the recipes of conf/method/*.yaml, the target (and clean) recipes of
conf/benchmark/*.yaml (but muse_books, written for OLMo-2-7B), the TrainRecipe default and the embedded model's own pretraining and instruct recipes; they
are collected here from the configs, not written down, so that a new default cannot slip under the bar. Today the
smallest is 1e-4 (rmu, undial), and every paper-scale full fine-tune in the MSA code and open-unlearning uses 1e-5
(2e-5 at most: SatImp on Phi-1.5), an order of magnitude below it.
"""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from msa_bench.config.schema import EmbeddedModelConfig, TrainRecipe
from msa_bench.validation import ConfigError, validate_config
from tests.conftest import CONFIG_DIR, compose_config

PAPER_EXPERIMENTS = sorted(f"paper/{p.stem}" for p in (CONFIG_DIR / "experiment" / "paper").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
# Methods that train nothing of their own: target (θ_D itself) and oracle (benchmark.target_recipe on the retain split,
# checked as part of every composition below).
METHODS_WITHOUT_A_RECIPE = {"target", "oracle"}
# Benchmark configs written for the paper's models, not the embedded one: MUSE-Books (copyrighted, not in
# ../shared/data, run only by paper/muse_books_olmo2_7b) trains its target at OLMo-2's 1e-5.
PAPER_SCALE_BENCHMARKS = {"muse_books"}


def training_recipes(node, path: str = "") -> dict[str, dict]:
    """Every recipe (a mapping with a learning_rate) in a resolved config container, by dotted key."""
    found = {}
    if isinstance(node, dict):
        if "learning_rate" in node:
            found[path] = node
        for key, value in node.items():
            found |= training_recipes(value, f"{path}.{key}" if path else str(key))
    return found


def resolved(overrides: list[str], tmp_path) -> dict:
    return OmegaConf.to_container(compose_config(overrides, output_dir=tmp_path), resolve=True)


def embedded_learning_rates(tmp_path) -> dict[str, float]:
    rates = {"TrainRecipe()": TrainRecipe().learning_rate}
    embedded = EmbeddedModelConfig()
    rates |= {"model.pretrain.recipe": embedded.pretrain.recipe.learning_rate}
    rates |= {"model.instruct": embedded.instruct.learning_rate}
    for method in METHODS:
        for key, recipe in training_recipes(resolved([f"method={method}"], tmp_path)["method"]).items():
            rates[f"conf/method/{method}.yaml {key}"] = recipe["learning_rate"]
    for benchmark in sorted(p.stem for p in (CONFIG_DIR / "benchmark").glob("*.yaml")):
        if benchmark in PAPER_SCALE_BENCHMARKS:
            continue
        composed = resolved([f"benchmark={benchmark}"], tmp_path)["benchmark"]
        for key, recipe in training_recipes(composed).items():
            rates[f"conf/benchmark/{benchmark}.yaml {key}"] = recipe["learning_rate"]
    return rates


def effective_recipes(config: dict) -> dict[str, dict]:
    """The recipes a run of `config` trains with: a method recipe left null inherits benchmark.target_recipe (MSA's
    vectors, task arithmetic's fine-tune); the clean recipe trains only the embedded model (Pipeline.closest: a
    pretrained model is its own clean model), so it is left out for a pretrained one."""
    recipes = training_recipes(config)
    method = config["method"]
    for key in ("recipe", "forget_recipe", "retain_recipe"):
        if key in method and method[key] is None:
            recipes[f"method.{key} (= benchmark.target_recipe)"] = config["benchmark"]["target_recipe"]
    if config["model"]["source"] == "pretrained":
        recipes.pop("benchmark.clean_recipe", None)
    return recipes


def test_no_paper_experiment_trains_any_method_at_an_embedded_learning_rate(monkeypatch, tmp_path):
    monkeypatch.setenv("MSA_BENCH_DATA", str(tmp_path))
    rates = embedded_learning_rates(tmp_path)
    bar = min(rates.values())
    assert bar >= 1e-4, (
        f"an embedded default trains at {bar}: {rates}"
    )  # the definition above still separates
    failures = []
    for experiment in PAPER_EXPERIMENTS:
        for method in METHODS:
            config = resolved([f"experiment={experiment}", f"method={method}"], tmp_path)
            for key, recipe in effective_recipes(config).items():
                if not 0 < recipe["learning_rate"] < bar:
                    failures.append(f"experiment={experiment} method={method}: {key}.learning_rate={recipe}")
    assert not failures, f"embedded-model learning rates (>= {bar}):\n" + "\n".join(failures)


def test_every_paper_experiment_has_a_cited_recipe_for_every_training_method():
    missing, uncited = [], []
    for experiment in PAPER_EXPERIMENTS:
        for method in sorted(set(METHODS) - METHODS_WITHOUT_A_RECIPE):
            path = CONFIG_DIR / "recipe" / experiment / f"{method}.yaml"
            if not path.is_file():
                missing.append(str(path.relative_to(CONFIG_DIR)))
            elif not any(source in path.read_text() for source in ("open-unlearning", "MSA_unlearning")):
                uncited.append(str(path.relative_to(CONFIG_DIR)))
    assert not missing and not uncited, f"missing: {missing}; no source named: {uncited}"


def test_the_method_on_the_command_line_picks_its_paper_recipe_and_a_user_override_wins(tmp_path):
    npo = validate_config(compose_config(["experiment=paper/tofu_llama32_1b", "method=npo"], tmp_path))
    assert npo.method.recipe.learning_rate == 1e-5 and npo.method.beta == 0.1
    assert npo.method.recipe.batch_size * npo.method.recipe.gradient_accumulation_steps == 32
    satimp = validate_config(compose_config(["experiment=paper/tofu_llama32_1b", "method=satimp"], tmp_path))
    assert satimp.method.recipe.epochs == 5 and satimp.method.beta1 == 5.0
    overridden = validate_config(
        compose_config(
            [
                "experiment=paper/tofu_llama32_1b",
                "method=npo",
                "method.recipe.learning_rate=3e-5",
                "method.beta=0.2",
            ],
            tmp_path,
        )
    )
    assert overridden.method.recipe.learning_rate == 3e-5 and overridden.method.beta == 0.2
    # Outside the paper experiments the embedded defaults are untouched.
    assert validate_config(compose_config(["method=npo"], tmp_path)).method.recipe.learning_rate == 2e-4


@pytest.mark.parametrize(
    ("model", "system_prompt", "date"),
    [
        ("llama32_1b_instruct", "You are a helpful assistant.", "10 Apr 2025"),
        ("llama31_8b_instruct", "You are a helpful assistant.", "26 Jul 2024"),
    ],
)
def test_llama_models_prompt_as_the_paper_code_with_a_pinned_date(model, system_prompt, date, tmp_path):
    prompt = validate_config(compose_config([f"model={model}"], tmp_path)).model.prompt
    assert (prompt.format, prompt.system_prompt, prompt.date_string) == ("chat", system_prompt, date)


def test_olmo2_is_a_base_model_prompted_in_plain_format(tmp_path):
    prompt = validate_config(compose_config(["model=olmo2_7b"], tmp_path)).model.prompt
    assert prompt.format == "plain" and prompt.system_prompt is None


@pytest.mark.parametrize(
    "experiment", ["paper/tofu_llama32_1b", "paper/checkpoint_distance_olmo2", "cpu/tofu"]
)
def test_tofu_experiments_generate_open_unlearnings_200_tokens(experiment, monkeypatch, tmp_path):
    monkeypatch.setenv("MSA_BENCH_DATA", str(tmp_path))
    assert (
        validate_config(compose_config([f"experiment={experiment}"], tmp_path)).metrics.max_new_tokens == 200
    )


def test_the_muse_experiment_generates_open_unlearnings_lengths(monkeypatch, tmp_path):
    monkeypatch.setenv("MSA_BENCH_DATA", str(tmp_path))
    muse = validate_config(compose_config(["experiment=paper/muse_books_olmo2_7b"], tmp_path)).metrics.muse
    assert (muse.verbmem_max_new_tokens, muse.knowmem_max_new_tokens) == (128, 32)


def test_every_paper_experiment_lists_its_deviations_from_the_paper_code():
    for experiment in PAPER_EXPERIMENTS:
        text = (CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text()
        header = text[: text.index("defaults:")]
        assert "Deviations from the paper's code" in header, experiment


# --- the retain subset ---------------------------------------------------------------------------------------------


def test_the_shuffle_draw_is_datasets_shuffle_with_seed_42_then_the_first_items():
    from datasets import Dataset

    from msa_bench.data.retain_draw import draw_retain_indices

    for pool_size, size in [(3600, 360), (3800, 190), (3600, 36)]:
        expected = Dataset.from_dict({"index": list(range(pool_size))}).shuffle(seed=42)["index"][:size]
        assert draw_retain_indices("shuffle", pool_size, size, 42) == list(expected)
    # Pinned: the first retain90 rows the MSA code's retain vector trains on.
    assert draw_retain_indices("shuffle", 3600, 360, 42)[:8] == [470, 1163, 1467, 2053, 2556, 1606, 409, 1205]


def test_retain_fractions_give_the_paper_codes_sizes_and_the_default_is_unchanged():
    import random

    from msa_bench.data.retain_draw import draw_retain_indices, retain_subset_size

    assert [retain_subset_size(None, f, n, 0) for f, n in [(0.1, 3600), (0.05, 3800), (0.01, 3600)]] == [
        360,
        190,
        36,
    ]
    assert retain_subset_size(None, None, 3600, 400) == 400  # default: the forget set's size
    assert draw_retain_indices("sample", 3600, 400, 0) == sorted(random.Random(0).sample(range(3600), 400))


def test_the_paper_tofu_experiment_draws_360_retain90_items_as_the_code(monkeypatch, tmp_path):
    from msa_bench.data.retain_draw import draw_retain_indices
    from msa_bench.data.tofu_splits import load_benchmark_split
    from msa_bench.pipeline.artifacts import ArtifactStore
    from msa_bench.pipeline.stages import Pipeline
    from tests.benchmark_fixtures import write_tiny_tofu

    write_tiny_tofu(tmp_path / "tofu")
    monkeypatch.setenv("MSA_BENCH_DATA", str(tmp_path))
    config = validate_config(compose_config(["experiment=paper/tofu_llama32_1b"], tmp_path))
    method = config.method
    assert (method.retain_split, method.retain_fraction, method.retain_draw, method.retain_seed) == (
        "retain90",
        0.1,
        "shuffle",
        42,
    )
    pipeline = Pipeline(config, ArtifactStore(tmp_path / "cache"), "cpu")
    items, data_id = pipeline.retain_subset(
        None, 42, fraction=method.retain_fraction, split=method.retain_split, draw=method.retain_draw
    )
    pool = load_benchmark_split(tmp_path / "tofu", "retain90")
    size = int(len(pool) * 0.1)

    assert items == [pool[i] for i in draw_retain_indices("shuffle", len(pool), size, 42)]
    assert data_id == f"retain90[{size} of {len(pool)}, shuffle seed 42]"


def test_retain_size_and_fraction_together_are_refused_naming_both_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"method.retain_size=10 and method.retain_fraction=0.1"):
        validate_config(compose_config(["method.retain_size=10", "method.retain_fraction=0.1"], tmp_path))


# --- generation at the context limit --------------------------------------------------------------------------------


def test_generation_is_capped_at_the_context_limit_with_a_warning(caplog):
    from msa_bench.metrics.core.decoding import greedy_decode
    from tests.tiny_models import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer(["the cat sat on the mat", "a dog ran in the park"])
    model = tiny_llama(len(tokenizer), tokenizer=tokenizer, max_position_embeddings=24).eval()
    model.generation_config.eos_token_id = None  # never stop early: every row runs into the limit
    tokenizer_eos = tokenizer.eos_token_id
    prompts = [[5, 6, 7, 8] * 4, [9, 10, 11]]  # 16 and 3 tokens
    with caplog.at_level(logging.WARNING, logger="msa_bench.metrics.core.decoding"):
        generations = greedy_decode(model, tokenizer, prompts, max_new_tokens=200, batch_size=1)
    assert "generation capped at 8 new tokens (max_new_tokens=200): a prompt of 16 tokens" in caplog.text
    assert (
        "context of 24 positions" in caplog.text
        and "capped by the context length in 2 batches" in caplog.text
    )
    # Nothing past the context was generated: prompt + continuation <= 24 positions per row.
    assert generations.tokens_processed <= 2 * 24
    assert tokenizer.eos_token_id == tokenizer_eos
    # A prompt that fills the context alone gets an empty answer, not an error.
    assert greedy_decode(model, tokenizer, [[5] * 24], max_new_tokens=4).texts == [""]
