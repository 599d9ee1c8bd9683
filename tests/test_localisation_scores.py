"""Localisation scores on maps with known answers, their agreement with Quantus 0.6, and the ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from onnx_gradcam.scores.ground_truth import GroundTruth, GroundTruthError, boxes_to_mask, check_mask
from onnx_gradcam.scores.localisation import (
    DEFAULT_THRESHOLDS,
    LOCALISATION,
    LocalisationInputError,
    best_iou,
    energy_pointing_game,
    iou,
    localisation_scores,
    pixel_auc,
    pointing_game,
)

SIZE = (16, 20)
BOX = (3, 4, 11, 10)  # x0 y0 x1 y1: 8 columns by 6 rows
AREA_SHARE = 8 * 6 / (16 * 20)


def _object() -> np.ndarray:
    return boxes_to_mask([BOX], SIZE)[None]


def _gaussian(size, centre, sigma) -> np.ndarray:
    """A separable Gaussian blob (H, W), peak 1: its mass over a box is the product of two 1-D shares."""
    rows, columns = np.arange(size[0]), np.arange(size[1])
    return np.exp(-((rows[:, None] - centre[1]) ** 2 + (columns[None, :] - centre[0]) ** 2) / (2 * sigma ** 2))


# Maps with known answers.

def test_a_perfect_map_scores_the_best_everywhere():
    mask = _object()
    scores = localisation_scores(mask.astype(np.float32), mask)
    assert {name: value.tolist() for name, value in scores.items()} == {name: [1.0] for name in LOCALISATION}


def test_a_uniform_map_scores_chance():
    mask = _object()
    scores = localisation_scores(np.full(mask.shape, 0.5, np.float32), mask)
    assert scores["pointing_game"].tolist() == [1.0]  # every pixel is a maximum and some are on the object
    assert scores["energy_pointing_game"] == pytest.approx([AREA_SHARE], rel=1e-12)
    assert scores["pixel_auc"].tolist() == [0.5]
    # Thresholds up to 0.5 keep every pixel (IoU = the object's share), above 0.5 none (IoU 0).
    assert scores["iou"] == pytest.approx([AREA_SHARE], rel=1e-12)
    assert scores["best_iou"] == pytest.approx([AREA_SHARE], rel=1e-12)
    assert iou(np.full(mask.shape, 0.5, np.float32), mask, threshold=0.55).tolist() == [0.0]


def test_an_inverted_map_scores_the_worst_everywhere():
    mask = _object()
    scores = localisation_scores(1 - mask.astype(np.float32), mask)
    assert {name: value.tolist() for name, value in scores.items()} == {name: [0.0] for name in LOCALISATION}


def test_a_gaussian_blob_on_a_disc():
    """A blob centred on a disc: every disc pixel outranks every other (AUC 1) and thresholding the map at
    its value on the rim gives the disc exactly (IoU 1); at a threshold above the rim's value the region is a
    smaller disc."""
    size, centre, radius, sigma = (21, 21), (10, 10), 5, 4.0
    cam = _gaussian(size, centre, sigma)[None]
    rows, columns = np.mgrid[0:21, 0:21]
    disc = ((rows - 10) ** 2 + (columns - 10) ** 2 <= radius ** 2)[None]
    rim = np.exp(-radius ** 2 / (2 * sigma ** 2))
    assert pointing_game(cam, disc).tolist() == [1.0]
    assert pixel_auc(cam, disc).tolist() == [1.0]
    assert iou(cam, disc, threshold=rim).tolist() == [1.0]
    assert iou(cam, disc, threshold=np.exp(-9 / (2 * sigma ** 2))).tolist() == [29 / disc.sum()]  # radius 3 disc
    assert best_iou(cam, disc, thresholds=(0.3, rim, 0.9)).tolist() == [1.0]


def test_the_energy_of_a_separable_blob_is_the_product_of_its_shares():
    cam = _gaussian(SIZE, (5.3, 8.6), 3.0)
    x0, y0, x1, y1 = BOX
    columns, rows = cam[0] / cam[0].max(), cam[:, 0] / cam[:, 0].max()
    expected = columns[x0:x1].sum() / columns.sum() * rows[y0:y1].sum() / rows.sum()
    assert energy_pointing_game(cam[None], _object()) == pytest.approx([expected], rel=1e-12)
    assert 0 < expected < 1


def test_an_all_zero_map_has_no_energy_score_and_leaves_the_others_alone():
    mask = np.concatenate([_object(), _object()])
    cams = np.stack([np.zeros(SIZE), mask[1].astype(np.float64)])
    energy = energy_pointing_game(cams, mask)
    assert np.isnan(energy[0]) and energy[1] == 1.0


def test_ties_follow_quantus_any_maximum_on_the_object_counts():
    mask = _object()
    cam = np.zeros((1, *SIZE))
    cam[0, 0, 0] = cam[0, 5, 5] = 1.0  # one maximum in the corner, one on the object
    assert pointing_game(cam, mask).tolist() == [1.0]
    cam[0, 5, 5] = 0.9
    assert pointing_game(cam, mask).tolist() == [0.0]


def test_the_auc_counts_ties_half_as_the_pairwise_mann_whitney_statistic():
    rng = np.random.default_rng(3)
    cams = np.round(rng.random((5, 8, 8)) * 4) / 4  # five levels: many ties
    masks = rng.random((5, 8, 8)) < 0.3
    for cam, mask, auc in zip(cams, masks, pixel_auc(cams, masks)):
        positives, negatives = cam[mask][:, None], cam[~mask][None, :]
        pairs = (positives > negatives).sum() + 0.5 * (positives == negatives).sum()
        assert auc == pytest.approx(pairs / (positives.size * negatives.size), rel=1e-12)


def test_the_registry_names_each_paper_and_direction():
    assert set(LOCALISATION) == {"pointing_game", "energy_pointing_game", "iou", "best_iou", "pixel_auc"}
    assert all(score.higher_is_better and score.paper for score in LOCALISATION.values())
    assert DEFAULT_THRESHOLDS[0] == 0.05 and DEFAULT_THRESHOLDS[-1] == 0.95 and len(DEFAULT_THRESHOLDS) == 19


@pytest.mark.parametrize("cams, masks, match", [
    (np.zeros((2, 16, 20), np.float32), np.ones((2, 16, 21), bool), r"\(2, 16, 20\).*\(2, 16, 21\)"),
    (np.zeros((16, 20), np.float32), np.ones((16, 20), bool), r"\(N, H, W\).*\(16, 20\)"),
    (np.zeros((1, 16, 20), np.int64), _object(), "float array.*int64"),
    (np.full((1, 16, 20), 1.5), _object(), r"in \[0, 1\].*images \[0\]"),
    (np.full((1, 16, 20), np.nan), _object(), "finite"),
    (np.zeros((1, 16, 20)), _object() * 255, "bool or 0/1"),
    (np.zeros((2, 16, 20)), np.concatenate([_object(), np.zeros((1, *SIZE), bool)]), r"images \[1\].*no object"),
])
def test_bad_input_is_refused_naming_what_is_wrong(cams, masks, match):
    with pytest.raises(LocalisationInputError, match=match):
        localisation_scores(cams, masks)


def test_an_auc_needs_background_and_thresholds_need_the_maps_range():
    with pytest.raises(LocalisationInputError, match="cover the whole image"):
        pixel_auc(np.zeros((1, *SIZE)), np.ones((1, *SIZE), bool))
    with pytest.raises(LocalisationInputError, match=r"threshold must be in \[0, 1\].*1.5"):
        iou(np.zeros((1, *SIZE)), _object(), threshold=1.5)
    with pytest.raises(LocalisationInputError, match="thresholds must be"):
        best_iou(np.zeros((1, *SIZE)), _object(), thresholds=())


def test_zero_one_masks_of_another_type_score_as_bool():
    cam = _gaussian(SIZE, (6, 7), 3.0)[None]
    expected = localisation_scores(cam, _object())
    got = localisation_scores(cam, _object().astype(np.uint8))
    assert all(np.array_equal(got[name], expected[name]) for name in LOCALISATION)


# Agreement with Quantus 0.6.

@pytest.fixture(scope="module")
def quantus():
    import torch  # noqa: F401  (before TensorFlow, which Quantus imports; see conftest)
    import quantus

    return quantus


@pytest.fixture(scope="module")
def random_maps():
    """30 float32 maps (32 x 40) with masks of one or two random boxes. Each map is a Gaussian blob near the
    first box's centre (up to 8 pixels off, so some hit and some miss), sometimes with a second blob anywhere,
    min-max normalised as the explainer's maps are. A third of the maps are clipped flat at the top (several
    maxima, some on the object and some not) and a third quantised to eight levels (ties for the AUC)."""
    rng = np.random.default_rng(0)
    size = (32, 40)
    cams, masks = [], []
    for i in range(30):
        boxes = []
        for _ in range(rng.integers(1, 3)):
            x0, y0 = rng.integers(0, 30), rng.integers(0, 24)
            boxes.append((x0, y0, x0 + rng.integers(3, 11), y0 + rng.integers(3, 9)))
        masks.append(boxes_to_mask(boxes, size))
        x0, y0, x1, y1 = boxes[0]
        centres = [((x0 + x1) / 2 + rng.uniform(-8, 8), (y0 + y1) / 2 + rng.uniform(-8, 8))]
        centres += [rng.uniform((0, 0), (40, 32)) for _ in range(rng.integers(0, 2))]
        cam = sum(_gaussian(size, centre, rng.uniform(2, 8)) for centre in centres)
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        if i % 3 == 1:
            cam = np.minimum(cam, 0.7) / 0.7
        elif i % 3 == 2:
            cam = np.round(cam * 7) / 7
        cams.append(cam.astype(np.float32))
    return np.stack(cams), np.stack(masks)


def _quantus_scores(metric, cams, masks) -> np.ndarray:
    """A Quantus localisation metric on our maps and masks. These metrics only read the attributions and the
    segmentations (no model is run), so model is None and x_batch is zeros of the maps' (N, 1, H, W) shape.
    normalise=False: Quantus would divide each map by its max, which the scores here do not do (and which
    changes none of these scores, as each is invariant to a positive scale, but may nudge float ties)."""
    batch = (len(cams), 1, *cams.shape[1:])
    return np.asarray(metric(model=None, x_batch=np.zeros(batch, np.float32), y_batch=np.zeros(len(cams), int),
                             a_batch=cams.reshape(batch), s_batch=masks.reshape(batch).astype(np.float32),
                             channel_first=True), np.float64)


def test_the_maps_exercise_hits_misses_and_ties(random_maps):
    cams, masks = random_maps
    hits = pointing_game(cams, masks)
    assert 5 <= hits.sum() <= 25  # neither all hits nor all misses: agreement below means something
    at_max = cams == cams.max(axis=(1, 2), keepdims=True)
    split = (at_max & masks).any(axis=(1, 2)) & (at_max & ~masks).any(axis=(1, 2))
    assert split.sum() >= 5  # maxima both on and off the object: where the tie rule decides


def test_pointing_game_equals_quantus(quantus, random_maps):
    cams, masks = random_maps
    expected = _quantus_scores(quantus.PointingGame(abs=False, normalise=False, disable_warnings=True), cams, masks)
    np.testing.assert_array_equal(pointing_game(cams, masks), expected)


def test_energy_pointing_game_equals_quantus_attribution_localisation(quantus, random_maps):
    """Quantus's AttributionLocalisation (Kohlbrenner et al. 2020) with weighted=False is the inside share
    sum(a * s) / (sum(a) + 1e-9), which is the energy-based pointing game of Score-CAM. Its abs=True
    default is the identity on maps in [0, 1], so it is kept (abs=False only prints a warning)."""
    cams, masks = random_maps
    metric = quantus.AttributionLocalisation(weighted=False, abs=True, normalise=False, disable_warnings=True)
    expected = _quantus_scores(metric, cams, masks)
    # Quantus sums in float32 (pairwise over 1280 pixels: relative error ~1e-7; seen: 1.6e-7), here in
    # float64, and its 1e-9 guard on sums of tens moves the ratio by ~1e-10; 1e-6 covers both with room,
    # while a wrong definition differs by far more (a mask one row off moves every score by over 1e-2).
    np.testing.assert_allclose(energy_pointing_game(cams, masks), expected, rtol=1e-6, atol=0)


def test_pixel_auc_equals_quantus_auc(quantus, random_maps):
    cams, masks = random_maps
    expected = _quantus_scores(quantus.AUC(abs=False, normalise=False, disable_warnings=True), cams, masks)
    # scikit-learn's trapezoidal ROC area on the same float32 values: the same ties, and both sides sum
    # counts in float64 (here ranks, there the trapezoids), so they agree to rounding (seen: 1e-16), far
    # inside 1e-12; one tied pair counted whole instead of half moves an AUC by 0.5 / (P * N), over 1e-6 here.
    np.testing.assert_allclose(pixel_auc(cams, masks), expected, rtol=1e-12, atol=0)


# Ground truth.

def test_boxes_are_united_with_exclusive_ends_and_fractions_round_by_pixel_centres():
    mask = boxes_to_mask([(1, 0, 3, 2), (2, 1, 4, 3)], (4, 5))
    assert mask.astype(int).tolist() == [[0, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]
    # Columns whose centre (c + 0.5) lies in [0.4, 2.6): 0, 1, 2; rows in [0.6, 1.6): 1 only.
    assert np.argwhere(boxes_to_mask((0.4, 0.6, 2.6, 1.6), (4, 5))).tolist() == [[1, 0], [1, 1], [1, 2]]


@pytest.mark.parametrize("box, match", [
    ((0, 0, 6, 2), r"box \(0, 0, 6, 2\) reaches outside the 4x5 \(H x W\) image"),
    ((-1, 0, 2, 2), r"box \(-1, 0, 2, 2\) reaches outside the 4x5"),
    ((0, 1, 2, 5), r"box \(0, 1, 2, 5\) reaches outside the 4x5"),
    ((2, 0, 2, 2), r"box \(2, 0, 2, 2\) is empty.*x1 > x0"),
    ((0, 3, 2, 1), r"box \(0, 3, 2, 1\) is empty"),
    ((2.6, 0, 3.4, 2), "covers no pixel centre"),
])
def test_a_box_that_does_not_fit_the_image_is_refused(box, match):
    with pytest.raises(GroundTruthError, match=match):
        boxes_to_mask([box], (4, 5))


def test_a_mask_must_fit_the_image_and_hold_an_object_and_background():
    with pytest.raises(GroundTruthError, match=r"cat: the mask is 8x9 \(H x W\) but the image is 4x5.*nearest"):
        check_mask(np.ones((8, 9), bool), (4, 5), "cat")
    with pytest.raises(GroundTruthError, match="cat: the mask has no object pixel"):
        check_mask(np.zeros((4, 5), np.uint8), (4, 5), "cat")
    with pytest.raises(GroundTruthError, match="covers the whole image"):
        check_mask(np.full((4, 5), 255, np.uint8), (4, 5), "cat")
    labelled = np.array([[0, 255, 3], [0, 0, -1]])
    assert check_mask(labelled, (2, 3), "cat").tolist() == [[False, True, True], [False, False, False]]


def test_boxes_csv_round_trip_with_rows_united(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image,x0,y0,x1,y1\nval/cat.png,1,0,3,2\nval/cat.png,2,1,4,3\ndog.jpg,0,0,1,1\n")
    truth = GroundTruth.from_boxes_file(path)
    assert truth.keys() == ["val/cat.png", "dog.jpg"]
    expected = boxes_to_mask([(1, 0, 3, 2), (2, 1, 4, 3)], (4, 5))
    assert np.array_equal(truth.mask_for("val/cat.png", (4, 5)), expected)
    assert np.array_equal(truth.mask_for("/elsewhere/cat.png", (4, 5)), expected)  # by base name
    assert np.array_equal(truth.mask_for("dog.png", (4, 5)), boxes_to_mask([(0, 0, 1, 1)], (4, 5)))  # by stem
    assert truth.mask_for("bird.png", (4, 5)) is None


def test_boxes_json_round_trip(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"cat.png": [[1, 0, 3, 2], [2, 1, 4, 3]]}))
    truth = GroundTruth.from_boxes_file(path)
    assert np.array_equal(truth.mask_for("cat.png", (4, 5)), boxes_to_mask([(1, 0, 3, 2), (2, 1, 4, 3)], (4, 5)))
    with pytest.raises(GroundTruthError, match=r"'cat.png' in .*boxes.json: box \(1, 0, 3, 2\) reaches outside"):
        truth.mask_for("cat.png", (1, 5))


@pytest.mark.parametrize("text, match", [
    ("image,x0,y0,x1,y1\ncat.png,1,0,3,2\ncat.png,1,zero,3,2\n", r"boxes.csv, line 3: .*numbers.*1,zero,3,2"),
    ("image,x0,y0,x1,y1\ncat.png,1,0,3\n", r"boxes.csv, line 2: expected an image name and 4 numbers"),
    ("image,x0,y0,x1,y1\ncat.png,3,0,1,2\n", r"boxes.csv, line 2: box \(3, 0, 1, 2\) is empty"),
    ("name,left,top,right,bottom\ncat.png,1,0,3,2\n", r"boxes.csv, line 1: the header must be image,x0,y0,x1,y1"),
    ("image,x0,y0,x1,y1\n", "boxes.csv: no boxes"),
])
def test_a_malformed_boxes_csv_names_the_file_and_line(tmp_path, text, match):
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    with pytest.raises(GroundTruthError, match=match):
        GroundTruth.from_boxes_file(path)


def test_a_malformed_boxes_json_or_an_unknown_extension_is_refused(tmp_path):
    (tmp_path / "boxes.json").write_text('{"cat.png": [[1, 0, 3]]}')
    with pytest.raises(GroundTruthError, match=r"boxes.json, image 'cat.png': expected a non-empty list"):
        GroundTruth.from_boxes_file(tmp_path / "boxes.json")
    (tmp_path / "broken.json").write_text('{"cat.png":\n [[1, 0, 3, 2]')
    with pytest.raises(GroundTruthError, match=r"broken.json, line 2: not valid JSON"):
        GroundTruth.from_boxes_file(tmp_path / "broken.json")
    (tmp_path / "boxes.txt").write_text("")
    with pytest.raises(GroundTruthError, match=r"must be .csv .* or .json .*got .txt"):
        GroundTruth.from_boxes_file(tmp_path / "boxes.txt")


def test_an_ambiguous_base_name_is_refused(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image,x0,y0,x1,y1\ntrain/cat.png,0,0,2,2\nval/cat.png,1,1,3,3\n")
    truth = GroundTruth.from_boxes_file(path)
    assert truth.mask_for("val/cat.png", (4, 5))[1, 1]  # the path as given is not ambiguous
    with pytest.raises(GroundTruthError, match=r"'test/cat.png' is ambiguous: its name matches 'train/cat.png', "
                                               r"'val/cat.png'"):
        truth.mask_for("test/cat.png", (4, 5))


def test_masks_folder_round_trip(tmp_path):
    cat = np.zeros((4, 5), np.uint8)
    cat[1:3, 2:4] = 255
    Image.fromarray(cat).save(tmp_path / "cat.png")
    Image.fromarray(np.eye(4, 5, dtype=np.uint8)).save(tmp_path / "dog.bmp")  # 0/1 values
    Image.fromarray(cat).save(tmp_path / "cat.2024.png")  # a stem with a dot
    (tmp_path / "notes.txt").write_text("not a mask")
    truth = GroundTruth.from_masks_folder(tmp_path)
    assert sorted(truth.keys()) == ["cat.2024.png", "cat.png", "dog.bmp"]
    assert np.array_equal(truth.mask_for("cat.2024.jpg", (4, 5)), cat > 0)
    assert np.array_equal(truth.mask_for("images/cat.jpg", (4, 5)), cat > 0)
    assert np.array_equal(truth.mask_for("dog.png", (4, 5)), np.eye(4, 5, dtype=bool))
    assert truth.mask_for("bird.jpg", (4, 5)) is None
    with pytest.raises(GroundTruthError, match=r"cat.png: the mask is 4x5 \(H x W\) but the image is 8x10"):
        truth.mask_for("cat.jpg", (8, 10))


def test_masks_folder_refuses_two_masks_for_one_image(tmp_path):
    Image.fromarray(np.eye(4, dtype=np.uint8)).save(tmp_path / "cat.png")
    Image.fromarray(np.eye(4, dtype=np.uint8)).save(tmp_path / "cat.tif")
    with pytest.raises(GroundTruthError, match="two masks for the image 'cat': cat.png and cat.tif"):
        GroundTruth.from_masks_folder(tmp_path)


def test_ground_truth_from_arrays_goes_by_index():
    masks = np.zeros((2, 4, 5), np.uint8)
    masks[0, 1, 1] = masks[1, 2, 3] = 1
    truth = GroundTruth.from_arrays(masks)
    assert len(truth) == 2 and np.argwhere(truth.mask_for_index(1, (4, 5))).tolist() == [[2, 3]]
    with pytest.raises(GroundTruthError, match="has no image 2"):
        truth.mask_for_index(2, (4, 5))
    with pytest.raises(GroundTruthError, match="goes by image index: use mask_for_index"):
        truth.mask_for("cat.png", (4, 5))
    one_each = GroundTruth.from_arrays(np.array([[0, 0, 2, 2], [1, 1, 3, 3]]))
    assert np.array_equal(one_each.mask_for_index(1, (4, 5)), boxes_to_mask([(1, 1, 3, 3)], (4, 5)))
    several = GroundTruth.from_arrays([[(0, 0, 1, 1), (3, 2, 5, 4)], [(1, 1, 3, 3)]])
    assert np.array_equal(several.mask_for_index(0, (4, 5)), boxes_to_mask([(0, 0, 1, 1), (3, 2, 5, 4)], (4, 5)))
    with pytest.raises(GroundTruthError, match=r"ground truth of image 0: the mask has no object pixel"):
        GroundTruth.from_arrays(np.zeros((1, 4, 5))).mask_for_index(0, (4, 5))
    with pytest.raises(GroundTruthError, match=r"ground truth of image 1: box \(3, 0, 1, 2\) is empty"):
        GroundTruth.from_arrays([[(0, 0, 1, 1)], [(3, 0, 1, 2)]])
    with pytest.raises(GroundTruthError, match=r"ground truth of image 0: box \(2, 2, 0, 0\) is empty"):
        GroundTruth.from_arrays(np.array([[2, 2, 0, 0]]))
    with pytest.raises(GroundTruthError, match=r"masks \(N, H, W\), boxes \(N, 4\).*shape \(3, 5\)"):
        GroundTruth.from_arrays(np.zeros((3, 5)))
