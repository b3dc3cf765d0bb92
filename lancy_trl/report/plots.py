"""Plots as inline SVG (matplotlib, text drawn as paths): nothing for a browser to fetch, no font to find.

    svg = lines({"run a": [(1, 0.9), (2, 0.5)]}, "training loss", "step")
    svg = confusion(["neg", "pos"], [[9, 1], [2, 8]], "score")

What each figure draws from the data (lines, bars, cells) carries the class `plot-data`, so a test in a browser can
check that every plot drew something; ids are prefixed per figure, so many SVGs share one page.
"""

from __future__ import annotations

import io
import itertools
import re
from typing import Any

_figures = itertools.count()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "svg.hashsalt": "lancy", "font.size": 9})
    return plt


def _svg(fig: Any) -> str:
    """The figure as SVG markup for inlining: no XML prolog or metadata, its ids prefixed so they stay unique."""
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None,
                                                                  "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    prefix = f"f{next(_figures)}-"
    text = re.sub(r'(url\(#|href="#|id=")', lambda m: m.group(1) + prefix, text)
    return text.replace(f'id="{prefix}data-', f'class="plot-data" id="{prefix}data-')


def lines(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str = "") -> str:
    """One line per series (points sorted by x); a series of one point is drawn as a marker."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for n, (name, points) in enumerate(series.items()):
        xs, ys = zip(*sorted(points)) if points else ((), ())
        (line,) = ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, label=name)
        line.set_gid(f"data-{n}")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _svg(fig)


def bars(values: dict[str, float], title: str, xlabel: str) -> str:
    """Horizontal bars, one per name, the value written at its end."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.35 * len(values)))
    names = list(values)
    drawn = ax.barh(names, [values[n] for n in names], color="#4c72b0")
    for n, bar in enumerate(drawn):
        bar.set_gid(f"data-{n}")
    ax.bar_label(drawn, fmt="%.3g", padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    ax.margins(x=0.15)
    return _svg(fig)


def confusion(labels: list[str], matrix: list[list[int]], title: str) -> str:
    """The confusion matrix as vector cells (rows: the truth, columns: the prediction), counts written in."""
    plt = _pyplot()
    size = 1.2 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    mesh = ax.pcolormesh(matrix, cmap="Blues", edgecolors="white", linewidth=1)
    mesh.set_gid("data-0")
    top = max((max(r) for r in matrix), default=0) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j + 0.5, i + 0.5, str(count), ha="center", va="center",
                    color="white" if count > top / 2 else "black")
    ticks = [i + 0.5 for i in range(len(labels))]
    ax.set_xticks(ticks, labels, rotation=30, ha="right")
    ax.set_yticks(ticks, labels)
    ax.invert_yaxis()
    ax.set(title=title, xlabel="predicted", ylabel="true")
    return _svg(fig)
