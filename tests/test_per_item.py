"""per_item.json as `PerItemRecords`: values placed on their eval set's items, everything else kept apart with why."""

from __future__ import annotations

import json

import pytest

from msa_bench.data.muse import KNOWMEM_FORGET, KNOWMEM_FORGET_ICL, PRIVLEAK_FORGET, PRIVLEAK_HOLDOUT
from msa_bench.errors import ReportError
from msa_bench.results import PER_ITEM_SCHEMA_VERSION, PerItemRecords, build_per_item_records
from msa_bench.results.item_sets import eval_set_of

FORGET = [
    {"question": "Where was Ann born?", "answer": "In Oslo.", "subject": "Ann", "attribute": "birthplace"},
    {"question": "What does Ann write?", "answer": "Poems.", "subject": "Ann", "attribute": "genre"},
]
HOLDOUT = [{"question": f"Holdout {i}?", "answer": f"H{i}."} for i in range(2)]
RETAIN = [{"question": f"Retain {i}?", "answer": f"R{i}."} for i in range(3)]


def tofu_evaluation(shift: float, generation: str) -> dict:
    return {
        "metrics": {"forget_truth_ratio": 0.5},
        "per_item": {
            "forget_truth_ratio": [0.1 + shift, 0.2 + shift],
            "forget_Q_A_ROUGE": [1.0, 0.5],
            "mia_loss_forget": [2.0 + shift, 3.0],
            "mia_loss_holdout": [4.0, 5.0 + shift],
            "retain_Q_A_Prob": [0.9, 0.8, 0.7],
        },
        "generations": {"forget": [f"{generation} 0", f"{generation} 1"], "retain": ["a", "b", "c"]},
    }


@pytest.fixture
def records() -> PerItemRecords:
    evaluations = {
        "method": tofu_evaluation(0.0, "method"),
        "target": tofu_evaluation(1.0, "target"),
        "oracle": tofu_evaluation(2.0, "oracle"),
    }
    eval_sets = {"forget": FORGET, "holdout": HOLDOUT, "retain": RETAIN}
    return build_per_item_records("msa", evaluations, eval_sets, suites=["tofu"])


def test_each_item_holds_its_question_truth_and_every_models_output(records):
    assert list(records.eval_sets) == ["forget", "holdout", "retain"]
    second = records.eval_sets["forget"][1]
    assert second.id == "forget/1"
    assert (second.question, second.ground_truth) == ("What does Ann write?", "Poems.")
    assert second.data_keys == {"subject": "Ann", "attribute": "genre"}
    for role, shift in (("method", 0.0), ("target", 1.0), ("oracle", 2.0)):
        output = second.outputs[role]
        assert output.generation == f"{role} 1"
        assert output.values == {
            "forget_truth_ratio": 0.2 + shift,
            "forget_Q_A_ROUGE": 0.5,
            "mia_loss_forget": 3.0,
        }
    holdout = records.eval_sets["holdout"][1]
    assert holdout.outputs["oracle"].values == {"mia_loss_holdout": 7.0}
    assert holdout.outputs["oracle"].generation is None  # the suite generated nothing on the holdout set
    assert records.unaligned == []


def test_values_are_gathered_back_in_item_order(records):
    assert records.values("target", "forget_truth_ratio") == [1.1, 1.2]
    assert records.values("oracle", "mia_loss_holdout") == [4.0, 7.0]
    assert records.values("method", "no_such_metric") == []


def test_records_survive_writing_and_reading(records, tmp_path):
    path = tmp_path / "per_item.json"
    records.write(path)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == PER_ITEM_SCHEMA_VERSION
    first = on_disk["eval_sets"]["forget"][0]
    assert first["question"] == "Where was Ann born?" and first["ground_truth"] == "In Oslo."
    assert first["target"] == {
        "generation": "target 0",
        "values": {"forget_truth_ratio": 0.1 + 1.0, "forget_Q_A_ROUGE": 1.0, "mia_loss_forget": 3.0},
    }
    assert PerItemRecords.read(path) == records


def test_values_that_do_not_line_up_with_the_items_are_kept_apart_with_the_reason():
    evaluation = {
        "per_item": {
            "forget_truth_ratio": [0.1],  # one value for two items
            "lm_eval/hellaswag/acc": [1.0, 0.0],  # a built-in task: its documents are no eval set's items
            "world_facts_unknown": [1.0, 2.0],
            "wf_Q_A_ROUGE": [0.5, 0.5],  # on world_facts, which was not loaded
        },
        "generations": {"forget": ["only one"]},
    }
    records = build_per_item_records(
        "msa", {"method": evaluation}, {"forget": FORGET}, suites=["tofu", "lm_eval"]
    )
    assert records.eval_sets == {}
    reasons = {entry.key: entry.reason for entry in records.unaligned}
    assert reasons == {
        "forget_truth_ratio": "1 values for the 2 items of 'forget'",
        "lm_eval/hellaswag/acc": "no evaluated suite says which eval set these values are on",
        "world_facts_unknown": "no evaluated suite says which eval set these values are on",
        "wf_Q_A_ROUGE": "they are on the eval set 'world_facts', which was not loaded",
        "generations/forget": "1 values for the 2 items of 'forget'",
    }
    # Kept, not lost: the report still finds them.
    assert records.values("method", "forget_truth_ratio") == [0.1]


def test_each_suite_places_its_own_keys():
    assert eval_set_of("forget_truth_ratio", ["tofu"]) == "forget"
    assert eval_set_of("ra_Q_A_Prob_normalised", ["tofu"]) == "real_authors"
    assert eval_set_of("mia_min_k_holdout", ["tofu"]) == "holdout"
    assert eval_set_of("mia_min_k", ["tofu"]) is None  # an AUC over two sets has no per-item list of its own
    assert eval_set_of("forget_knowmem_ROUGE", ["muse"]) == KNOWMEM_FORGET != KNOWMEM_FORGET_ICL
    assert eval_set_of("forget_knowmem_rougeL_recall", ["muse"]) == KNOWMEM_FORGET
    assert eval_set_of("muse_mia_zlib_forget", ["muse"]) == PRIVLEAK_FORGET
    assert eval_set_of("muse_mia_zlib_holdout", ["muse"]) == PRIVLEAK_HOLDOUT
    assert eval_set_of("restor_accuracy", ["restor"]) == "restor_questions"
    assert eval_set_of("lm_eval/msa_world_facts_mc/acc", ["lm_eval"]) == "world_facts"
    assert eval_set_of("lm_eval/msa_real_authors_mc/choice", ["lm_eval"]) == "real_authors"
    # Only the suites that were evaluated are asked.
    assert eval_set_of("forget_truth_ratio", ["muse"]) is None


def test_muse_items_take_their_prompt_and_continuation():
    verbmem = [{"prompt": "Once upon", "gt": " a time"}]
    evaluation = {
        "per_item": {"forget_verbmem_ROUGE": [0.4]},
        "generations": {"muse_verbmem_forget": [" a day"]},
    }
    records = build_per_item_records(
        "msa", {"method": evaluation}, {"muse_verbmem_forget": verbmem}, ["muse"]
    )
    (record,) = records.eval_sets["muse_verbmem_forget"]
    assert (record.question, record.ground_truth, record.outputs["method"].generation) == (
        "Once upon",
        " a time",
        " a day",
    )


def test_version_0_files_are_read_with_every_list_unaligned(tmp_path):
    path = tmp_path / "per_item.json"
    old = {
        "method": {"forget_truth_ratio": [0.2, 0.5]},
        "target": {"forget_truth_ratio": [0.1]},
        "oracle": {},
        "generations": {"forget": ["x", "y"]},
    }
    path.write_text(json.dumps(old))
    records = PerItemRecords.read(path)
    assert records.eval_sets == {}
    assert records.values("method", "forget_truth_ratio") == [0.2, 0.5]
    assert records.values("target", "forget_truth_ratio") == [0.1]
    assert records.values("method", "generations/forget") == ["x", "y"]


def test_a_newer_per_item_file_is_refused(tmp_path):
    path = tmp_path / "per_item.json"
    path.write_text(
        json.dumps({"schema_version": PER_ITEM_SCHEMA_VERSION + 1, "method": "msa", "eval_sets": {}})
    )
    with pytest.raises(ReportError, match=rf"{path}: schema_version {PER_ITEM_SCHEMA_VERSION + 1}"):
        PerItemRecords.read(path)
    path.write_text(json.dumps({"schema_version": PER_ITEM_SCHEMA_VERSION, "method": "msa"}))
    with pytest.raises(ReportError, match=r"lacks the required field 'eval_sets'"):
        PerItemRecords.read(path)
