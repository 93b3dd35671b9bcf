"""`msa-bench report` on runs holding robustness-attack metrics (issue 14, item 2): the recovery, the oracle's floor,
skipped attacks, undefined recoveries, matched forgetting and the plot. The results.json files follow the agreed
layout (prompts' contract: metrics["attack/<A>/<m>"], "attack/<A>/unattacked/<m>", results["attacks"]).

Every expected number is computed by hand from the fixture values, in the comments beside it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from msa_bench.errors import MetricError
from msa_bench.metrics.registry import Direction, metric_info
from msa_bench.reporting import tables as T
from msa_bench.reporting.attacks import FLOOR_LABEL, attack_section, recovery
from msa_bench.reporting.collect import load_runs
from msa_bench.reporting.command import main as report_main
from msa_bench.reporting.report import ReportOptions, build_report, write_report
from tests.test_report import PNG_MAGIC, config, msa

INT4, RELEARN, NF4 = "quantize_int4", "relearn_forget_10", "quantize_nf4"
PROB, ROUGE = "forget_Q_A_Prob", "forget_Q_A_ROUGE"
NF4_SKIP = "bitsandbytes needs CUDA; on this CPU machine use quantize_int8 or quantize_int4"
ATTACKS = {
    INT4: {
        "kind": "quantization",
        "settings": {"group_size": 32},
        "recovery_metrics": [PROB, ROUGE],
        "evaluated": "the forget set (all items)",
        "skipped": None,
        "model_size_bytes": {"method": 1000, "target": 4000, "oracle": 4000},
    },
    RELEARN: {
        "kind": "relearning",
        "settings": {"steps": 10, "subset": 2},
        "recovery_metrics": [PROB],
        "evaluated": "the forget items it did not train on",
        "skipped": None,
    },
    NF4: {
        "kind": "quantization",
        "settings": {},
        "recovery_metrics": [PROB],
        "evaluated": "",
        "skipped": NF4_SKIP,
    },
}


def a(attack: str, metric: str) -> str:
    return f"attack/{attack}/{metric}"


def u(attack: str, metric: str) -> str:
    return f"attack/{attack}/unattacked/{metric}"


def target(seed: int) -> dict:
    """The target of each seed: seed 1's is another model with another forget probability (0.8, not 0.9)."""
    prob = 0.9 if seed == 0 else 0.8
    return {
        PROB: prob,
        ROUGE: 0.8,
        a(INT4, PROB): prob,
        a(INT4, ROUGE): 0.8,
        u(RELEARN, PROB): 0.95 if seed == 0 else 0.85,
        a(RELEARN, PROB): 0.96,
    }


ORACLE = {
    PROB: 0.3,
    ROUGE: 0.3,
    a(INT4, PROB): 0.33,
    a(INT4, ROUGE): 0.3,
    u(RELEARN, PROB): 0.25,
    a(RELEARN, PROB): 0.5,
}


def write_attack_run(
    root: Path, name: str, method: dict, metrics: dict, seed: int = 0, provenance: dict | None = None
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    results = {
        "schema_version": 2,
        "method": method["name"],
        "benchmark": "synthetic_tofu",
        "metrics": metrics,
        "metric_provenance": provenance or {},
        "reference_metrics": {"target": target(seed), "oracle": ORACLE},
        "seed": seed,
        "artifacts": {"target": f"/cache/target-{seed}", "oracle": f"/cache/oracle-{seed}"},
        "config": config(method, seed),
        "attacks": ATTACKS,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def attacked_runs(tmp_path: Path) -> Path:
    """MSA and gradient ascent, two seeds each, attacked by int4 and forget-set relearning; nf4 skipped."""
    root = tmp_path / "runs"
    ga = {"name": "grad_ascent", "lr": 1e-5}
    # msa seed 0: int4 recovery (0.55 - 0.2) / (0.9 - 0.2) = 0.5; seed 1: (0.5 - 0.4) / (0.8 - 0.4) = 0.25.
    # Relearning reads its own unattacked items: seed 0 (0.5 - 0.1) / (0.95 - 0.1) = 0.4 / 0.85; seed 1: 0.
    write_attack_run(
        root,
        "msa0",
        msa(1.0),
        {
            PROB: 0.2,
            ROUGE: 0.3,
            a(INT4, PROB): 0.55,
            a(INT4, ROUGE): 0.4,
            u(RELEARN, PROB): 0.1,
            a(RELEARN, PROB): 0.5,
        },
        seed=0,
    )
    write_attack_run(
        root,
        "msa1",
        msa(1.0),
        {
            PROB: 0.4,
            ROUGE: 0.3,
            a(INT4, PROB): 0.5,
            a(INT4, ROUGE): 0.3,
            u(RELEARN, PROB): 0.2,
            a(RELEARN, PROB): 0.2,
        },
        seed=1,
    )
    # grad_ascent seed 0 did not move the forget probability off the target's 0.9: undefined, never 0.
    # seed 1: (0.65 - 0.5) / (0.8 - 0.5) = 0.5. Its int4 ROUGE is undefined, with the run's reason.
    write_attack_run(
        root,
        "ga0",
        ga,
        {
            PROB: 0.9,
            ROUGE: 0.5,
            a(INT4, PROB): 0.9,
            a(INT4, ROUGE): 0.5,
            u(RELEARN, PROB): 0.9,
            a(RELEARN, PROB): 0.9,
        },
        seed=0,
    )
    write_attack_run(
        root,
        "ga1",
        ga,
        {
            PROB: 0.5,
            ROUGE: 0.5,
            a(INT4, PROB): 0.65,
            a(INT4, ROUGE): None,
            u(RELEARN, PROB): 0.5,
            a(RELEARN, PROB): 0.6,
        },
        seed=1,
        provenance={a(INT4, ROUGE): "undefined: every generation was empty"},
    )
    return root


def tofu_table(root: Path) -> T.Table:
    return next(t for t in T.build_tables(load_runs([root])) if not t.id.endswith("_checkpoints"))


def test_attack_metrics_take_the_underlying_direction_and_a_label() -> None:
    info = metric_info(a(INT4, PROB))
    assert info.direction == metric_info(PROB).direction == Direction.TOWARD_ORACLE
    assert info.label == "forget_Q_A_Prob [quantize_int4]"
    before = metric_info(u(RELEARN, "forget_verbmem_ROUGE"))
    assert before.direction == Direction.LOWER
    assert before.label == "forget_verbmem_ROUGE [relearn_forget_10, unattacked]"
    with pytest.raises(MetricError, match="'attack/quantize_int4/no_such_metric' is attack 'quantize_int4'"):
        metric_info(a(INT4, "no_such_metric"))


def test_recovery_arithmetic_and_its_undefined_cases() -> None:
    assert recovery(0.55, 0.2, 0.9).value == pytest.approx(0.5)  # (0.55 - 0.2) / (0.9 - 0.2)
    assert recovery(0.2, 0.2, 0.9).value == 0.0  # nothing recovered
    assert recovery(0.1, 0.2, 0.9).value == pytest.approx(-1 / 7)  # forgotten further, negative
    same = recovery(0.9, 0.9, 0.9 + 1e-10)
    assert same.value is None and same.reason.startswith("|U_target − U_model| = 1e-10 < 1e-09")
    assert recovery(None, 0.2, 0.9).reason == "the attacked value is undefined"
    assert recovery(0.5, math.nan, 0.9).reason == "the unattacked value is nan"
    assert recovery(0.5, 0.2, math.inf).reason == "the target's unattacked value is inf"


def test_paper_tables_leave_the_attack_columns_out(attacked_runs: Path) -> None:
    # No paper column is in these runs, so the table falls back to every metric: every metric but the attacks'.
    assert tofu_table(attacked_runs).columns == [PROB, ROUGE]
    runs = load_runs([attacked_runs])
    assert T.choose_columns("tofu", runs, [a(INT4, PROB)]) == [a(INT4, PROB)]  # asked for, shown
    assert "forget_Q_A_Prob [quantize_int4]" in T.to_markdown(tofu_table_of(runs, [a(INT4, PROB)]))


def tofu_table_of(runs, metrics) -> T.Table:
    return next(t for t in T.build_tables(runs, metrics) if not t.id.endswith("_checkpoints"))


def test_recovery_per_run_from_its_own_target_with_the_oracle_floor(attacked_runs: Path) -> None:
    section = attack_section(tofu_table(attacked_runs))
    assert [x.attack for x in section.attacks] == [INT4, RELEARN]
    int4 = section.attacks[0]
    assert [r.label for r in int4.rows] == ["target", "oracle", "grad_ascent", "msa"]  # the table's row order
    cells = int4.row("msa").cells[PROB]
    # recoveries 0.5 and 0.25: mean 0.375, sample std 0.125 * sqrt(2); aggregating first would give 0.409
    assert cells.recovery.cell.mean == pytest.approx(0.375)
    assert cells.recovery.cell.std == pytest.approx(0.125 * math.sqrt(2))
    assert cells.unattacked.mean == pytest.approx(0.3) and cells.attacked.mean == pytest.approx(0.525)
    # The oracle's floor: seed 0 (0.33 - 0.3) / (0.9 - 0.3) = 0.05, seed 1 (0.33 - 0.3) / (0.8 - 0.3) = 0.06
    floor = int4.row("oracle").cells[PROB].recovery.cell
    assert floor.mean == pytest.approx(0.055) and floor.n == 2
    # The target is the reference: its recovery is undefined by definition, not 0
    of_target = int4.row("target").cells[PROB].recovery
    assert of_target.cell.mean is None and of_target.cell.undefined == 2
    assert of_target.reasons == ["the target is the recovery's reference: U_target − U_target = 0"]
    assert int4.model_size_bytes["method"].mean == 1000 and int4.model_size_bytes["target"].mean == 4000
    relearn = section.attacks[1]
    msa_relearn = relearn.row("msa").cells[PROB]
    assert msa_relearn.unattacked.mean == pytest.approx(
        0.15
    )  # from attack/<A>/unattacked/, not the plain 0.2/0.4
    assert msa_relearn.recovery.cell.mean == pytest.approx((0.4 / 0.85 + 0.0) / 2)
    # oracle: seed 0 (0.5 - 0.25) / (0.95 - 0.25), seed 1 (0.5 - 0.25) / (0.85 - 0.25)
    oracle_relearn = relearn.row("oracle").cells[PROB].recovery.cell
    assert oracle_relearn.mean == pytest.approx((0.25 / 0.7 + 0.25 / 0.6) / 2)
    summary = {label: cells for label, _, cells in section.summary()}
    assert list(summary) == [FLOOR_LABEL, "grad_ascent", "msa"]
    assert summary[FLOOR_LABEL][INT4].cell.mean == pytest.approx(0.055)
    assert summary["msa"][RELEARN].cell.mean == pytest.approx(0.4 / 0.85 / 2)


def test_undefined_recovery_is_counted_apart_with_its_reason(attacked_runs: Path) -> None:
    int4 = attack_section(tofu_table(attacked_runs)).attacks[0]
    prob = int4.row("grad_ascent").cells[PROB].recovery
    assert prob.cell.mean == pytest.approx(0.5) and prob.cell.n == 1 and prob.cell.undefined == 1
    assert prob.reasons == ["|U_target − U_model| = 0 < 1e-09: nothing forgotten to recover"]
    rouge = int4.row("grad_ascent").cells[ROUGE].recovery
    assert "the attacked value is undefined: every generation was empty" in rouge.reasons


def test_report_md_has_the_attack_section_and_lists_the_skipped_attack(
    attacked_runs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    assert report_main([str(attacked_runs), "--out", str(out), "--quiet"]) == 0
    markdown = (out / "report.md").read_text()
    assert "### Robustness attacks: TOFU: synthetic_tofu / forget10, model tiny_llama" in markdown
    assert "|  | quantize_int4: forget_Q_A_Prob | relearn_forget_10: forget_Q_A_Prob |" in markdown
    assert "| *oracle (floor)* | 0.0550 ± 0.0071 (n=2) |" in markdown
    assert "| msa | 0.3750 ± 0.1768 (n=2) |" in markdown
    # grad_ascent, int4: one run at 0.5, one undefined; footnoted, never 0
    assert "| grad_ascent | 0.5000 (n=1); undefined in 1 [" in markdown
    assert "nothing forgotten to recover" in markdown and "every generation was empty" in markdown
    assert "#### quantize_int4" in markdown and "quantized model size method 1 kB, target 4 kB" in markdown
    assert "forget_Q_A_Prob: unattacked | forget_Q_A_Prob: attacked | forget_Q_A_Prob: recovery" in markdown
    assert f"- `{NF4}`: skipped in 4 of 4 runs: {NF4_SKIP}" in markdown
    assert f"#### {NF4}" not in markdown  # no table for an attack no run evaluated
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    floor = next(
        r for r in rows if r["row"] == "oracle" and r["metric"] == a(INT4, PROB) and r["unit"] == "recovery"
    )
    assert float(floor["mean"]) == pytest.approx(0.055) and floor["n"] == "2"
    wide = (out / "tables" / f"{tofu_table(attacked_runs).id}_attacks.csv").read_text()
    assert f"skipped: {NF4_SKIP}" in wide and "nothing forgotten to recover" in wide
    latex = (out / "report.tex").read_text()
    assert r"Recovery per attack" in latex and "undefined [" in latex
    plot = out / "plots" / f"{tofu_table(attacked_runs).id}_attack_recovery.png"
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_recovery_at_matched_forgetting_from_interpolated_values(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # forget_Q_A_Prob by α: 0.5 -> 0.6, 1 -> 0.2, 2 -> 0.05; the oracle's 0.3 is a quarter of the way from α = 1 to
    # α = 0.5 (t = 0.25). int4 attacked: 0.4 at α = 1, 0.8 at α = 0.5 -> 0.5 at the match; recovery
    # (0.5 - 0.3) / (0.9 - 0.3) = 1/3. Relearning unattacked 0.1 -> 0.5 gives 0.2, attacked 0.3 -> 0.7 gives 0.4;
    # with the target's unattacked 0.95: (0.4 - 0.2) / (0.95 - 0.2) = 0.2 / 0.75.
    for alpha, prob, int4, before, after in (
        (0.5, 0.6, 0.8, 0.5, 0.7),
        (1.0, 0.2, 0.4, 0.1, 0.3),
        (2.0, 0.05, 0.1, 0.0, 0.1),
    ):
        metrics = {
            PROB: prob,
            ROUGE: 0.3,
            a(INT4, PROB): int4,
            a(INT4, ROUGE): 0.3,
            u(RELEARN, PROB): before,
            a(RELEARN, PROB): after,
        }
        write_attack_run(root, f"a{alpha}", msa(alpha), metrics)
    options = ReportOptions(matched_metric=PROB, plots=False)
    report = build_report([root], options)
    (section,) = report.sections
    (found,) = section.matched_recovery
    assert found[a(INT4, PROB)].value == pytest.approx(1 / 3)
    assert found[a(RELEARN, PROB)].value == pytest.approx(0.2 / 0.75)
    assert found[a(INT4, ROUGE)].value == 0.0  # 0.3 before and after everywhere, the target's 0.8: 0 / 0.5
    out = tmp_path / "report"
    write_report(report, out, ("md", "csv"))
    markdown = (out / "report.md").read_text()
    assert "### Matched forgetting, recovery per attack" in markdown
    assert "| msa | 0.3333 | 0.2667 |  |" in markdown
    (record,) = json.loads((out / "matched_forgetting.json").read_text())
    assert record["attack_recovery"][a(RELEARN, PROB)] == pytest.approx(0.2 / 0.75)
    assert record["values"][a(INT4, PROB)] == pytest.approx(0.5)  # the attacked metric itself, interpolated
    matched_rows = list(csv.DictReader(io.StringIO((out / "matched_forgetting.csv").read_text())))
    assert float(matched_rows[0][f"recovery:{a(INT4, PROB)}"]) == pytest.approx(1 / 3)
