"""The scan's report: scores.csv, scores.json, the two pictures and report.html, from a ScanResult made by hand.

The HTML is opened in headless Chromium (tests/browser.py) to check what a reader gets: the table, the
pictures loaded, the recommendation, and no console error.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import numpy as np
import pytest
from PIL import Image

from onnx_gradcam.report import ScanResult, write_report

from browser import INSTALL_HINT, Browser

# The names the scan's place finder gives (onnx_gradcam.graph.places).
KINDS = ["cut", "inside a residual branch", "branch before a merge"]
DIRECTIONS = {"pointing_game": True, "energy_pointing_game": True, "iou": True, "deletion_auc": False,
              "insertion_auc": True, "average_drop": False}
RECOMMENDATION = 'Use layer4 <out> & "friends" with gradcam: it ranks first on insertion and deletion AUC.'


def _layer(number: int) -> str:
    """Layer names as users type them, some with the characters HTML, CSV and matplotlib care about."""
    return {3: "block<3>/add", 5: "a&b.relu", 7: 'quote"d,name', 9: "cost$5$"}.get(number, f"layer{number}.conv")


def make_result(layers: int = 12, methods=("gradcam", "gradcam++"), seed: int = 0) -> ScanResult:
    """Made-up but plausible scores that get better with depth, a NaN, three kinds of place, a few pictures."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(layers):
        for shift, method in enumerate(methods):
            quality = (number + 1) / layers - 0.05 * shift + rng.normal(0, 0.04)
            rows.append({"layer": _layer(number), "tensor": f"/model/{_layer(number)}/output_0", "method": method,
                         "kind": KINDS[number % 3], "depth": 2 * number + 1, "stride": float(2 ** min(5, number // 2)),
                         "images": 16 - (number == 4),
                         "pointing_game": float(np.clip(quality, 0, 1)),
                         "energy_pointing_game": float(np.clip(0.3 + 0.5 * quality, 0, 1)),
                         "iou": float(np.clip(0.1 + 0.4 * quality, 0, 1)),
                         "deletion_auc": np.float32(np.clip(0.4 - 0.3 * quality, 0, 1)),  # numpy scalars too
                         "insertion_auc": float(np.clip(0.3 + 0.5 * quality, 0, 1)),
                         "average_drop": float(60 - 40 * quality)})
    rows[min(5, len(rows) - 1)]["iou"] = math.nan
    rows[min(2, len(rows) - 1)]["pointing_game"] = 1.0  # a shallow layer that happens to point well: not the top
    ranking = sorted(range(len(rows)), key=lambda i: rows[i]["deletion_auc"] - rows[i]["insertion_auc"])
    images = [np.clip(np.stack([np.linspace(0, 1, 64)[None].repeat(48, 0)] * 3, -1) * (0.5 + 0.2 * k), 0, 1)
              for k in range(3)]
    yy, xx = np.mgrid[0:48, 0:64]
    blob = [np.exp(-((xx - 10 - 20 * k) ** 2 + (yy - 24) ** 2) / 120.0) for k in range(3)]
    best = rows[ranking[0]]
    grid_maps = {f"{best['layer']} · {best['method']}": blob,
                 f"{_layer(3)} · gradcam": [b[::-1] for b in blob],
                 "a very long layer name that has to wrap / over.several.lines · gradcam++":
                     [b.T[:48, :48] for b in blob]}
    return ScanResult(rows=rows, directions=dict(DIRECTIONS), rank_by=["deletion_auc", "insertion_auc"],
                      ranking=ranking, recommendation=RECOMMENDATION, grid_images=images,
                      grid_labels=["tench.jpg, tench", "dog <1>.png, beagle", "cat & co.png, tabby"],
                      grid_maps=grid_maps, title="scan of <tiny> & co",
                      notes=["2 images skipped: <unreadable> & too small"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    result = make_result()
    return result, write_report(result, str(tmp_path_factory.mktemp("report") / "out"))


def test_write_report_writes_the_five_files(report):
    _, paths = report
    assert set(paths) == {"csv", "json", "plot", "grid", "html"}
    assert [p.rsplit("/", 1)[1] for p in paths.values()] == [
        "scores.csv", "scores.json", "scores_by_depth.png", "grid.png", "report.html"]


def test_csv_holds_every_row_in_rank_order_with_nan_empty(report):
    result, paths = report
    with open(paths["csv"], newline="", encoding="utf-8") as file:
        lines = list(csv.DictReader(file))
    assert len(lines) == len(result.rows) == 24
    assert list(lines[0])[:8] == ["rank", "layer", "tensor", "method", "kind", "depth", "stride", "images"]
    assert list(lines[0])[8:] == list(DIRECTIONS)
    for rank, (line, index) in enumerate(zip(lines, result.ranking), 1):
        row = result.rows[index]
        assert int(line["rank"]) == rank
        assert (line["layer"], line["method"], line["kind"]) == (row["layer"], row["method"], row["kind"])
        assert int(line["depth"]) == row["depth"] and int(line["images"]) == row["images"]
        for name in DIRECTIONS:
            if math.isnan(row[name]):
                assert line[name] == ""
            else:
                assert float(line[name]) == pytest.approx(float(row[name]), rel=1e-12)
    assert sum(line["iou"] == "" for line in lines) == 1
    assert 'quote"d,name' in {line["layer"] for line in lines}  # quoted by the CSV writer, read back whole


def test_json_is_strict_and_matches_the_rows(report):
    result, paths = report
    with open(paths["json"], encoding="utf-8") as file:
        document = json.load(file, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert document["directions"] == DIRECTIONS
    assert document["rank_by"] == ["deletion_auc", "insertion_auc"]
    assert document["recommendation"] == RECOMMENDATION and document["notes"] == result.notes
    assert [row["rank"] for row in document["rows"]] == list(range(1, 25))
    for row, index in zip(document["rows"], result.ranking):
        expected = result.rows[index]
        assert set(row) == {"rank", *expected}
        for key, value in expected.items():
            if isinstance(value, (float, np.floating)) and math.isnan(value):
                assert row[key] is None
            elif isinstance(value, (float, np.floating)):
                assert row[key] == pytest.approx(float(value), rel=1e-12)
            else:
                assert row[key] == value


def test_pictures_open_at_a_sensible_size_and_are_not_blank(report):
    result, paths = report
    for kind, least in (("plot", (600, 400)), ("grid", (4 * 168, 3 * 126))):
        with Image.open(paths[kind]) as picture:
            assert picture.format == "PNG"
            width, height = picture.size
            assert least[0] <= width <= 4000 and least[1] <= height <= 4000, (kind, picture.size)
            pixels = np.asarray(picture.convert("RGB"), dtype=float)
            assert pixels.var() > 0, kind
    # The grid: a header band, then 3 rows of the 4 columns (image + 3 maps), coloured where the maps are.
    grid = np.asarray(Image.open(paths["grid"]).convert("RGB"), dtype=int)
    assert (np.abs(grid[..., 0] - grid[..., 2]) > 100).mean() > 0.05


def test_the_plot_takes_one_row_and_many_layers_of_three_methods(tmp_path):
    one = make_result(layers=1, methods=("gradcam",))
    assert len(one.rows) == 1
    many = make_result(layers=40, methods=("gradcam", "gradcam++", "layercam"))
    for name, result in (("one", one), ("many", many)):
        path = write_report(result, str(tmp_path / name))["plot"]
        with Image.open(path) as picture:
            assert np.asarray(picture.convert("L"), dtype=float).var() > 0


def test_sparse_results_still_make_every_file(tmp_path):
    """Rows without a place or a depth, a score with no value at all, an infinity, a missing map, no pictures."""
    rows = [{"layer": "x", "method": "gradcam", "s": math.inf, "t": math.nan},
            {"layer": "y", "method": "gradcam", "kind": "cut", "depth": 3, "s": np.float64(0.5), "t": math.nan}]
    result = ScanResult(rows=rows, directions={"s": True, "t": False}, rank_by=["s"], ranking=[1, 0],
                        recommendation="y", grid_images=[np.zeros((30, 40, 3))], grid_labels=["black"],
                        grid_maps={"y · gradcam": [None]})
    paths = write_report(result, str(tmp_path / "one"))
    with open(paths["json"], encoding="utf-8") as file:
        assert [row["s"] for row in json.load(file)["rows"]] == [0.5, None]
    with open(paths["csv"], newline="", encoding="utf-8") as file:
        assert [(line["s"], line["t"]) for line in csv.DictReader(file)] == [("0.5", ""), ("inf", "")]
    with Image.open(paths["grid"]) as grid:
        assert np.asarray(grid.convert("L"), dtype=float).var() > 0  # the "no map" tile beside a black image
    result.grid_images, result.grid_labels, result.grid_maps = [], [], {}
    assert all(os.path.getsize(path) > 0 for path in write_report(result, str(tmp_path / "two")).values())


def test_no_pyplot_and_no_backend_change(tmp_path):
    import matplotlib

    had_pyplot = "matplotlib.pyplot" in sys.modules
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    write_report(make_result(layers=2), str(tmp_path))
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_a_ranking_that_is_not_each_row_once_is_refused_before_writing(tmp_path):
    result = make_result(layers=2)
    result.ranking = [0, 0, 1, 2]
    with pytest.raises(ValueError, match="each of the 4 rows once"):
        write_report(result, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_html_escapes_the_data_and_fetches_nothing(report):
    _, paths = report
    with open(paths["html"], encoding="utf-8") as file:
        page = file.read()
    assert "block&lt;3&gt;/add" in page and "a&amp;b.relu" in page and "quote&quot;d,name" in page
    assert "<3>" not in page and "<tiny>" not in page and "<unreadable>" not in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 2


def browser() -> Browser:
    """A started headless Chromium; a missing one fails the test (it does not skip it)."""
    try:
        return Browser()
    except FileNotFoundError as error:
        pytest.fail(str(error))


def test_a_missing_chromium_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="install Debian's chromium"):
        Browser()
    assert "scripts/setup.sh" in INSTALL_HINT


def test_the_console_capture_sees_errors(tmp_path):
    """The "no console error" check of the report can fail: a console.error, an uncaught exception and a
    failed load are each reported as errors, a console.log is not."""
    (tmp_path / "boom.html").write_text(
        '<!DOCTYPE html><html><body><p id="p">x</p><script>console.error("boom"); console.log("fine");</script>'
        '<script>undefinedFunction()</script><img src="missing.png"></body></html>')
    (tmp_path / "quiet.html").write_text("<!DOCTYPE html><html><body><p>quiet</p></body></html>")
    with browser() as chromium:
        loud = chromium.open(tmp_path / "boom.html", evaluate={"text": "document.getElementById('p').textContent"})
        quiet = chromium.open(tmp_path / "quiet.html")
    assert loud.values == {"text": "x"} and '<p id="p">x</p>' in loud.dom
    errors = {(message.source, message.text.split("\n")[0]) for message in loud.errors}
    assert ("console", "boom") in errors
    assert any(source == "exception" and "undefinedFunction" in text for source, text in errors)
    assert any(source == "log" and "ERR_FILE_NOT_FOUND" in text for source, text in errors)
    assert [message.text for message in loud.console if message.level == "log"] == ["fine"]
    assert quiet.console == [] and "quiet" in quiet.dom


LOOK = {
    "rows": "document.querySelectorAll('#scores-table tbody tr').length",
    "layers": "[...document.querySelectorAll('#scores-table tbody tr')].map(tr => tr.cells[1].firstChild.textContent)",
    "headers": "[...document.querySelectorAll('#scores-table thead th')].map(th => th.textContent)",
    "best": "[...document.querySelectorAll('#scores-table tbody tr')].map(tr => [...tr.cells]"
            ".map((td, column) => td.classList.contains('best') ? column : -1).filter(column => column >= 0))",
    "recommendation": "document.getElementById('recommendation').textContent",
    "notes": "document.getElementById('notes').textContent",
    "title": "document.title",
    "pictures": "[...document.querySelectorAll('#depth-plot, #picture-grid')].map(img => [img.tagName,"
                " img.src.slice(0, 22), img.complete, img.naturalWidth, img.naturalHeight])",
    "fetched": "[...document.querySelectorAll('[src], [href]')]"
               ".map(e => e.getAttribute('src') || e.getAttribute('href')).filter(url => !url.startsWith('data:'))",
    "scripts": "document.scripts.length",
}


def test_the_report_page_in_chromium(report):
    result, paths = report
    with browser() as chromium:
        page = chromium.open(paths["html"], evaluate=LOOK)
    seen = page.values
    for element in ("scores-table", "depth-plot", "picture-grid", "recommendation"):
        assert f'id="{element}"' in page.dom
    assert seen["rows"] == len(result.rows)
    assert seen["layers"] == [result.rows[index]["layer"] for index in result.ranking]
    assert seen["headers"][:7] == ["rank", "layer", "method", "place", "depth", "stride", "images"]
    assert seen["headers"][7:] == [f"{name} {'↑' if up else '↓'}" for name, up in DIRECTIONS.items()]
    # The best value of each score column is emphasised, wherever it is (columns 7.. are the scores).
    ranked = [result.rows[index] for index in result.ranking]
    expected = [[] for _ in ranked]
    for column, (name, higher) in enumerate(DIRECTIONS.items(), 7):
        values = [float(row[name]) for row in ranked if not math.isnan(row[name])]
        best = max(values) if higher else min(values)
        for number, row in enumerate(ranked):
            if float(row[name]) == best:
                expected[number].append(column)
    assert seen["best"] == expected
    assert 7 not in expected[0] and 8 in expected[0]  # pointing_game's best is not the top row's here
    assert RECOMMENDATION in seen["recommendation"]
    assert "2 images skipped: <unreadable> & too small" in seen["notes"]
    assert seen["title"] == "scan of <tiny> & co"
    plot, grid = seen["pictures"]
    assert plot[:3] == ["IMG", "data:image/png;base64,", True] and plot[3] > 600 and plot[4] > 400
    assert grid[:3] == ["IMG", "data:image/png;base64,", True] and grid[3] > 600 and grid[4] > 300
    assert seen["fetched"] == [] and seen["scripts"] == 0
    assert page.errors == [], page.errors
