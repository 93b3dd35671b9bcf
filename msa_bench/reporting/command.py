"""`msa-bench report DIR... [options]`: paper-shaped tables (and plots) from every results.json under the folders.

Prints the Markdown report on stdout and writes it, with LaTeX, CSV and PNG plots, into --out.
Exit codes: 0 done, 2 unusable input (no results, a bad option or reference file; with --strict, any input that
cannot be read; nothing written). Without --strict, unreadable inputs are listed in the report and on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from msa_bench.reporting.matched import SCALES
from msa_bench.reporting.report import FORMATS, ReportOptions, build_report, to_markdown, write_report
from msa_bench.reporting.selection import (
    DEFAULT_DISTANCE,
    DEFAULT_FORGET_METRICS,
    DEFAULT_TOLERANCE,
    DEFAULT_UTILITY_METRICS,
    DISTANCES,
    Criterion,
)

PROG = "msa-bench report"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build tables shaped like the MSA paper's (TOFU, RESTOR, MUSE, checkpoint ablation) from every "
        "results.json under the given folders: target and oracle rows, one row per method configuration, mean ± std "
        "over seeds with n.",
    )
    parser.add_argument(
        "sources", nargs="+", type=Path, metavar="DIR", help="folders (or results files) to read"
    )
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: ./report)")
    parser.add_argument(
        "--format",
        default=",".join(FORMATS),
        help="comma-separated output formats among md, tex, csv (default: all)",
    )
    parser.add_argument(
        "--relative-to-ideal",
        action="store_true",
        help="also give every table relative to the ideal (oracle) model, in percent, as the paper's v3 tables do",
    )
    parser.add_argument(
        "--paper-reference",
        type=Path,
        metavar="YAML",
        help="show the paper's numbers (e.g. results/paper_reference.yaml) beside tables whose benchmark and model match",
    )
    parser.add_argument(
        "--matched-forgetting",
        metavar="METRIC",
        help="compare methods where METRIC (e.g. forget_Q_A_Prob) equals the oracle's, interpolating each sweep",
    )
    parser.add_argument(
        "--matched-scale",
        choices=SCALES,
        default="linear",
        help="the scale of METRIC on which --matched-forgetting places the crossing between two runs (default: "
        "linear; log suits a forget probability, which falls geometrically with training)",
    )
    parser.add_argument(
        "--sweep-param",
        metavar="KEY",
        help="the swept key for --matched-forgetting and the trade-off plot (default: method.alpha when it varies, "
        "else the one numeric method.* key that varies)",
    )
    parser.add_argument(
        "--metrics",
        help="comma-separated metric columns instead of the paper's (e.g. forget_Q_A_Prob,model_utility)",
    )
    parser.add_argument(
        "--select-on",
        choices=("validation",),
        help="choose each method's hyperparameters on the validation forget set (runs with "
        "benchmark.forget_set=validation) and report the test runs at the chosen point (docs/validation_protocol.md)",
    )
    parser.add_argument(
        "--select-metric",
        metavar="METRIC",
        help="the forget metric that must match the validation oracle's (default, per benchmark: the first of "
        f"{', '.join(DEFAULT_FORGET_METRICS)} its validation runs have, TOFU's then MUSE's; a metric named here "
        "applies to every benchmark of the report)",
    )
    parser.add_argument(
        "--select-utility",
        metavar="METRIC",
        help="the utility maximised among the points that match (default, per benchmark: the first of "
        f"{', '.join(DEFAULT_UTILITY_METRICS)} its validation runs have)",
    )
    parser.add_argument(
        "--select-tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="FRACTION",
        help="how close to the oracle's forget metric a point must be: within a factor 1 + FRACTION with "
        f"log_ratio, within FRACTION of it with relative (default: {DEFAULT_TOLERANCE})",
    )
    parser.add_argument(
        "--select-distance",
        choices=DISTANCES,
        default=DEFAULT_DISTANCE,
        help=f"how the distance from the oracle is measured (default: {DEFAULT_DISTANCE}; "
        "docs/validation_protocol.md says why)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    parser.add_argument(
        "--wandb", action="store_true", help="also log tables, plots and the report folder to W&B"
    )
    parser.add_argument("--wandb-project", default="msa_bench", help="W&B project (default: msa_bench)")
    parser.add_argument(
        "--wandb-group",
        default=None,
        help="W&B group (default: the sweep's group when DIR is one sweep directory)",
    )
    parser.add_argument(
        "--wandb-mode",
        default="offline",
        choices=("offline", "online", "disabled"),
        help="W&B mode (default offline; the WANDB_MODE environment variable wins)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 2, nothing written) when any input cannot be read, instead of listing it in the report",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    return parser


def selection_criterion(args) -> Criterion:
    return Criterion(args.select_metric, args.select_utility, args.select_tolerance, args.select_distance)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format {text!r}: choose among {', '.join(FORMATS)}")
    return formats


def default_wandb_group(sources: list[Path]) -> str | None:
    """A report on one sweep joins the sweep's W&B group (the one its runs used by default)."""
    from msa_bench.sweeps.status import SWEEP_RUN_FILE, sweep_group_name

    if len(sources) == 1 and (sources[0] / SWEEP_RUN_FILE).is_file():
        return sweep_group_name(sources[0].resolve())
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    try:
        formats = parse_formats(args.format)
        options = ReportOptions(
            formats=formats,
            relative_to_ideal=args.relative_to_ideal,
            paper_reference=args.paper_reference,
            matched_metric=args.matched_forgetting,
            matched_scale=args.matched_scale,
            sweep_param=args.sweep_param,
            metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else None,
            plots=not args.no_plots,
            select_on=args.select_on,
            selection=selection_criterion(args),
        )
        report = build_report(args.sources, options, plot_dir=args.out / "plots")
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if report.unreadable:
        paths = ", ".join(str(entry.path) for entry in report.unreadable)
        if args.strict:
            print(
                f"{PROG}: error: --strict: {len(report.unreadable)} input(s) cannot be read: {paths}",
                file=sys.stderr,
            )
            return 2
        print(
            f"{PROG}: warning: {len(report.unreadable)} input(s) cannot be read and are left out (listed in the "
            f"report; --strict makes this an error): {paths}",
            file=sys.stderr,
        )
    written = write_report(report, args.out, formats)
    if not args.quiet:
        print(to_markdown(report, relative_to=args.out))
    print(
        f"{PROG}: {len(report.runs)} results, {len(report.sections)} tables; wrote "
        f"{len(written)} files and {len(report.plots)} plots to {args.out}",
        file=sys.stderr,
    )
    if args.wandb:
        from msa_bench.reporting.wandb_report import log_report

        group = args.wandb_group or default_wandb_group(args.sources)
        path = log_report(report, args.out, project=args.wandb_project, group=group, mode=args.wandb_mode)
        print(f"{PROG}: logged to W&B{f' ({path})' if path else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
