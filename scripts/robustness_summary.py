"""A compact recovery table (two decimals, mean ± std over seeds) from `msa-bench report`'s attack CSV, for
results/robustness/README.md: one row per model, one column per attack, on each attack's first recovery metric.

    python scripts/robustness_summary.py results/robustness/synthetic_tofu/defaults
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def summary(report_dir: Path) -> str:
    (path,) = sorted((report_dir / "tables").glob("*_attacks.csv"))
    rows = list(csv.DictReader(path.open()))
    attacks: dict[str, str] = {}  # attack -> its first recovery metric (the CSV lists them in order)
    for row in rows:
        attacks.setdefault(row["attack"], row["metric"])
    models: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for row in rows:
        if row["metric"] != attacks[row["attack"]] or row["row"] == "target":
            continue
        label = "oracle (floor)" if row["row"] == "oracle" else row["row"]
        if label not in models:
            models.append(label)
        if row["recovery_mean"]:
            std = f" ± {float(row['recovery_std']):.2f}" if row["recovery_std"] else ""
            cells[(label, row["attack"])] = f"{float(row['recovery_mean']):.2f}{std}"
        else:
            cells[(label, row["attack"])] = "undefined"
    header = "| | " + " | ".join(f"{a} ({m})" for a, m in attacks.items()) + " |"
    lines = [header, "|---|" + "---:|" * len(attacks)]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(cells.get((model, a), "") for a in attacks) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("report_dir", type=Path, help="a folder `msa-bench report --out` wrote")
    print(summary(parser.parse_args().report_dir))


if __name__ == "__main__":
    main()
