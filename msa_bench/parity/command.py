"""`msa-bench parity`: recompute an open-unlearning eval log's metrics with msa_bench's code.

Prints {open-unlearning key: our value} as JSON on stdout; notes and keys that could not be computed go to stderr.
With --out, also writes the values as an msa_bench results file, so published runs can sit beside ours in tables.
Exit codes: 0 done (possibly with keys missing for want of --retain), 2 unusable input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import msa_bench
from msa_bench.parity.logs import TOFU, ParityError, load_eval_log
from msa_bench.parity.recompute import ParityResult, recompute
from msa_bench.results import RunResults
from msa_bench.results.provenance import distribution_versions, git_commit

PROG = "msa-bench parity"
# File names open-unlearning gives its eval logs; for them the folder, not the file, names the run.
_STANDARD_LOG_NAMES = {"TOFU_EVAL.json", "MUSE_EVAL.json"}
# TOFU's forget splits by number of forget questions.
_TOFU_FORGET_SPLITS = {40: "forget01", 200: "forget05", 400: "forget10"}
_VERSIONED_PACKAGES = ("numpy", "scipy", "scikit-learn", "rouge-score")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Recompute every metric of an open-unlearning TOFU_EVAL.json / MUSE_EVAL.json from its "
        "per-item values with msa_bench's metric code, and print {open-unlearning key: our value} as JSON.",
    )
    parser.add_argument("eval_json", type=Path, metavar="EVAL_JSON", help="the evaluated model's *_EVAL.json")
    parser.add_argument(
        "--retain",
        type=Path,
        metavar="RETAIN_EVAL_JSON",
        help="the retain (oracle) model's *_EVAL.json on the same forget split; needed by forget_quality "
        "(its forget truth ratios) and privleak (its mia_min_k AUC)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="RESULTS_JSON",
        help="also write the values as an msa_bench results file (method 'open-unlearning:<run>')",
    )
    parser.add_argument(
        "--ou-compatible",
        action="store_true",
        help="use open-unlearning's arithmetic instead of ours: its 1e-10 division guards, its stored float32 "
        "probabilities, and privleak against a reference AUC of 0.5 when no --retain is given",
    )
    return parser


def run_name(eval_path: Path) -> str:
    """The run an eval log belongs to: its folder for open-unlearning's standard file names (with the parent
    folder too when that folder is just 'evals...'), otherwise the file name without extension."""
    if eval_path.name not in _STANDARD_LOG_NAMES:
        return eval_path.stem
    folder = eval_path.resolve().parent
    if folder.name.startswith("eval") and folder.parent.name:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name


def library_versions() -> dict[str, str]:
    """The versions of what computed the values (no torch: parity runs no model), and the commit ("-dirty" with
    uncommitted changes)."""
    return {
        "msa_bench": msa_bench.__version__,
        "python": platform.python_version(),
        **distribution_versions({package: package for package in _VERSIONED_PACKAGES}),
        "git_commit": git_commit(),
    }


def results_record(
    result: ParityResult,
    eval_path: Path,
    retain_path: Path | None,
    ou_compatible: bool,
    forget_items: int | None,
) -> RunResults:
    """The values as an msa_bench results file, so the report can put them beside our runs."""
    known_split = result.benchmark == TOFU and forget_items in _TOFU_FORGET_SPLITS
    return RunResults(
        method=f"open-unlearning:{run_name(eval_path)}",
        benchmark=result.benchmark,
        forget_split=_TOFU_FORGET_SPLITS[forget_items] if known_split else None,
        metrics=result.values,
        missing_metrics=result.missing,
        source={
            "eval": str(eval_path.resolve()),
            "retain": str(retain_path.resolve()) if retain_path is not None else None,
        },
        settings={"ou_compatible": ou_compatible},
        versions=library_versions(),
    )


def _forget_item_count(entries: dict) -> int | None:
    entry = entries.get("forget_Q_A_Prob") or entries.get("forget_truth_ratio")
    if isinstance(entry, dict) and isinstance(entry.get("value_by_index"), dict):
        return len(entry["value_by_index"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits on --help (0) and on bad usage (2)
        return int(exit_request.code or 0)

    try:
        eval_log = load_eval_log(args.eval_json, role="eval log")
        retain_log = load_eval_log(args.retain, role="retain log") if args.retain is not None else None
        result = recompute(eval_log, retain_log, ou_compatible=args.ou_compatible)
        record = None
        if args.out is not None:
            record = results_record(
                result, args.eval_json, args.retain, args.ou_compatible, _forget_item_count(eval_log.entries)
            )
    except ParityError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    for note in result.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    for key, reason in result.missing.items():
        print(f"{PROG}: missing {key}: {reason}", file=sys.stderr)
    if record is not None:
        try:
            record.write(args.out)
        except OSError as error:
            print(f"{PROG}: error: cannot write {args.out}: {error.strerror or error}", file=sys.stderr)
            return 2
    try:
        print(json.dumps(result.values, indent=2))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (`| head`, `| jq ...`) went away: not an error of ours. Point stdout at /dev/null so that
        # Python's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
