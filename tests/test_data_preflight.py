"""Data preflight (issue 12, item 5): every data file a run reads is parsed in full before any training, and a bad
file is named with its line (or record) and field, by the preflight and by the loaders themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from msa_bench.data.muse import load_muse_eval_sets
from msa_bench.data.records import read_json_list, read_jsonl
from msa_bench.data.restor import load_restor
from msa_bench.data.tofu_splits import load_benchmark_split
from msa_bench.errors import DataError, MalformedDataError
from tests.benchmark_fixtures import write_tiny_muse, write_tiny_restor, write_tiny_tofu
from tests.pipeline_runs import run_job

REPO_ROOT = Path(__file__).resolve().parents[1]


def truncate_mid_line(path: Path, line: int) -> None:
    """Cut the file in the middle of line `line` (1-based), as a copy interrupted by a full disk leaves it."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[: line - 1]) + lines[line - 1][: len(lines[line - 1]) // 2])


def nothing_trained(cache: Path) -> bool:
    return not any(cache.glob("history/*/_artifact.json")) and not (cache / "finetune").exists()


@pytest.fixture
def tiny_tofu(tmp_path) -> Path:
    return write_tiny_tofu(tmp_path / "tofu")


def tofu_run(tmp_path: Path, data_dir: Path):
    return run_job(tmp_path / "cache", tmp_path / "run", ["benchmark=tofu", f"benchmark.data_dir={data_dir}"])


def test_truncated_forget_split_is_named_at_preflight_before_any_training(tmp_path, tiny_tofu):
    truncate_mid_line(tiny_tofu / "forget01.jsonl", 7)
    with pytest.raises(
        MalformedDataError,
        match=r"forget01\.jsonl line 7: not valid JSON \(truncated file\?\): .* \(column \d+\)",
    ):
        tofu_run(tmp_path, tiny_tofu)
    assert nothing_trained(tmp_path / "cache")
    assert not (tmp_path / "run" / "results.json").exists()


def test_truncated_full_split_names_the_file_not_a_bare_json_error(tmp_path, tiny_tofu):
    truncate_mid_line(tiny_tofu / "full.jsonl", 120)
    with pytest.raises(MalformedDataError, match=r"full\.jsonl line 120: not valid JSON"):
        tofu_run(tmp_path, tiny_tofu)
    assert nothing_trained(tmp_path / "cache")


def test_split_cut_at_a_line_boundary_is_caught_by_the_tofu_row_counts(tmp_path, tiny_tofu):
    lines = (tiny_tofu / "full.jsonl").read_text().splitlines(keepends=True)
    (tiny_tofu / "full.jsonl").write_text("".join(lines[:150]))
    with pytest.raises(
        MalformedDataError, match=r"forget01 \+ retain99 must hold the rows of full .*full\.jsonl 150"
    ):
        tofu_run(tmp_path, tiny_tofu)
    assert nothing_trained(tmp_path / "cache")


def test_a_record_without_a_field_or_with_a_wrong_answer_list_is_named(tmp_path, tiny_tofu):
    path = tiny_tofu / "retain_perturbed.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[2]["perturbed_answer"] = "one answer, not a list"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(
        MalformedDataError,
        match=r"retain_perturbed\.jsonl line 3: field 'perturbed_answer' must be a non-empty list of non-empty strings",
    ):
        tofu_run(tmp_path, tiny_tofu)
    del records[2]["perturbed_answer"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(MalformedDataError, match=r"line 3: has no field 'perturbed_answer'"):
        load_benchmark_split(tiny_tofu, "retain_perturbed")


def test_the_loader_itself_raises_the_named_error(tiny_tofu):
    truncate_mid_line(tiny_tofu / "holdout01.jsonl", 2)
    with pytest.raises(MalformedDataError, match=r"holdout01\.jsonl line 2: not valid JSON") as caught:
        load_benchmark_split(tiny_tofu, "holdout01")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value.__cause__, json.JSONDecodeError)
    with pytest.raises(
        DataError, match=r"benchmark split 'nowhere' not found: .*nowhere\.jsonl does not exist"
    ):
        load_benchmark_split(tiny_tofu, "nowhere")


def test_empty_split_and_non_utf8_line_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(MalformedDataError, match=r"empty\.jsonl holds no records"):
        read_jsonl(empty, {"question": "text"})
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"question": "a", "answer": "b"}\n{"question": "\xe2\x82')
    with pytest.raises(MalformedDataError, match=r"binary\.jsonl line 2: not UTF-8 text"):
        read_jsonl(binary)


def test_truncated_json_list_names_line_and_column(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[\n  {"text": "one"},\n  {"text": "tw')
    with pytest.raises(
        MalformedDataError, match=r"list\.json line 3 column \d+: not valid JSON \(truncated file\?\)"
    ):
        read_json_list(path)


def test_restor_preflight_parses_every_file(tmp_path):
    folder = write_tiny_restor(tmp_path / "restor")
    facts = json.loads((folder / "facts.json").read_text())
    facts["dset"]["Alan Turing"]["P27"]["answers"] = "England"
    (folder / "facts.json").write_text(json.dumps(facts))
    with pytest.raises(
        MalformedDataError,
        match=r"facts\.json dset\['Alan Turing'\]\['P27'\]: field 'answers' must be a non-empty list",
    ):
        load_restor(folder)
    write_tiny_restor(folder)  # intact again
    mix = folder / "mix_a0.json"
    mix.write_bytes(mix.read_bytes()[:-40])
    with pytest.raises(MalformedDataError, match=r"mix_a0\.json line 1 column \d+: not valid JSON"):
        run_job(
            tmp_path / "cache",
            tmp_path / "run",
            ["benchmark=restor", f"benchmark.data_dir={folder}", "metrics=restor"],
        )
    assert nothing_trained(tmp_path / "cache")


def test_muse_eval_file_truncated_is_named(tmp_path):
    folder = write_tiny_muse(tmp_path / "muse")
    path = folder / "knowmem" / "retain2_qa.json"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(
        MalformedDataError, match=r"knowmem/retain2_qa\.json line 1 column \d+: not valid JSON"
    ):
        load_muse_eval_sets(folder)
    write_tiny_muse(folder)
    (folder / "privleak" / "holdout.json").write_text(json.dumps([{"text": ""}]))
    with pytest.raises(
        MalformedDataError, match=r"record 0 of .*privleak/holdout\.json needs a non-empty string 'text'"
    ):
        load_muse_eval_sets(folder)


def test_cli_prints_one_line_and_exits_2_for_a_truncated_split(tmp_path, tiny_tofu, monkeypatch):
    truncate_mid_line(tiny_tofu / "forget01.jsonl", 3)
    command = [
        sys.executable,
        "-m",
        "msa_bench.cli",
        "experiment=smoke",
        "benchmark=tofu",
        f"benchmark.data_dir={tiny_tofu}",
        "logger=none",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WANDB_MODE": "disabled",
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msa-bench: error: ")
    assert "forget01.jsonl line 3: not valid JSON (truncated file?)" in lines[0]
    assert nothing_trained(tmp_path / "cache")
