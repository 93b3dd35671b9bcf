"""The recovery plot of a table's robustness attacks: per attack, one bar per method row (mean over seeds, error
bar = std over seeds), the oracle's floor as a line across the attack's bars, and 0 and 1 (nothing recovered, back
to the target) as guides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from msa_bench.reporting.attacks import FLOOR_LABEL, AttackSection  # noqa: E402

GROUP_WIDTH = 0.8  # of the space between two attacks


def plot_attack_recovery(section: AttackSection, out_dir: Path) -> Path | None:
    """`<table id>_attack_recovery.png`, None when no attack has a defined recovery."""
    summary = section.summary()
    methods = [(label, cells) for label, kind, cells in summary if kind == "method"]
    floor = next((cells for label, kind, cells in summary if label == FLOOR_LABEL), {})
    attacks = [a.attack for a in section.attacks]
    if not attacks or not methods:
        return None
    width = GROUP_WIDTH / len(methods)
    # Each attack gets room for its bars and for its two-line tick label, written level so that labels never overlap.
    per_attack = max(1.3, 0.35 * len(methods))
    figure, axes = plt.subplots(figsize=(max(6.0, 1.0 + per_attack * len(attacks)), 4.5))
    drawn = False
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    for index, (label, cells) in enumerate(methods):
        xs, means, stds, undefined = [], [], [], []
        for position, attack in enumerate(attacks):
            cell = cells.get(attack)
            if cell is not None and (cell.cell.mean is not None or cell.cell.undefined):
                xs.append(position - GROUP_WIDTH / 2 + (index + 0.5) * width)
                means.append(cell.cell.mean if cell.cell.mean is not None else 0.0)
                stds.append(cell.cell.std or 0.0)
                undefined.append((cell.cell.n, cell.cell.undefined))
        if xs:
            bars = axes.bar(
                xs, means, width, yerr=stds, capsize=2, label=label, color=colors(index % colors.N)
            )
            drawn = True
            # A bar over fewer runs than the row has, or none (all undefined: no bar, never a 0), says so.
            for bar, (n, missing) in zip(bars, undefined, strict=True):
                if missing:
                    text = f"n={n}, {missing} undef." if n else "undefined"
                    axes.annotate(
                        text,
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        textcoords="offset points",
                        xytext=(0, 3),
                        ha="center",
                        fontsize=6,
                        rotation=90,
                    )
                    if not n:
                        bar.set_visible(False)
    for position, attack in enumerate(attacks):
        cell = floor.get(attack)
        if cell is not None and cell.cell.mean is not None:
            axes.hlines(
                cell.cell.mean,
                position - GROUP_WIDTH / 2,
                position + GROUP_WIDTH / 2,
                colors="black",
                linestyles="--",
                linewidth=1.5,
                label=FLOOR_LABEL
                if not any(t.get_label() == FLOOR_LABEL for t in axes.collections)
                else None,
                zorder=3,
            )
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", label="target (recovery 1)")
    metrics = {a.attack: a.metrics[0] for a in section.attacks}
    axes.set_xticks(range(len(attacks)), [f"{a}\n{metrics[a]}" for a in attacks], fontsize=7)
    axes.set_ylabel("recovery (0: none, 1: back to target)")
    title = f"Recovery under attack (mean ± std over seeds): {section.table.title}"
    axes.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    # Outside the axes, on the right: bars of every height stay visible.
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    path = out_dir / f"{section.table.id}_attack_recovery.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")  # "tight" keeps the legend beside the axes in the file
    plt.close(figure)
    return path
