"""Several layers in one pass: ``layer=[...]`` and ``layer="all"`` compute every layer's map from one forward
and one backward pass (one session run per batch), each equal to what a call at that layer alone gives."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_gradcam import Explainer, list_layers

LAYERS = ["layer1.1", "layer2.0.bn2", "layer4"]


def _finite_and_not_flat(maps: np.ndarray) -> None:
    assert np.isfinite(maps).all()
    assert (maps.reshape(len(maps), -1).std(axis=1) > 1e-3).all()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_three_layers_in_one_run_equal_three_single_layer_calls(resnet, method):
    _, images, path = resnet
    batch = images.numpy()
    together = Explainer(path, layer=LAYERS, method=method)
    result = together(batch, 7)
    assert together.runs == {"explainer": 1}
    assert list(result.layer_cams) == LAYERS
    for layer in LAYERS:
        alone = Explainer(path, layer=layer, method=method)(batch, 7)
        _finite_and_not_flat(result.layer_cams[layer])
        np.testing.assert_allclose(result.layer_cams[layer], alone.cams, atol=1e-5, rtol=0)
        np.testing.assert_allclose(result.raw[layer], alone.raw[layer], rtol=1e-5, atol=1e-6)
    # the maps differ from layer to layer: each output is its own layer's, not one map copied
    assert np.abs(result.layer_cams[LAYERS[0]] - result.layer_cams[LAYERS[2]]).max() > 0.1


def test_all_layers_are_every_candidate_in_one_run(resnet):
    _, images, path = resnet
    explainer = Explainer(path, layer="all")
    result = explainer(images.numpy()[:4])
    candidates = list_layers(path)
    assert explainer.runs == {"explainer": 1}
    assert [layer.tensor for layer in explainer.layers] == [layer.tensor for layer in candidates]
    assert list(result.layer_cams) == [layer.display_name for layer in candidates]
    for maps in result.layer_cams.values():
        assert maps.shape == (4, 64, 64)
        assert np.isfinite(maps).all()
    deepest = Explainer(path, layer=candidates[-1].tensor)(images.numpy()[:4], result.classes)
    np.testing.assert_allclose(result.layer_cams[candidates[-1].display_name], deepest.cams, atol=1e-5, rtol=0)


def test_one_layer_gives_its_map_as_its_layer_map(resnet):
    _, images, path = resnet
    result = Explainer(path, layer="layer3")(images.numpy()[:2])
    assert list(result.layer_cams) == ["layer3"]
    np.testing.assert_array_equal(result.layer_cams["layer3"], result.cams)


def test_host_methods_and_several_targets_give_each_layers_map(resnet):
    _, images, path = resnet
    batch = images.numpy()[:2]
    eigen = Explainer(path, layer=LAYERS[1:], method="eigencam")(batch)
    alone = Explainer(path, layer=LAYERS[1], method="eigencam")(batch)
    np.testing.assert_allclose(eigen.layer_cams[LAYERS[1]], alone.cams, atol=1e-5, rtol=0)
    several = Explainer(path, layer=LAYERS[1:])(batch, [[3, 5], [1, 2]])
    assert several.layer_cams[LAYERS[2]].shape == (2, 2, 64, 64)
    single = Explainer(path, layer=LAYERS[2])(batch, [5, 2])
    np.testing.assert_allclose(several.layer_cams[LAYERS[2]][:, 1], single.cams, atol=1e-5, rtol=0)


def test_aug_smooth_and_chunks_keep_each_layers_map(resnet):
    _, images, path = resnet
    # Not image 2: at brightness 0.9 one of its ReLU inputs in layer2.1 is 5e-8 (in float64), a kink whose side
    # float32 rounding picks, and the rounding differs once layer2.0.bn2 is an output (ONNX Runtime can no
    # longer fuse that block's Conv, Add and Relu): its gradient then differs by 3% in either model.
    batch = images.numpy()[[0, 1, 3]]
    whole = Explainer(path, layer=LAYERS[:2])(batch, 1, aug_smooth=True)
    chunked = Explainer(path, layer=LAYERS[:2], max_batch=2)(batch, 1, aug_smooth=True)
    alone = Explainer(path, layer=LAYERS[0])(batch, 1, aug_smooth=True)
    for layer in LAYERS[:2]:
        np.testing.assert_allclose(chunked.layer_cams[layer], whole.layer_cams[layer], atol=1e-6, rtol=0)
    np.testing.assert_allclose(whole.layer_cams[LAYERS[0]], alone.cams, atol=1e-5, rtol=0)
