"""What every report plot needs to stay readable: titles wrapped to the figure, file names that keep every value
that tells two plots apart, error bars that a log axis can draw, and point labels placed where they overlap
neither each other nor the markers."""

from __future__ import annotations

import hashlib
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

DPI = 120
# Most filesystems allow 255 bytes per name; the cap leaves room for ".png" and for a copy tool's suffixes.
MAX_STEM = 200
HASH_LENGTH = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
LOG_BAR_NOTE = "on a log axis, a bar whose mean − std ≤ 0 stops at the lowest seed"
# Colours, then markers: series beyond the palette still differ by marker.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")


def new_figure(width: float, height: float, rows: int = 1, columns: int = 1, **options):
    """A figure under constrained layout, which fits suptitles, outside legends and rotated ticks."""
    return plt.subplots(
        rows, columns, figsize=(width, height), dpi=DPI, layout="constrained", squeeze=False, **options
    )


def wrapped(text: str, width_inches: float, fontsize: float) -> str:
    """`text` in lines that fit `width_inches` at `fontsize` (a character is about 0.62 em wide on average)."""
    characters = max(20, int(width_inches * 72 / (0.62 * fontsize)))
    return "\n".join(textwrap.wrap(text, characters, break_long_words=False, break_on_hyphens=False))


def save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # "tight" keeps whatever sits outside the axes (legends, direct labels) inside the file.
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def series_style(index: int, count: int) -> dict[str, Any]:
    palette = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return {"color": palette(index % palette.N), "marker": MARKERS[index % len(MARKERS)]}


# --- file names ---------------------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_")


def _settings_text(settings: Mapping[str, Any], keys: bool) -> str:
    return ",".join(f"{key}={value}" if keys else str(value) for key, value in settings.items())


def plot_stem(prefix: str, name: str, settings: Mapping[str, Any]) -> str:
    """`<prefix>_<name>_<key=value,...>`: every setting that tells this plot's row apart from its namesakes, in
    characters every filesystem and shell takes. When that is longer than MAX_STEM, the keys go first (the values
    stay, in the same order) and a hash of the whole name is appended, since values alone can read alike; past
    that the tail is cut before the hash."""
    base = _safe(f"{prefix}_{name}")
    if not settings:
        return base[:MAX_STEM]
    full = f"{base}_{_safe(_settings_text(settings, keys=True))}"
    if len(full) <= MAX_STEM:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:HASH_LENGTH]
    values_only = f"{base}_{_safe(_settings_text(settings, keys=False))}"
    if len(values_only) + 1 + HASH_LENGTH <= MAX_STEM:
        return f"{values_only}~{digest}"
    return f"{values_only[: MAX_STEM - 1 - HASH_LENGTH]}~{digest}"


def unique_stems(stems: Sequence[str], identities: Sequence[str]) -> list[str]:
    """Stems made distinct: where two rows' settings sanitise to one stem (`a/b` and `a_b`), each gets a hash of
    what identifies it."""
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    result = []
    for stem, identity in zip(stems, identities, strict=True):
        if counts[stem] > 1:
            digest = hashlib.sha256(identity.encode()).hexdigest()[:HASH_LENGTH]
            stem = f"{stem[: MAX_STEM - 1 - HASH_LENGTH]}~{digest}"
        result.append(stem)
    return result


# --- error bars ---------------------------------------------------------------------------------------------------


def error_bar(mean: float, std: float | None, values: Sequence[float], log_axis: bool) -> tuple[float, float]:
    """(below, above) the mean: one sample std over seeds each way (none for a single seed). A log axis cannot draw
    down to mean − std ≤ 0, so there the bar stops at the lowest seed's value, which the axis can show."""
    if std is None or not math.isfinite(std):
        return 0.0, 0.0
    low = mean - std
    if log_axis and low <= 0:
        positive = [v for v in values if v > 0]
        low = min(positive) if positive else mean
    return mean - low, std


# --- direct labels --------------------------------------------------------------------------------------------------


@dataclass
class PointLabel:
    x: float
    y: float
    text: str
    color: Any


# Offsets (points) tried in order around the point: the nearest ring first, and on each ring the diagonals first,
# which leave the line through the point free.
_DIRECTIONS = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_RINGS = (4.0, 11.0, 19.0, 28.0)
_ALIGN = {-1: "right", 0: "center", 1: "left"}
_VALIGN = {-1: "top", 0: "center", 1: "bottom"}


def _overlap(box: Bbox, others: Sequence[Bbox]) -> float:
    total = 0.0
    for other in others:
        inside = Bbox.intersection(box, other)
        if inside is not None:
            total += inside.width * inside.height
    return total


def _outside(box: Bbox, frame: Bbox) -> float:
    inside = Bbox.intersection(box, frame)
    kept = inside.width * inside.height if inside is not None else 0.0
    return box.width * box.height - kept


def place_labels(
    axes,
    labels: Sequence[PointLabel],
    obstacles=(),
    fontsize: float = 7,
    marker_pt: float = 4.0,
    obstacle_pt: float = 8.0,
):
    """Annotate each point with its text at the first offset where the text overlaps no marker, no label placed
    before it and stays inside the axes (else where it overlaps least); a label set further out gets a thin leader
    line to its point. `obstacles`: other points to keep clear of (the reference markers, drawn larger). Call it
    when everything else is drawn: the layout is fixed here, and labels stay out of it."""
    figure = axes.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    points = [(label.x, label.y) for label in labels] + [tuple(point) for point in obstacles]
    radii = [marker_pt * figure.dpi / 72] * len(labels) + [obstacle_pt * figure.dpi / 72] * len(obstacles)
    pixels = axes.transData.transform(points) if points else []
    taken = [Bbox.from_bounds(x - r, y - r, 2 * r, 2 * r) for (x, y), r in zip(pixels, radii, strict=True)]
    annotations = []
    for label in labels:
        probe = axes.annotate(
            label.text, (label.x, label.y), xytext=(0, 0), textcoords="offset points", fontsize=fontsize
        )
        best: tuple[float, tuple[int, int, float], Bbox] | None = None
        for ring in _RINGS:
            for dx, dy in _DIRECTIONS:
                _aim(probe, dx, dy, ring)
                box = probe.get_window_extent(renderer)
                cost = _overlap(box, taken) + 10 * _outside(box, frame)
                if best is None or cost < best[0]:
                    best = (cost, (dx, dy, ring), box)
                if cost == 0:
                    break
            if best[0] == 0:
                break
        probe.remove()
        _, (dx, dy, ring), box = best
        leader = {"arrowstyle": "-", "color": label.color, "linewidth": 0.5, "shrinkA": 0, "shrinkB": 2}
        annotation = axes.annotate(
            label.text,
            (label.x, label.y),
            xytext=(0, 0),
            textcoords="offset points",
            fontsize=fontsize,
            color=label.color,
            arrowprops=leader if ring > _RINGS[0] else None,
        )
        _aim(annotation, dx, dy, ring)
        annotation.set_in_layout(False)
        taken.append(box)
        annotations.append(annotation)
    return annotations


def _aim(annotation, dx: int, dy: int, ring: float) -> None:
    annotation.xyann = (dx * ring, dy * ring)
    annotation.set_horizontalalignment(_ALIGN[dx])
    annotation.set_verticalalignment(_VALIGN[dy])
