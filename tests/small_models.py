"""A small fixed-size image classifier built from ONNX ops (no framework), for command-line tests that must be
quick: Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten -> Gemm (-> Softmax), NCHW, any channel count."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SIZE, FEATURES, CLASSES = 16, 4, 3


def classifier(channels: int = 3, softmax: bool = False, seed: int = 0, symbolic_size: bool = False
               ) -> onnx.ModelProto:
    """Input ``image`` (N, channels, 16, 16), or (N, channels, height, width) with ``symbolic_size``; layer
    ``features`` (N, 4, H, W); output ``scores`` (N, 3), probabilities with ``softmax``, else logits."""
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.normal(size=(FEATURES, channels, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=FEATURES).astype(np.float32) * 0.1, "b"),
               numpy_helper.from_array(rng.normal(size=(FEATURES, CLASSES)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["conv"], ["features"], name="relu"),
             helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc"], ["logits" if softmax else "scores"], name="fc")]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["scores"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT,
                                       ["N", channels, *(("height", "width") if symbolic_size else (SIZE, SIZE))])],
        [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", CLASSES])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def gray_net():
    """A PyTorch factory (for ``onnx-gradcam convert small_models:gray_net``): a 1-channel CNN whose Conv
    ``conv`` the exporter folds into its BatchNorm ``bn``."""
    import torch.nn as nn

    class GrayNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(1, FEATURES, 3, padding=1), nn.BatchNorm2d(FEATURES), nn.ReLU()
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(FEATURES, CLASSES))

        def forward(self, x):
            return self.head(self.relu(self.bn(self.conv(x))))

    return GrayNet().eval()
