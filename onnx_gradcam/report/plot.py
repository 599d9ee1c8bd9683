"""scores_by_depth.png: one panel per score against the layer's depth, a line per method, markers by place.

Drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas: no pyplot, no ``matplotlib.use``, so
the backend and figures of whoever calls the scan are left as they were.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .tables import finite, plain

if TYPE_CHECKING:
    from . import ScanResult

# Marker per kind of place (the names of onnx_gradcam.graph.places); other kinds get the spare ones.
MARKERS = {"cut": "o", "inside a residual branch": "^", "branch before a merge": "s"}
SPARE_MARKERS = ("D", "v", "P", "X", "*")
HIGHLIGHT = "#d62728"
UNKNOWN = "place unknown"  # the legend's name for rows without a kind


def markers_for(kinds) -> dict[str, str]:
    """A marker for each kind in ``kinds`` (first-seen order): the usual ones, then spares in turn."""
    spare = iter(SPARE_MARKERS * (1 + len(kinds) // len(SPARE_MARKERS)))
    return {kind: MARKERS.get(kind) or next(spare) for kind in dict.fromkeys(kinds)}


def plot_scores_by_depth(result: ScanResult, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    rows = [{key: plain(value) for key, value in row.items()} for row in result.rows]
    for row in rows:
        row["kind"] = str(row.get("kind") or UNKNOWN)
    scores = list(result.directions) or ["(no scores)"]
    methods = list(dict.fromkeys(str(row.get("method", "")) for row in rows))
    kinds = markers_for(sorted((row["kind"] for row in rows), key=_kind_order))
    depths = [row["depth"] for row in rows if finite(row.get("depth"))]
    pad = max(1.0, 0.03 * (max(depths) - min(depths))) if depths else 1.0
    colors = _colors(len(methods))
    best = rows[int(result.ranking[0])] if result.ranking else None

    columns = min(3, len(scores))
    panels = math.ceil(len(scores) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.3 * panels + 1.1), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, columns, squeeze=False)
    for axis, score in zip(axes.flat, scores):
        drawn = False
        for method, color in zip(methods, colors):
            points = sorted(((row["depth"], row[score], row["kind"]) for row in rows
                             if str(row.get("method", "")) == method and finite(row.get("depth"))
                             and finite(row.get(score))), key=lambda point: point[0])
            if not points:
                continue
            drawn = True
            axis.plot([p[0] for p in points], [p[1] for p in points], color=color, linewidth=1.2, alpha=0.75,
                      zorder=2)
            for kind, marker in kinds.items():
                chosen = [p for p in points if p[2] == kind]
                if chosen:
                    axis.scatter([p[0] for p in chosen], [p[1] for p in chosen], marker=marker, s=36,
                                 color=color, edgecolors="white", linewidths=0.6, zorder=3)
        if best is not None and finite(best.get("depth")) and finite(best.get(score)):
            axis.scatter([best["depth"]], [best[score]], s=240, facecolors="none", edgecolors=HIGHLIGHT,
                         linewidths=2.0, zorder=4)
        if score in result.directions:
            higher = result.directions[score]
            ranked = " · used to rank" if score in result.rank_by else ""
            axis.set_title(f"{_text(score)}\n{'↑ higher' if higher else '↓ lower'} is better{ranked}",
                           fontsize=10, fontweight="bold" if ranked else "normal")
        if not drawn:
            axis.text(0.5, 0.5, "no values", transform=axis.transAxes, ha="center", va="center", color="grey")
        axis.set_xlabel("depth (convolutions and matrix products from the input)", fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if depths:  # the same range in every panel; a single depth still gets whole-number ticks around it
            axis.set_xlim(min(depths) - pad, max(depths) + pad)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(scores):]:
        axis.set_visible(False)

    handles = [Line2D([], [], color=color, linewidth=1.6, label=_text(method))
               for method, color in zip(methods, colors)]
    handles += [Line2D([], [], linestyle="none", marker=marker, markersize=7, color="dimgray", label=_text(kind))
                for kind, marker in kinds.items()]
    if best is not None:
        label = f"recommended: {best.get('layer', '')} · {best.get('method', '')}"
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=13, markerfacecolor="none",
                              markeredgecolor=HIGHLIGHT, markeredgewidth=2, label=_text(label)))
    across = {1: 3, 2: 5}.get(columns, 7)  # legend entries in a row: as many as the panels' width holds
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), across), frameon=False,
                  fontsize=9)
    figure.savefig(path, dpi=100, facecolor="white")


def _kind_order(kind: str) -> tuple[int, str]:
    """The known kinds in their usual order (cut, residual, branch), other kinds after them by name."""
    known = list(MARKERS)
    return (known.index(kind), "") if kind in known else (len(known), kind)


def _colors(count: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return [palette[index % len(palette)] for index in range(count)]


def _text(text) -> str:
    """``text`` shown as it is: a ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")
