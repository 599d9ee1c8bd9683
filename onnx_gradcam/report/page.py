"""report.html: one self-contained page (pictures as data URIs, the style inline, no script, no link out).

Its Content-Security-Policy allows nothing but inline style and data-URI images, so a browser opening the
file fetches nothing and runs nothing. Every string from the scan is escaped (:func:`html.escape`).
Element ids: ``recommendation``, ``notes``, ``scores-table``, ``depth-plot``, ``picture-grid``.
"""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

from .tables import best_values, columns, finite, format_score, ranked_rows

if TYPE_CHECKING:
    from . import ScanResult

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2127;
       background: #f6f7f9; margin: 0; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; }
.summary { color: #59606b; margin: 0 0 18px; }
#recommendation { background: #fff; border-left: 6px solid #d62728; border-radius: 6px; padding: 14px 20px;
                  box-shadow: 0 1px 3px rgba(0,0,0,.08); }
#recommendation .label { text-transform: uppercase; letter-spacing: .06em; font-size: 12px; font-weight: 700;
                         color: #d62728; }
#recommendation p { font-size: 19px; margin: 4px 0 0; }
#notes { background: #fff8e1; border: 1px solid #f0d27a; border-radius: 6px; padding: 8px 20px; margin-top: 16px; }
#notes ul { margin: 6px 0; padding-left: 20px; }
.scroll { overflow-x: auto; background: #fff; border-radius: 6px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e6e8eb; white-space: nowrap; }
th { position: sticky; top: 0; background: #eef0f3; text-align: left; vertical-align: bottom;
     white-space: normal; min-width: 3.5em; }
th.ranked { background: #e2e6ee; text-decoration: underline; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; color: #0b6e2f; background: #e8f5ec; }
td.missing { color: #a0a5ad; }
tr.recommended td { background: #fff1f0; }
tr.recommended td.best { background: #e3f1e3; }
td .tensor { display: block; color: #8a9099; font-size: 11px; }
.legend { color: #59606b; font-size: 13px; margin: 6px 0 0; }
figure { margin: 0; background: #fff; border-radius: 6px; padding: 10px; box-shadow: 0 1px 3px rgba(0,0,0,.08);
         overflow-x: auto; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: #59606b; font-size: 13px; margin-top: 6px; }
footer { color: #8a9099; font-size: 12px; margin-top: 36px; }
"""

HEADINGS = {"layer": "layer", "tensor": "tensor", "method": "method", "kind": "place", "depth": "depth",
            "stride": "stride", "images": "images", "rank": "rank"}
NUMERIC = frozenset({"rank", "depth", "stride", "images"})


def report_page(result: ScanResult, plot_png: bytes, grid_png: bytes, files: list[str]) -> str:
    e = _escape
    rows = ranked_rows(result)
    layers = len({row.get("layer") for row in rows})
    methods = len({row.get("method") for row in rows})
    counts = [row["images"] for row in rows if finite(row.get("images"))]
    scored = f"scored on up to {_number(max(counts))} image{'s' * (max(counts) != 1)}; " if counts else ""
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(result.title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>", "<main>",
        f"<h1>{e(result.title)}</h1>",
        f'<p class="summary">{layers} layer{"s" * (layers != 1)} × {methods} method{"s" * (methods != 1)}, '
        f"{e(scored)}ranked by {e(', '.join(result.rank_by)) or 'nothing'}.</p>",
        '<section id="recommendation"><div class="label">Recommendation</div>'
        f"<p>{e(result.recommendation)}</p></section>",
    ]
    if result.notes:
        parts.append('<section id="notes"><strong>Notes</strong><ul>'
                     + "".join(f"<li>{e(note)}</li>" for note in result.notes) + "</ul></section>")
    parts += ["<h2>Scores</h2>", _table(result, rows),
              '<p class="legend">↑ higher is better, ↓ lower is better; the best value of each column in bold '
              "green, the scores the ranking used underlined, the recommended row tinted; – no value.</p>",
              "<h2>Scores by depth</h2>",
              f'<figure><img id="depth-plot" src="{_data_uri(plot_png)}" alt="each score against the depth of '
              'its layer, a line per method, markers by place, the recommended layer ringed">'
              "<figcaption>Each score against the layer's depth, a line per method; the marker says the place "
              "(cut, inside a residual branch, branch before a merge); the ring is the recommended layer."
              "</figcaption></figure>",
              "<h2>Pictures</h2>",
              f'<figure><img id="picture-grid" src="{_data_uri(grid_png)}" alt="the maps of each column overlaid '
              'on each image">'
              "<figcaption>A row per image (captioned under it), a column per layer and method.</figcaption>"
              "</figure>",
              f"<footer>Written with this page: {e(', '.join(files))}.</footer>",
              "</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _table(result: ScanResult, rows: list[dict]) -> str:
    e = _escape
    names = [name for name in columns(result) if name != "tensor"]  # the tensor goes under its layer's name
    scores = set(result.directions)
    best = best_values(result)
    head = []
    for name in names:
        classes = ["num"] if name in scores or name in NUMERIC else []
        if name in scores:
            higher = result.directions[name]
            arrow = "↑" if higher else "↓"
            title = f"{name}: {'higher' if higher else 'lower'} is better"
            if name in result.rank_by:
                classes.append("ranked")
                title += "; used in the ranking"
            label = f'{_breakable(name)} <span aria-hidden="true">{arrow}</span>'
        else:
            title, label = HEADINGS.get(name, name), e(HEADINGS.get(name, name))
        head.append(f'<th scope="col"{_classes(classes)} title="{e(title)}">{label}</th>')
    body = []
    for row in rows:
        cells = []
        for name in names:
            value = row.get(name)
            if name in scores:
                classes = ["num"]
                if not finite(value):
                    classes.append("missing")
                elif name in best and value == best[name]:
                    classes.append("best")
                cells.append(f"<td{_classes(classes)}>{e(format_score(value))}</td>")
            elif name == "layer":
                tensor = row.get("tensor")
                under = (f'<span class="tensor">{e(tensor)}</span>'
                         if tensor is not None and str(tensor) != str(value) else "")
                cells.append(f"<td>{e(_number(value))}{under}</td>")
            else:
                cells.append(f"<td{_classes(['num'] if name in NUMERIC else [])}>{e(_number(value))}</td>")
        body.append(f"<tr{_classes(['recommended'] if row['rank'] == 1 else [])}>" + "".join(cells) + "</tr>")
    return ('<div class="scroll"><table id="scores-table"><thead><tr>' + "".join(head) + "</tr></thead><tbody>"
            + "\n".join(body) + "</tbody></table></div>")


def _breakable(name: str) -> str:
    """A score's name, escaped, that a narrow column may wrap after its underscores."""
    return _escape(name).replace("_", "_<wbr>")


def _classes(names: list[str]) -> str:
    return f' class="{" ".join(names)}"' if names else ""


def _number(value) -> str:
    """Non-score cells: integers as they are, other numbers briefly (a stride of 8.0 as 8), None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}" if finite(value) else "–"
    return str(value)


def _escape(value) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

