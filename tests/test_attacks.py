"""The `attacks` config group, the relearning data's disjointness, and the attacks on a smoke run (docs/attacks.md)."""

from __future__ import annotations

import json

import pytest

from msa_bench.attacks.stages import refuse_overlap
from msa_bench.benchmarks.base import RelearningData
from msa_bench.data.overlap import shingles
from msa_bench.errors import AttackError, BenchmarkError, ConfigError
from msa_bench.pipeline.artifacts import ArtifactStore
from msa_bench.pipeline.stages import Pipeline
from msa_bench.validation import validate_config
from tests.benchmark_fixtures import write_tiny_muse, write_tiny_tofu
from tests.conftest import compose_config
from tests.pipeline_runs import run_job

CPU_ATTACKS = [
    "quantize_int8",
    "quantize_int4",
    "relearn_forget_10",
    "relearn_forget_50",
    "relearn_retain_10",
    "relearn_retain_50",
    "leak_at_k",
]


def test_standard_holds_every_cpu_attack_and_options_combine(tmp_path):
    standard = validate_config(compose_config(["attacks=standard", "logger=none"], tmp_path)).attacks
    assert standard.names() == CPU_ATTACKS
    assert standard.relearning["relearn_retain_50"].data == "retain"
    assert standard.relearning["relearn_retain_50"].steps == 50
    combined = validate_config(
        compose_config(["attacks=[quantize_int4,leak_at_k]", "logger=none"], tmp_path)
    ).attacks
    assert combined.names() == ["quantize_int4", "leak_at_k"]
    assert validate_config(compose_config(["logger=none"], tmp_path)).attacks.names() == []


def test_bitsandbytes_attacks_without_cuda_name_the_cpu_alternatives(tmp_path):
    cfg = compose_config(["attacks=quantize_nf4", "device=cpu", "logger=none"], tmp_path)
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    message = str(error.value)
    assert "attacks.quantization.quantize_nf4.scheme=nf4" in message and "CUDA" in message
    assert "attacks=quantize_int8" in message and "attacks=quantize_int4" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "attacks.relearning.relearn_forget_10.fraction=1.0",
            "relearn_forget_10.fraction=1.0 must be between",
        ),
        ("attacks.relearning.relearn_forget_10.steps=0", "relearn_forget_10.steps=0 must be >= 1"),
        ("attacks.relearning.relearn_forget_10.data=holdout", "data='holdout' is not valid"),
        ("attacks.sampling.leak_at_k.k=0", "leak_at_k.k=0 must be >= 1"),
        (
            "attacks.sampling.leak_at_k.temperature=0",
            "greedy decodes (temperature=0) are all the same answer",
        ),
        ("attacks.sampling.leak_at_k.top_p=0", "top_p=0.0 must be in (0, 1]"),
        ("attacks.quantization.quantize_int4.scheme=int3", "scheme='int3' is not valid"),
    ],
)
def test_bad_attack_settings_name_their_key(tmp_path, override, expected):
    cfg = compose_config(["attacks=standard", override, "logger=none"], tmp_path)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate_config(cfg)


def _tofu_benchmark(tmp_path):
    data = write_tiny_tofu(tmp_path / "tofu")
    overrides = [
        "benchmark=tofu",
        f"benchmark.data_dir={data}",
        "benchmark.forget_split=forget10",
        "logger=none",
    ]
    config = validate_config(compose_config(["experiment=smoke", *overrides], tmp_path))
    return Pipeline(config, ArtifactStore(tmp_path / "cache"), "cpu").benchmark


def test_tofu_relearning_data_are_disjoint_from_what_is_evaluated(tmp_path):
    benchmark = _tofu_benchmark(tmp_path)
    forget = benchmark.relearning_data("forget", 0.25, seed=3)
    retain = benchmark.relearning_data("retain", 0.25, seed=3)
    n_forget = len(benchmark.forget_items())
    assert len(forget.items) == len(retain.items) == round(0.25 * n_forget)
    # Both attacks leave out the same forget items, so they are read on the same ones.
    assert forget.excluded_questions == retain.excluded_questions == {x["question"] for x in forget.items}
    eval_sets = benchmark.without_relearned(
        benchmark.eval_sets({"forget", "retain"}), forget.excluded_questions
    )
    assert len(eval_sets["forget"]) == n_forget - len(forget.items)
    evaluated = {item["question"] for items in eval_sets.values() for item in items}
    assert not evaluated & {x["question"] for x in forget.items + retain.items}
    refuse_overlap("relearn_forget_10", forget, eval_sets)  # nothing overlaps: no error
    refuse_overlap("relearn_retain_10", retain, eval_sets)
    # Seeded: the same seed draws the same items, another seed others.
    assert benchmark.relearning_data("forget", 0.25, seed=3).items == forget.items
    assert benchmark.relearning_data("forget", 0.25, seed=4).items != forget.items


def _data(items, ignored=frozenset()):
    return RelearningData(items, "test", frozenset(), f"{len(items)} test items", "every eval item", ignored)


def test_relearning_data_that_overlap_an_evaluated_item_are_refused(tmp_path):
    benchmark = _tofu_benchmark(tmp_path)
    eval_sets = benchmark.eval_sets({"forget", "retain"})
    duplicate = dict(eval_sets["forget"][2])
    with pytest.raises(AttackError, match=r"attack relearn_retain_10: .*eval set 'forget' item 2"):
        refuse_overlap(
            "relearn_retain_10", _data([{"question": "unrelated?", "answer": "x"}, duplicate]), eval_sets
        )
    # A question inside an evaluated prompt (the MUSE-format sets built from QA) overlaps too.
    prompt_sets = {
        "muse_verbmem_forget": [{"prompt": f"Question: {duplicate['question']}\nAnswer:", "gt": "a"}]
    }
    with pytest.raises(AttackError, match="muse_verbmem_forget"):
        refuse_overlap("relearn_forget_10", _data([duplicate]), prompt_sets)
    # An article holding an evaluated passage that starts mid-article, with other whitespace, overlaps.
    body = " ".join(f"word{k}" for k in range(40))
    muse_sets = {"muse_privleak_forget": [{"text": body[100:]}]}
    article = {"text": "An earlier story ends here. " + body.replace(" ", "\n  ", 5)}
    with pytest.raises(AttackError, match="muse_privleak_forget"):
        refuse_overlap("relearn_forget_10", _data([article]), muse_sets)
    # ... but sharing only boilerplate is not overlap.
    refuse_overlap("relearn_forget_10", _data([article], ignored=shingles(body)), muse_sets)


def test_tofu_relearning_leaves_the_relearned_questions_out_of_muse_format_sets(tmp_path):
    benchmark = _tofu_benchmark(tmp_path)
    forget = benchmark.relearning_data("forget", 0.25, seed=0)
    sets = {
        "muse_verbmem_forget": [
            {"prompt": f"Question: {x['question']}\nAnswer:", "gt": x["answer"]}
            for x in benchmark.forget_items()
        ]
    }
    narrowed = benchmark.without_relearned(sets, forget.excluded_questions)
    assert len(narrowed["muse_verbmem_forget"]) == len(benchmark.forget_items()) - len(forget.items)
    refuse_overlap("relearn_forget_10", forget, narrowed)


def test_muse_relearns_only_articles_that_share_no_passage_with_an_evaluated_item(tmp_path):
    data = write_tiny_muse(tmp_path / "muse")
    articles = json.loads((data / "raw" / "forget.json").read_text())
    notice = "This video can not be played. To play this video you need to enable JavaScript in your browser."
    unevaluated = [
        f"{notice} An unrelated story number {k} about the weather in the north. " * 4 for k in range(6)
    ]
    # An evaluated article's body, behind another article's end: held, although it does not start the text.
    spliced = "A story about the harbour ends here. " + articles[0][30:]
    (data / "raw" / "forget.json").write_text(json.dumps(articles + unevaluated + [spliced]))
    overrides = ["benchmark=muse_news", "metrics=muse", f"benchmark.data_dir={data}", "logger=none"]
    config = validate_config(compose_config(["experiment=smoke", *overrides], tmp_path))
    benchmark = Pipeline(config, ArtifactStore(tmp_path / "cache"), "cpu").benchmark
    # The evaluated items carry the notice too: as boilerplate (in most articles) it is not shared content.
    relearning = benchmark.relearning_data("forget", 0.5, seed=0)
    assert len(relearning.items) == 6  # half of 13 articles, drawn from the 6 unevaluated ones
    assert all(item["text"] in unevaluated for item in relearning.items)
    assert relearning.excluded_questions == frozenset()  # every eval item stays evaluated
    refuse_overlap("relearn_forget_10", relearning, benchmark.eval_sets(set(benchmark.default_eval_sets)))
    with pytest.raises(BenchmarkError, match="relearning needs 9 forget articles sharing no passage"):
        benchmark.relearning_data("forget", 0.7, seed=0)


def test_relearning_that_cannot_be_drawn_fails_before_any_training_naming_the_key(tmp_path):
    data = write_tiny_muse(tmp_path / "muse")  # every forget article is evaluated: none can be relearned
    with pytest.raises(AttackError, match=r"attack relearn_forget_10 \(attacks.relearning.relearn_forget_10"):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            [
                "benchmark=muse_news",
                "metrics=muse",
                f"benchmark.data_dir={data}",
                "attacks=relearn_forget_10",
            ],
        )
    assert not (tmp_path / "cache" / "history").exists()


def test_an_int4_group_that_does_not_divide_the_model_fails_before_any_training(tmp_path):
    with pytest.raises(AttackError, match=r"group_size=48 does not divide model.hidden_size=64"):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            ["attacks=quantize_int4", "attacks.quantization.quantize_int4.group_size=48"],
        )
    assert not (tmp_path / "cache" / "history").exists()


@pytest.mark.slow
def test_attacks_on_a_smoke_run_give_every_model_attack_metrics(tmp_path):
    results = run_job(
        tmp_path / "cache",
        tmp_path / "run",
        [
            "method=grad_ascent",
            "attacks=[quantize_int4,relearn_forget_10,leak_at_k]",
            "attacks.sampling.leak_at_k.k=2",
        ],
    )
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    records = on_disk["attacks"]
    assert set(records) == {"quantize_int4", "relearn_forget_10", "leak_at_k"}
    assert all(record["skipped"] is None for record in records.values())
    sizes = records["quantize_int4"]["model_size_bytes"]
    assert set(sizes) == {"method", "target", "oracle"}
    assert all(0 < size < records["quantize_int4"]["full_size_bytes"] for size in sizes.values())
    expected = [
        "attack/quantize_int4/forget_Q_A_Prob",
        "attack/quantize_int4/model_utility",
        "attack/quantize_int4/forget_quality",
        "attack/relearn_forget_10/forget_Q_A_Prob",
        "attack/relearn_forget_10/unattacked/forget_Q_A_Prob",
        "attack/leak_at_k/forget_Q_A_ROUGE",
    ]
    for values in (on_disk["metrics"], *on_disk["reference_metrics"].values()):
        assert all(isinstance(values[key], float) for key in expected)
    # Against the oracle under the same attack, the attacked oracle is the reference: its forget quality is 1.
    assert on_disk["reference_metrics"]["oracle"]["attack/quantize_int4/forget_quality"] == pytest.approx(1.0)
    # The attacked models differ from the unattacked ones.
    method = on_disk["metrics"]
    assert method["attack/quantize_int4/forget_Q_A_Prob"] != method["forget_Q_A_Prob"]
    assert (
        method["attack/relearn_forget_10/forget_Q_A_Prob"]
        != method["attack/relearn_forget_10/unattacked/forget_Q_A_Prob"]
    )
    for stage in (
        "attack:quantize_int4:method",
        "attack:relearn_forget_10:oracle",
        "eval:target [leak_at_k]",
    ):
        assert stage in results["cost"]
