"""What kind of place each candidate layer is (onnx_gradcam/graph/places.py): a cut every path to the output
passes through, a tensor inside a residual branch (naming the Add where it rejoins and the block output to
use instead), or a branch before another merge (a concatenation)."""

from __future__ import annotations

import os
import re

import pytest
import torch
import torchvision

from converters.pytorch import export
from onnx_gradcam import layer_places, list_layers
from onnx_gradcam.cli import main
from onnx_gradcam.graph.model import load_model
from onnx_gradcam.graph.places import BRANCH, CUT, RESIDUAL

pytestmark = pytest.mark.slow


def _exported(name: str, tmp_path) -> str:
    torch.manual_seed(0)
    path = str(tmp_path / f"{name}.onnx")
    export(getattr(torchvision.models, name)(weights=None).eval(), torch.randn(1, 3, 64, 64), path)
    return path


def _by_name(path: str) -> dict:
    return {name: layer for layer in list_layers(path) for name in (layer.name, *layer.aliases) if name}


def test_resnet50_blocks_are_cuts_and_their_convolutions_lie_in_residual_branches(tmp_path):
    path = _exported("resnet50", tmp_path)
    layers, where = _by_name(path), layer_places(path)
    producers = {out: node for node in load_model(path).graph.node for out in node.output}
    blocks = [name for name in layers if re.fullmatch(r"layer\d\.\d", name)]
    assert len(blocks) == 16
    for block in blocks:
        assert where[layers[block].tensor].kind == CUT, block
        inner = layers[f"{block}.bn2"]  # conv2, folded into its BatchNorm by the exporter
        place = where[inner.tensor]
        assert place.kind == RESIDUAL and layers[place.use_instead].tensor == layers[block].tensor, (block, place)
        merge = producers[place.merge]
        assert merge.op_type == "Add" and any(producers.get(i) is not None for i in merge.input)
    assert where[layers["layer4.2.bn2"].tensor].stride == 32 and where[layers["layer1.0.bn2"].tensor].stride == 4
    depths = [where[layers[block].tensor].depth for block in blocks]
    assert depths == sorted(depths) and depths[-1] == 1 + 3 * 16  # the stem, then three convolutions a block


def test_densenet121_dense_layers_are_branches_before_their_blocks_concatenation(tmp_path):
    path = _exported("densenet121", tmp_path)
    layers, where = _by_name(path), layer_places(path)
    producers = {out: node for node in load_model(path).graph.node for out in node.output}
    dense = [name for name in layers if re.fullmatch(r"features\.denseblock\d\.denselayer\d+", name)]
    assert len(dense) == 6 + 12 + 24 + 16
    for name in dense:
        place = where[layers[name].tensor]
        block = name.rsplit(".", 1)[0]
        assert place.kind == BRANCH and layers[place.use_instead].tensor == layers[block].tensor, (name, place)
        assert producers[place.merge].op_type == "Concat"
    for block in ("features.denseblock1", "features.transition1", "features.denseblock4"):
        assert where[layers[block].tensor].kind == CUT


def test_the_layers_command_shows_each_place(tmp_path, capsys):
    path = _exported("resnet50", tmp_path)
    assert main(["layers", path]) == 0
    table = capsys.readouterr().out
    assert "place" in table.splitlines()[0] and "stride" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if "layer3.1.bn2" in line)
    assert "inside a residual branch (rejoins at" in row and "block output layer3.1)" in row


def test_a_keras_functional_models_merges_are_cuts_and_their_inputs_branches(tmp_path):
    """Two convolutions concatenated, a convolution, then a residual convolution added back: both merges
    are cuts; the concatenated convolutions are branches before the Concat, the added one lies in a residual
    branch whose block output is the Add."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import layers

    from converters.keras import export as export_keras

    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3), name="image")
    left = layers.Conv2D(4, 3, padding="same", activation="relu", name="left")(image)
    right = layers.Conv2D(4, 1, activation="relu", name="right")(image)
    concat = layers.Concatenate(name="concat")([left, right])
    trunk = layers.Conv2D(6, 3, padding="same", activation="relu", name="trunk")(concat)
    branch = layers.Conv2D(6, 3, padding="same", name="branch")(trunk)
    added = layers.Add(name="add")([trunk, branch])
    logits = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D(name="pool")(added))
    path = str(tmp_path / "merges.onnx")
    names = ["left", "right", "concat", "trunk", "branch", "add"]
    export_keras(keras.Model(image, logits), path, layers=names)
    layers_, where = _by_name(path), layer_places(path)
    kinds = {name: where[layers_[name].tensor].kind for name in names}
    assert kinds == {"left": BRANCH, "right": BRANCH, "concat": CUT, "trunk": CUT, "branch": RESIDUAL, "add": CUT}
    assert where[layers_["branch"].tensor].use_instead == "add"
    assert where[layers_["left"].tensor].use_instead == "concat"
