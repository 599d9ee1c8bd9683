"""Maps left where the session computed them (``maps_on_device``): ONNX Runtime's IO binding allocates the
outputs on the session's device and copies only the others to the host; the maps come back as OrtValues that
torch takes through DLPack. Here the device is the CPU: the same code path as CUDA's, which this machine lacks."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnx_gradcam import Explainer
from onnx_gradcam.sessions import bound_run


def test_maps_on_device_equal_the_host_maps(resnet):
    _, images, path = resnet
    batch = images.numpy()[:4]
    host = Explainer(path, layer=["layer3", "layer4"])(batch, 2)
    device = Explainer(path, layer=["layer3", "layer4"], maps_on_device=True)(batch, 2)
    assert isinstance(device.cams, ort.OrtValue) and device.cams.device_name().lower() == "cpu"
    np.testing.assert_array_equal(torch.from_dlpack(device.cams).numpy(), host.cams)
    for layer in ("layer3", "layer4"):
        assert isinstance(device.layer_cams[layer], ort.OrtValue)
        np.testing.assert_array_equal(torch.from_dlpack(device.layer_cams[layer]).numpy(), host.layer_cams[layer])
    np.testing.assert_array_equal(device.classes, host.classes)  # the rest comes to the host as before
    assert isinstance(device.outputs[Explainer(path).output], np.ndarray)


def test_a_bound_run_equals_a_plain_run(resnet):
    _, images, path = resnet
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    feeds = {name: images.numpy()[:2]}
    bound = bound_run(session, [output], feeds, on_device=[output])
    assert isinstance(bound[output], ort.OrtValue)
    np.testing.assert_array_equal(bound[output].numpy(), session.run([output], feeds)[0])
    np.testing.assert_array_equal(bound_run(session, [output], feeds, on_device=())[output],
                                  session.run([output], feeds)[0])


def test_what_needs_the_host_is_refused_with_maps_on_device(resnet):
    _, images, path = resnet
    batch = images.numpy()[:4]
    with pytest.raises(ValueError, match="eigencam makes its maps on the host"):
        Explainer(path, method="eigencam", maps_on_device=True)
    explainer = Explainer(path, maps_on_device=True, max_batch=2)
    with pytest.raises(ValueError, match="give at most max_batch=2 images per call, not 4"):
        explainer(batch)
    with pytest.raises(ValueError, match="aug_smooth and several targets"):
        explainer(batch[:2], aug_smooth=True)
    with pytest.raises(ValueError, match="aug_smooth and several targets"):
        explainer(batch[:2], [[1, 2], [3, 4]])
    spoiled = batch[:2].copy()
    spoiled[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Explainer(path, maps_on_device=True, on_nonfinite="warn")(spoiled)
