"""docs/adding_a_method.md's worked example (rewind) runs as written, and the guide harness catches broken guides."""

from __future__ import annotations

import pytest

from tests.guides import guide_files, run_guide_example

FENCE = "```"


def test_guide_files_reads_only_blocks_marked_with_a_path():
    guide = (
        f"{FENCE}python path=msa_bench/methods/example.py\nimport math\n{FENCE}\n"
        f"{FENCE}bash\nmsa-bench method=example\n{FENCE}\n"
        f"{FENCE}yaml path=conf/method/example.yaml\nname: example\n{FENCE}\n"
    )
    files = guide_files(guide)
    assert [(str(file.path), file.text) for file in files] == [
        ("msa_bench/methods/example.py", "import math\n"),
        ("conf/method/example.yaml", "name: example\n"),
    ]


def test_a_block_path_leaving_the_repository_is_refused():
    with pytest.raises(pytest.fail.Exception, match="must be relative"):
        guide_files(f"{FENCE}python path=../outside.py\nx = 1\n{FENCE}\n")


def _write_guide(tmp_path, text: str) -> str:
    guide = tmp_path / "guide.md"
    guide.write_text(text, encoding="utf-8")
    return str(guide)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{FENCE}python\nx = 1\n{FENCE}\n", "marks no code block"),
        (f"{FENCE}python path=msa_bench/cli.py\nx = 1\n{FENCE}\n", "must only add files.*msa_bench/cli.py"),
        (f"{FENCE}python path=msa_bench/methods/_harness_new.py\nx = 1\n{FENCE}\n", "marks no test file"),
    ],
)
def test_a_guide_without_files_editing_a_file_or_without_a_test_fails(tmp_path, text, message):
    with pytest.raises(pytest.fail.Exception, match=message):
        run_guide_example(_write_guide(tmp_path, text), tmp_path)


def test_a_failing_example_test_fails_with_its_output(tmp_path):
    guide = _write_guide(
        tmp_path,
        f"{FENCE}python path=tests/test_harness_failing_example.py\n"
        f"def test_fails():\n    assert 1 == 2, 'example output reaches the report'\n{FENCE}\n",
    )
    with pytest.raises(pytest.fail.Exception, match="example output reaches the report"):
        run_guide_example(guide, tmp_path)


@pytest.mark.slow
def test_adding_a_method_guide_runs_as_written(tmp_path):
    run_guide_example("docs/adding_a_method.md", tmp_path)
