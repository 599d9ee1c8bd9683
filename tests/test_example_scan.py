"""The scan on the synthetic tasks it is shown on (examples/scan_shapes.py): the quick start's shapes, where the
object's box is the truth, and the fine-grained marks, where only a small bar decides the class. Each model
is trained here with fixed seeds; the ranking is made on one held-out set and checked on another."""

from __future__ import annotations

import time

import numpy as np
import pytest

from examples.quickstart import peak_inside_box
from examples.scan_shapes import TASKS, scan_task, trained_model
from onnx_gradcam import Explainer, list_layers
from onnx_gradcam.graph.places import CUT

pytestmark = pytest.mark.slow

SCANNED, CHECKED = 100, 200
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """task -> (model path, scan result): the scan's defaults over every candidate layer, timed."""
    folder = tmp_path_factory.mktemp("scan")
    found = {}
    for task in TASKS:
        path = trained_model(task, str(folder))
        started = time.perf_counter()
        found[task] = path, scan_task(task, path, SCANNED, str(folder / task), faithfulness=None, progress=False)
        TIMES[task] = time.perf_counter() - started
    return found


def _top(result) -> dict:
    return result.rows[result.ranking[0]]


def test_scan_covers_every_candidate_layer_in_under_three_minutes(scans):
    path, result = scans["shapes"]
    assert [row["layer"] for row in result.rows] == [layer.display_name for layer in list_layers(path)]
    assert TIMES["shapes"] < 180, f"the scan took {TIMES['shapes']:.0f} s"
    assert all(row["images"] == SCANNED for row in result.rows)
    for row in result.rows:
        for name in result.directions:
            assert np.isfinite(row[name]), (row["layer"], name)
    # scores differ from layer to layer: each row is its own layer's
    assert len({round(row["pointing_game"], 6) for row in result.rows}) > 3


def test_top_layer_of_the_shapes_scan_hits_the_box_on_held_out_images(scans):
    path, result = scans["shapes"]
    top = _top(result)
    assert top["kind"] == CUT
    make, _ = TASKS["shapes"]
    images, labels, boxes = make(CHECKED, seed=3)  # neither trained on nor scanned
    cams = Explainer(path, layer=top["layer"])(images, labels).cams
    hit = peak_inside_box(cams, boxes).mean()
    assert hit >= 0.9, f"{top['layer']}: {hit:.1%}"


def test_fine_grained_task_ranks_another_layer_first(scans):
    shapes, marks = _top(scans["shapes"][1]), _top(scans["marks"][1])
    assert marks["layer"] != shapes["layer"]
    path, result = scans["marks"]
    make, _ = TASKS["marks"]
    images, labels, boxes = make(CHECKED, seed=3)
    hits = {layer: peak_inside_box(Explainer(path, layer=layer)(images, labels).cams, boxes).mean()
            for layer in (marks["layer"], shapes["layer"])}
    assert hits[marks["layer"]] > hits[shapes["layer"]], hits


def test_report_files_are_written(scans):
    _, result = scans["shapes"]
    assert result.grid_images and all(len(maps) == len(result.grid_images) for maps in result.grid_maps.values())
    assert result.recommendation.startswith(f"Use layer {_top(result)['layer']!r}")
