"""Cutting out the head: fed the tensors it names, the head model reproduces the full model's output."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from converters.pytorch import export
from onnx_gradcam.graph.assemble import with_outputs
from onnx_gradcam.graph.head import cut_head
from onnx_gradcam.graph.model import load_model, normalize
from onnx_gradcam.graph.view import GraphView
from test_explainer import SmallNet


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("head") / "small.onnx"
    export(SmallNet().eval(), torch.randn(2, 3, 32, 32), path, layers=["block", "stem"])
    return GraphView(normalize(load_model(str(path))))


def _run_with_outputs(view, names, images):
    model = with_outputs(view, [*names, "output"])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": images})))


@pytest.mark.parametrize("layer, extra", [("block", {"stem"}), ("stem", set())],
                         ids=["inside-residual", "before-residual"])
def test_head_reproduces_the_output(view, layer, extra):
    head = cut_head(view, [layer], "output")
    assert head.inputs[0] == layer
    # a layer inside the residual block also needs the block's skip input, which starts before it
    assert set(head.inputs[1:]) == extra
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    full = _run_with_outputs(view, head.inputs, images)
    session = ort.InferenceSession(head.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (output,) = session.run(["output"], {name: full[name] for name in head.inputs})
    np.testing.assert_allclose(output, full["output"], rtol=1e-5, atol=1e-6)
    assert len(head.model.graph.node) < len(view.nodes)
