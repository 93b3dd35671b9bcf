"""The comparison table the main job prints: the method against the target and the oracle on every metric."""

from __future__ import annotations

from collections.abc import Mapping


def format_value(value: float | None) -> str:
    if (
        value is None
    ):  # undefined by the metric's definition (results.json: null, the reason in metric_provenance)
        return "n/a"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.3e}"
    return f"{value:.4f}"


def comparison_table(columns: Mapping[str, Mapping[str, float]], metric_names: list[str]) -> str:
    """A fixed-width text table: one row per metric, one column per model (e.g. target, oracle, msa)."""
    headers = ["metric", *columns]
    rows = [
        [name, *(format_value(col[name]) if name in col else "-" for col in columns.values())]
        for name in metric_names
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        )

    separator = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), separator, *(line(r) for r in rows)])
