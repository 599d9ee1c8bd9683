"""The small schema this project writes into ``ModelProto.metadata_props`` and reads back.

One key, ``onnx_gradcam``, holds a JSON object::

    {
      "version": 1,
      "framework": "pytorch" | "keras",      # who exported the model
      "framework_version": "2.14.1",
      "input_layout": "NCHW" | "NHWC",       # layout of the image input
      "layers": {                            # framework layer name -> where it lives in the graph
        "layer4": {"tensor": "layer4", "layout": "NCHW"}   # layout: where the exporter knows it
      },
      "preprocessing": {                     # optional, given by the user at export
        "size": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "channel_order": "RGB"
      },
      "explainer": {                         # in exported explainer models: what ``cam`` explains
        "method": "gradcam", "layers": ["layer4"], "output": "output", "targets": "top"
      }
    }

Every field but ``version`` is optional; a model without the key is read as a plain ONNX model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from onnx import ModelProto

KEY = "onnx_gradcam"
VERSION = 1


@dataclass
class LayerInfo:
    tensor: str
    layout: Optional[str] = None
    """"NCHW" or "NHWC" where the framework knows it (Keras' data_format); None: followed through the graph
    (PyTorch modules do not say which axis of their output holds channels)."""


@dataclass
class Metadata:
    framework: Optional[str] = None
    framework_version: Optional[str] = None
    input_layout: Optional[str] = None
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    explainer: dict = field(default_factory=dict)

    def to_json(self) -> str:
        body = {"version": VERSION, "framework": self.framework, "framework_version": self.framework_version,
                "input_layout": self.input_layout,
                "layers": {name: {"tensor": info.tensor, **({"layout": info.layout} if info.layout else {})}
                           for name, info in self.layers.items()},
                "preprocessing": self.preprocessing, "explainer": self.explainer}
        return json.dumps({k: v for k, v in body.items() if v not in (None, {})}, sort_keys=True)


def read(model: ModelProto) -> Metadata:
    """The model's metadata, or an empty :class:`Metadata` where it has none."""
    for prop in model.metadata_props:
        if prop.key == KEY:
            body = json.loads(prop.value)
            if body.get("version", VERSION) > VERSION:
                raise ValueError(f"the model's {KEY} metadata is version {body['version']}; this package reads "
                                 f"up to {VERSION}: upgrade onnx-gradcam")
            return Metadata(
                framework=body.get("framework"), framework_version=body.get("framework_version"),
                input_layout=body.get("input_layout"),
                layers={name: LayerInfo(**info) for name, info in body.get("layers", {}).items()},
                preprocessing=body.get("preprocessing", {}), explainer=body.get("explainer", {}),
            )
    return Metadata()


def write(model: ModelProto, metadata: Metadata) -> None:
    """Store ``metadata`` in ``model`` (replacing any earlier copy)."""
    kept = [p for p in model.metadata_props if p.key != KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=KEY, value=metadata.to_json())
