"""Faithfulness scores (onnx_gradcam.scores.faithfulness) on a hand-set "bright square" CNN exported to ONNX.

Oracles: torch's own forward pass for the model and for every score with a closed form (average drop and
increase, the curves' end points, RISE's blur), and Quantus 0.6.0 for the curves: PixelFlipping and
RegionPerturbation for deletion (and insertion, with Quantus stepping through our pixel order from a RISE-blurred
start), ROAD and its noisy linear imputation for ROAD. Every model run here is a float32 CNN on ONNX Runtime
against the same on torch: they agree to about 1e-7, so curves are compared to ``TOLERANCE``.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from onnx_gradcam.scores.faithfulness import (
    FAITHFULNESS,
    average_drop_increase,
    deletion,
    faithfulness_scores,
    insertion,
    road,
)
from onnx_gradcam.scores.predict import session_predictor

SIZE = 24
REGION = (slice(6, 14), slice(10, 18))
"""The square the model looks at: rows 6-13, columns 10-17 of 24 x 24 (64 pixels; with the one-pixel ring its
3 x 3 smoothing reaches, 100 pixels matter)."""
SQUARE = 1
TOLERANCE = 1e-5
"""Probabilities of a float32 model on ONNX Runtime and on torch, from the same (or float32-rounded equal) inputs:
measured differences are about 1e-7, so 1e-5 leaves room for other CPUs without hiding a wrong step or pixel."""


class SquareDetector(torch.nn.Module):
    """Three classes: 1 (square) rises with the mean smoothed brightness of REGION, 0 falls with it, 2 is flat.
    Nothing outside REGION and its ring changes the output, so a map of 1 on REGION is the right explanation."""

    def __init__(self, channels: int):
        super().__init__()
        self.smooth = torch.nn.Conv2d(channels, 1, 3, padding=1, bias=False)
        self.head = torch.nn.Linear(1, 3)
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[(0, 0, *REGION)] = 1.0 / 64
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.smooth.weight.fill_(1.0 / (9 * channels))
            self.head.weight.copy_(torch.tensor([[-8.0], [8.0], [0.0]]))
            self.head.bias.copy_(torch.tensor([4.0, -4.0, 0.0]))

    def forward(self, x):
        evidence = (torch.relu(self.smooth(x)) * self.mask).sum(dim=(1, 2, 3))
        return self.head(evidence[:, None])


def _export(model: torch.nn.Module, channels: int, path) -> str:
    torch.onnx.export(model, torch.zeros(1, channels, SIZE, SIZE), str(path), dynamo=False, input_names=["images"],
                      output_names=["scores"], dynamic_axes={"images": {0: "n"}, "scores": {0: "n"}})
    return str(path)


def _torch_probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
    return torch.softmax(logits, 1).double().numpy()


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """The 3-channel detector (logits out), its ONNX Runtime predictor (probabilities) and its ONNX file."""
    model = SquareDetector(3).eval()
    path = _export(model, 3, tmp_path_factory.mktemp("faithfulness") / "detector.onnx")
    return model, session_predictor(path, providers="CPUExecutionProvider"), path


@pytest.fixture(scope="module")
def quantus():
    import quantus  # after torch (imported above): Quantus imports TensorFlow

    return quantus


def _squares(count: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Dim noise (0 to 0.3) with a bright square (0.6 to 1) on REGION: the detector says class 1 (p about 0.8)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, (count, channels, SIZE, SIZE)).astype(np.float32)
    images[(slice(None), slice(None), *REGION)] = rng.uniform(0.6, 1.0, (count, channels, 8, 8))
    return images


def _maps(count: int) -> dict[str, np.ndarray]:
    perfect = np.zeros((count, SIZE, SIZE), np.float32)
    perfect[(slice(None), *REGION)] = 1.0
    return {"perfect": perfect, "uniform": np.full_like(perfect, 0.5), "inverted": 1.0 - perfect}


def _random_maps(count: int, seed: int) -> np.ndarray:
    """Maps with every value distinct, so any sort (Quantus's is not stable) gives one pixel order."""
    maps = np.random.default_rng(seed).random((count, SIZE, SIZE)).astype(np.float32)
    assert all(len(np.unique(m)) == m.size for m in maps)
    return maps


def _rise_blur(images: np.ndarray) -> np.ndarray:
    """RISE's own insertion substrate (evaluation.py: gkern(11, 5) and conv2d with padding klen // 2)."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    kernel = torch.zeros(3, 3, 11, 11)
    for channel in range(3):
        kernel[channel, channel] = torch.from_numpy(gaussian_filter(impulse, 5).astype(np.float32))
    return torch.nn.functional.conv2d(torch.from_numpy(images), kernel, padding=5).numpy()


# --- the model, the oracle ---------------------------------------------------------------------------------------
def test_onnx_runtime_probabilities_equal_torch(detector, tmp_path):
    model, predict, _ = detector
    images = np.concatenate([_squares(5), np.random.default_rng(1).random((5, 3, SIZE, SIZE), dtype=np.float32)])
    expected = _torch_probabilities(model, images)
    assert np.abs(predict(images) - expected).max() <= TOLERANCE
    assert expected[:5, SQUARE].min() > 0.7 and expected[:5].argmax(1).tolist() == [SQUARE] * 5
    in_batches = session_predictor(detector[2], batch_size=3, providers="CPUExecutionProvider")
    np.testing.assert_allclose(in_batches(images), predict(images), atol=1e-7)
    logits = session_predictor(detector[2], probabilities=False, providers="CPUExecutionProvider")(images)
    with torch.no_grad():
        assert np.abs(logits - model(torch.from_numpy(images)).numpy()).max() <= TOLERANCE
    # A graph that ends in Softmax is read as probabilities already: no second softmax.
    ends_in_softmax = _export(torch.nn.Sequential(model, torch.nn.Softmax(1)).eval(), 3, tmp_path / "softmax.onnx")
    assert np.abs(session_predictor(ends_in_softmax, providers="CPUExecutionProvider")(images) - expected).max() \
        <= TOLERANCE


# --- known answers ----------------------------------------------------------------------------------------------
def test_the_right_map_beats_uniform_and_inverted_maps_in_every_score(detector):
    _, predict, _ = detector
    images, classes = _squares(3), np.full(3, SQUARE)
    scores = {kind: faithfulness_scores(predict, images, cams, classes) for kind, cams in _maps(3).items()}
    for name, score in FAITHFULNESS.items():
        if name == "average_increase":
            continue  # dimming never raises the square's evidence: 0 for every map (asserted exactly below)
        better = (lambda a, b: a > b) if score.higher_is_better else (lambda a, b: a < b)
        for worse in ("uniform", "inverted"):
            assert better(scores["perfect"][name], scores[worse][name]).all(), (name, worse, scores)
    assert scores["perfect"]["deletion_auc"].max() < 0.1 and scores["inverted"]["deletion_auc"].min() > 0.7
    assert scores["perfect"]["insertion_auc"].min() > 0.7 and scores["inverted"]["insertion_auc"].max() < 0.3


def test_average_drop_and_increase_equal_their_formula_on_torch(detector):
    model, predict, _ = detector
    images = _squares(3)
    maps = {**_maps(3), "ones": np.ones((3, SIZE, SIZE), np.float32), "zeros": np.zeros((3, SIZE, SIZE), np.float32)}
    for classes in (np.full(3, SQUARE), np.zeros(3, int)):
        y = _torch_probabilities(model, images)[np.arange(3), classes]
        for kind, cams in maps.items():
            result = average_drop_increase(predict, images, cams, classes)
            o = _torch_probabilities(model, images * cams[:, None])[np.arange(3), classes]
            np.testing.assert_allclose(result.drop, np.maximum(0, y - o) / y, atol=TOLERANCE, err_msg=kind)
            assert result.increase.tolist() == (o > y).tolist(), kind
        ones = average_drop_increase(predict, images, maps["ones"], classes)
        assert ones.drop.tolist() == [0.0] * 3 and not ones.increase.any()  # the image itself: O is Y exactly
        o_zeros = _torch_probabilities(model, np.zeros((1, 3, SIZE, SIZE)))[0, classes]
        np.testing.assert_allclose(average_drop_increase(predict, images, maps["zeros"], classes).drop,
                                   np.maximum(0, y - o_zeros) / y, atol=TOLERANCE)
    # Class 0 falls with the square's brightness: a map dimming the square raises it.
    assert average_drop_increase(predict, images, maps["inverted"], np.zeros(3, int)).increase.all()


def test_curves_start_and_end_where_rise_says(detector):
    model, predict, _ = detector
    images, cams, classes = _squares(2), _random_maps(2, seed=3), np.array([SQUARE, 0])
    rows = np.arange(2)
    deleted = deletion(predict, images, cams, classes, steps=7, baseline=0.25)
    np.testing.assert_array_equal(deleted.fractions, np.arange(8) * 576 // 7 / 576)
    np.testing.assert_allclose(deleted.scores[:, 0], _torch_probabilities(model, images)[rows, classes], atol=TOLERANCE)
    grey = _torch_probabilities(model, np.full_like(images, 0.25))
    np.testing.assert_allclose(deleted.scores[:, -1], grey[rows, classes], atol=TOLERANCE)
    np.testing.assert_allclose(deleted.auc, np.trapezoid(deleted.scores, deleted.fractions, axis=1), rtol=1e-12)
    inserted = insertion(predict, images, cams, classes, steps=7)
    np.testing.assert_allclose(inserted.scores[:, 0], _torch_probabilities(model, _rise_blur(images))[rows, classes],
                               atol=TOLERANCE)
    np.testing.assert_allclose(inserted.scores[:, -1], deleted.scores[:, 0], atol=1e-12)


# --- agreement with Quantus -------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_deletion_agrees_with_quantus_pixel_flipping(detector, quantus, baseline):
    """Quantus flips C x H x W features (the map broadcast over channels): 96 features a step are 32 whole pixels
    of 576 when the map's values are distinct, so its 18 steps are our 18 (its curve leaves out step 0)."""
    model, predict, _ = detector
    images, cams, classes = _squares(4, seed=5), _random_maps(4, seed=6), np.array([1, 0, 2, 1])
    metric = quantus.PixelFlipping(features_in_step=96, perturb_baseline=baseline, normalise=False, abs=False,
                                   disable_warnings=True)
    theirs = np.array(metric(model=model, x_batch=images, y_batch=classes, a_batch=cams[:, None], channel_first=True,
                             softmax=True, device="cpu"))
    ours = deletion(predict, images, cams, classes, steps=18, baseline=baseline)
    assert theirs.shape == (4, 18)
    assert np.abs(ours.scores[:, 1:] - theirs).max() <= TOLERANCE
    assert np.ptp(theirs, axis=1).min() > 0.1  # the curves move: the comparison is not of flat lines


def test_deletion_agrees_with_quantus_region_perturbation(detector, quantus):
    """On maps constant over 4 x 4 patches (distinct per patch), removing patches in order of their sum is removing
    pixels in map order, 16 a step; Quantus's curve is the drop from the unperturbed probability."""
    model, predict, _ = detector
    images, classes = _squares(3, seed=7), np.array([1, 0, 1])
    patches = np.random.default_rng(8).permutation(36 * 3).reshape(3, 6, 6).astype(np.float32)
    cams = np.kron(patches, np.ones((4, 4), np.float32))
    metric = quantus.RegionPerturbation(patch_size=4, regions_evaluation=36, perturb_baseline=0.0, normalise=False,
                                        abs=False, disable_warnings=True)
    theirs = np.array(metric(model=model, x_batch=images, y_batch=classes, a_batch=cams[:, None], channel_first=True,
                             softmax=True, device="cpu"))
    ours = deletion(predict, images, cams, classes, steps=36)
    assert np.abs((ours.scores[:, :1] - ours.scores[:, 1:]) - theirs).max() <= TOLERANCE


def test_insertion_agrees_with_quantus_pixel_flipping_from_the_blurred_image(detector, quantus):
    """Quantus has no insertion game; PixelFlipping is one when it starts from RISE's blurred image (computed
    here as RISE does) and its perturbation puts the original's pixels back."""
    model, predict, _ = detector
    images, cams, classes = _squares(3, seed=9), _random_maps(3, seed=10), np.array([1, 0, 1])
    originals = images.reshape(3, -1)

    def put_back(arr, indices, **_):
        arr = arr.copy()
        rows = np.arange(len(arr))[:, None]
        arr[rows, indices] = originals[rows, indices]
        return arr

    metric = quantus.PixelFlipping(features_in_step=96, perturb_func=put_back, normalise=False, abs=False,
                                   disable_warnings=True)
    theirs = np.array(metric(model=model, x_batch=_rise_blur(images), y_batch=classes, a_batch=cams[:, None],
                             channel_first=True, softmax=True, device="cpu"))
    ours = insertion(predict, images, cams, classes, steps=18)
    assert np.abs(ours.scores[:, 1:] - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_imputes_as_quantus_noisy_linear_imputation(detector, quantus, order):
    """Our ROAD's model input at each percentage (recorded from predict) is Quantus's imputation (noise 0) of the
    same pixels, to float32 rounding, and the curve is torch's probability on Quantus's images."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    model, predict, _ = detector
    images, cams, classes = _squares(2, seed=11), _random_maps(2, seed=12), np.array([1, 0])
    seen = []
    ours = road(lambda x: seen.append(x) or predict(x), images, cams, classes, percentages=(5, 30, 70, 95),
                order=order, noise=0.0)
    seen = np.concatenate(seen).reshape(2, 4, 3, SIZE, SIZE)
    flat = cams.reshape(2, -1)
    pixel_order = np.argsort(-flat if order == "morf" else flat, axis=1)
    for i in range(2):
        for step, percent in enumerate((5, 30, 70, 95)):
            theirs = noisy_linear_imputation(images[i], pixel_order[i, :int(576 * percent / 100)], noise=0.0)
            assert np.abs(seen[i, step] - theirs).max() <= 1e-6  # float32 rounding of the same solution
            probability = _torch_probabilities(model, theirs[None])[0, classes[i]]
            assert abs(ours.scores[i, step] - probability) <= TOLERANCE
    np.testing.assert_allclose(ours.fractions, [0.05, 0.3, 0.7, 0.95])


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_agrees_with_quantus_road_on_accuracy(quantus, tmp_path, order):
    """Quantus's ROAD scores accuracy (argmax is the class) and runs on one-channel images only (it ranks the map
    broadcast over C x H x W but imputes H x W: an IndexError with 3 channels), with MoRF only (LeRF is MoRF of the
    reversed map, 1 - map: Quantus refuses negative maps). Our ROAD, given a predict returning the argmax one-hot,
    must give its curve per image."""
    model = SquareDetector(1).eval()
    predict = session_predictor(_export(model, 1, tmp_path / "gray.onnx"), providers="CPUExecutionProvider")
    images = _squares(4, channels=1, seed=13)
    cams, classes = _random_maps(4, seed=14), np.array([1, 1, 0, 1])
    one_hot = lambda x: np.eye(3)[predict(x).argmax(1)]  # noqa: E731
    ours = road(one_hot, images, cams, classes, percentages=(10, 30, 50, 70, 90), order=order, noise=0.0)
    metric = quantus.ROAD(percentages=[10, 30, 50, 70, 90], noise=0.0, normalise=False, abs=False,
                          disable_warnings=True)
    for i in range(4):
        attributions = (cams if order == "morf" else 1 - cams)[i:i + 1, None]
        theirs = metric(model=model, x_batch=images[i:i + 1], y_batch=classes[i:i + 1], a_batch=attributions,
                        channel_first=True, softmax=True, device="cpu")
        assert ours.scores[i].tolist() == [theirs[p] for p in (10, 30, 50, 70, 90)], i
    assert 0 < ours.scores.mean() < 1  # some steps keep the class and some lose it


# --- batching, layout, noise ------------------------------------------------------------------------------------
def test_perturbed_images_go_in_chunks_across_images_and_steps(detector):
    _, predict, _ = detector
    images, cams, classes = _squares(4), _random_maps(4, seed=15), np.full(4, SQUARE)
    calls = []
    counted = deletion(lambda x: calls.append(len(x)) or predict(x), images, cams, classes, steps=18, chunk_size=32)
    assert calls == [32, 32, 12]  # 4 images x 19 steps
    np.testing.assert_allclose(counted.scores, deletion(predict, images, cams, classes, steps=18).scores, atol=1e-7)


def test_pixels_tied_in_a_map_go_row_by_row(detector):
    _, predict, _ = detector
    images, uniform = _squares(1), np.full((1, SIZE, SIZE), 0.5, np.float32)
    seen = []
    deletion(lambda x: seen.append(x) or predict(x), images, uniform, np.array([SQUARE]), steps=SIZE)
    for step, image in enumerate(np.concatenate(seen)):  # a step deletes one row of 24 pixels
        assert (image[:, :step] == 0).all() and (image[:, step:] == images[0, :, step:]).all(), step


def test_nhwc_images_score_as_their_nchw_twins(detector):
    _, predict, _ = detector
    images, cams, classes = _squares(2), _random_maps(2, seed=16), np.array([1, 0])
    nchw = faithfulness_scores(predict, images, cams, classes)
    nhwc = faithfulness_scores(lambda x: predict(x.transpose(0, 3, 1, 2)), images.transpose(0, 2, 3, 1), cams,
                               classes, layout="NHWC")
    for name in FAITHFULNESS:
        np.testing.assert_allclose(nhwc[name], nchw[name], atol=1e-7, err_msg=name)


def test_road_noise_is_reproducible_by_seed(detector):
    _, predict, _ = detector
    images, cams, classes = _squares(2), _random_maps(2, seed=17), np.full(2, SQUARE)
    first, again = (road(predict, images, cams, classes, noise=0.2, seed=4).scores for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(road(predict, images, cams, classes, noise=0.2, seed=5).scores, first, atol=1e-4)
    assert not np.allclose(road(predict, images, cams, classes, noise=0.0).scores, first, atol=1e-4)


# --- bad input --------------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error(detector, tmp_path):
    _, predict, _ = detector
    images, cams, classes = _squares(2), _maps(2)["perfect"], np.full(2, SQUARE)
    with pytest.raises(ValueError, match=r"cams of shape \(2, 12, 12\) do not fit 2 image\(s\) of 24x24 .*, 24\)"):
        faithfulness_scores(predict, images, cams[:, ::2, ::2], classes)
    with pytest.raises(ValueError, match=r"cams of shape \(2, 24, 24\) do not fit 2 image\(s\) of 3x24 \(NHWC"):
        deletion(predict, images, cams, classes, layout="NHWC")
    nan = cams.copy()
    nan[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"cams of image\(s\) \[1\] are not finite .*score the other images"):
        road(predict, images, nan, classes)
    for wrong in (3, -1):
        with pytest.raises(ValueError, match=rf"class index \[{wrong}\] of image\(s\) \[1\] is out of range: the "
                                             r"model has 3 classes \(0 to 2\)"):
            insertion(predict, images, cams, np.array([SQUARE, wrong]))
    with pytest.raises(ValueError, match=r"classes of shape \(2, 1\) .* one integer class index per image, \(2,\)"):
        average_drop_increase(predict, images, cams, classes[:, None])
    with pytest.raises(ValueError, match=r"cams of image\(s\) \[0, 1\] leave \[0, 1\]"):
        average_drop_increase(predict, images, cams * 2, classes)
    with pytest.raises(ValueError, match=r"layout='CHW': .* 'NCHW' or 'NHWC'"):
        deletion(predict, images, cams, classes, layout="CHW")
    with pytest.raises(ValueError, match=r"percentages \[0.0, 50.0\]: .* above 0 and below 100"):
        road(predict, images, cams, classes, percentages=(0, 50))
    with pytest.raises(ValueError, match=r"order='random': 'morf' .* or 'lerf'"):
        road(predict, images, cams, classes, order="random")
    with pytest.raises(ValueError, match=r"unknown faithfulness score\(s\) \['deletion'\]: the scores are "):
        faithfulness_scores(predict, images, cams, classes, names=["deletion"])
    two_inputs = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "two",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3]) for name in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3])]), opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ValueError, match=r"the model has inputs \['a', 'b'\]: session_predictor feeds one image input"):
        session_predictor(onnx.ModelProto.FromString(two_inputs.SerializeToString()))
