"""Layouts followed through the graph: channels-last activations (ConvNeXt-style blocks) are read as NHWC."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from converters.pytorch import export
from onnx_gradcam import Explainer, list_layers


class ChannelsLastBlock(nn.Module):
    """conv -> permute to NHWC -> LayerNorm -> Linear -> GELU -> permute back -> conv -> pooled classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 12)
        self.out = nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.stem(x).permute(0, 2, 3, 1)
        y = nn.functional.gelu(self.mix(self.norm(y))).permute(0, 3, 1, 2)
        return self.fc(torch.relu(self.out(y)).mean(dim=(2, 3)))


def test_channels_last_activations_are_nhwc_and_explained_along_their_own_axes(tmp_path):
    torch.manual_seed(0)
    model = ChannelsLastBlock().eval()
    images = torch.randn(2, 3, 10, 12)
    path = tmp_path / "channels_last.onnx"
    export(model, images, path)
    layouts = {layer.name: layer.layout for layer in list_layers(str(path)) if layer.name}
    assert layouts["mix"] == "NHWC" and layouts["norm"] == "NHWC"
    assert layouts["stem"] == "NCHW" and layouts["out"] == "NCHW"

    explainer = Explainer(str(path), layer="mix")
    assert explainer.layers[0].layout == "NHWC" and explainer.layers[0].shape[1:] == (10, 12, 12)
    result = explainer(images.numpy(), [1, 2])

    captured = {}
    model.mix.register_forward_hook(lambda module, args, output: captured.setdefault("a", output))
    logits = model.double()(images.double())
    activations = captured["a"]
    (grads,) = torch.autograd.grad(logits[[0, 1], [1, 2]].sum(), activations)
    weights = grads.mean(dim=(1, 2), keepdim=True)          # per-channel weights over H, W (axes 1, 2)
    expected = torch.relu((weights * activations).sum(dim=3)).detach().numpy()
    np.testing.assert_allclose(result.raw["mix"], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert result.cams.shape == (2, 10, 12)


def test_a_channels_last_layer_kept_by_the_converter_stays_nhwc(tmp_path):
    """The PyTorch converter records the layers it keeps, but torch does not know which axis of a module's
    output holds channels: the layout is followed in the graph (it was written as NCHW, which turned the
    map of a channels-last layer such as swin's blocks into one over the wrong axes)."""
    torch.manual_seed(0)
    model = ChannelsLastBlock().eval()
    path = tmp_path / "kept.onnx"
    export(model, torch.randn(2, 3, 10, 12), path, layers=["mix", "out"])
    explainer = Explainer(str(path), layer=["mix", "out"])
    assert [layer.layout for layer in explainer.layers] == ["NHWC", "NCHW"]
