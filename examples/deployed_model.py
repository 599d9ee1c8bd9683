"""Explain a deployed ONNX model where only ONNX Runtime is installed: no PyTorch, no TensorFlow.

    python examples/deployed_model.py --out out/deployed

By default it explains examples/data/shapes_cnn.onnx (the quick start's model, as it would ship) on the
pictures in examples/data/, two ways: with this package's ``Explainer`` on image files (overlays, maps,
summary), and with an exported explainer model run by a plain ``onnxruntime.InferenceSession``, the way a
service without this package would run it. The two must agree.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnx_gradcam import Explainer, export_explainer  # noqa: E402
from onnx_gradcam.files import explain_files, find_images, preprocessing_for  # noqa: E402
from onnx_gradcam.images import load_picture  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(DATA, "shapes_cnn.onnx"), help="the deployed ONNX model")
    parser.add_argument("--images", nargs="+", default=[DATA], help="image files or folders")
    parser.add_argument("--method", default="gradcam", help="a gradient CAM method (exportable)")
    parser.add_argument("--out", default="out/deployed", help="folder for overlays, maps, summary and the "
                                                              "exported explainer model")
    args = parser.parse_args(argv)

    explainer = Explainer(args.model, method=args.method)
    images = find_images(args.images)
    outcomes = explain_files(explainer, images, args.out, progress=False)
    print(f"explained {sum(o.status == 'explained' for o in outcomes)} images at {explainer.layers[0]}; overlays, "
          f"maps and summary in {args.out}/")

    # The production route: one ONNX model, original outputs plus 'cam', run by ONNX Runtime alone.
    exported = os.path.join(args.out, "explainer.onnx")
    export_explainer(args.model, exported, method=args.method)
    explained = [o for o in outcomes if o.status == "explained"]
    preprocessing = preprocessing_for(explainer)
    batch = np.stack([preprocessing(load_picture(o.image)) for o in explained])
    session = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    cams = session.run(["cam"], {session.get_inputs()[0].name: batch})[0]
    from_files = np.stack([np.load(o.map) for o in explained])
    difference = float(np.abs(cams - from_files).max())
    print(f"exported explainer {exported}: maps for {len(batch)} images, max difference to the Explainer's "
          f"{difference:.1e}")
    return {"outcomes": outcomes, "cams": cams, "difference": difference, "exported": exported}


if __name__ == "__main__":
    main()
