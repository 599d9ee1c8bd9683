"""The ``onnx-gradcam`` command line: ``layers``, ``explain``, ``export``, ``convert``.

``convert`` is the one command that needs a training framework: it imports the ``converters`` package
(and torch or TensorFlow) only when it runs; the others need ONNX Runtime alone.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from . import layers_and_default
from .autodiff import UnsupportedOperatorError
from .explainer import EXPORT_TARGETS, Explainer
from .export import default_name, explainer_to_export, write_triton_entry
from .files import explain_files, find_images, preprocessing_for
from .images import IMAGENET_MEAN, IMAGENET_STD
from .methods import GRADIENT_METHODS, METHODS


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, UnsupportedOperatorError) as error:
        print(f"onnx-gradcam {args.command}: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-gradcam", description="Grad-CAM and its family for ONNX models, on ONNX Runtime.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    layers = commands.add_parser("layers", help="list the candidate target layers of an ONNX model")
    layers.add_argument("model", help="the ONNX model")
    layers.add_argument("--output", metavar="NAME", help="the model output to explain; the first by default")
    layers.set_defaults(run=_layers)

    explain = commands.add_parser("explain", help="explain images with an ONNX model; writes overlays, maps and "
                                                  "summary.json/.csv")
    explain.add_argument("model", help="the ONNX model")
    explain.add_argument("images", nargs="+", help="image files or folders of images")
    _explain_options(explain, layer_flag="--layer", out_required=True)
    explain.set_defaults(run=_explain)

    export = commands.add_parser("export", help="write the explainer as a standalone ONNX model (original outputs "
                                                "plus 'cam'), or as a Triton Inference Server model repository")
    export.add_argument("model", help="the ONNX model")
    export.add_argument("-o", "--onnx", metavar="FILE", help="where to write the explainer model")
    export.add_argument("--triton", metavar="DIR", help="write a Triton model repository entry DIR/NAME/1/model.onnx "
                                                        "with its config.pbtxt")
    export.add_argument("--name", help="Triton model name (default: the model file's name and the method)")
    export.add_argument("--max-batch-size", type=int, default=8, metavar="N", help="Triton max_batch_size (default 8; 0 for a "
                                                                       "model with a fixed batch size)")
    export.add_argument("--layer", action="append", dest="layers", metavar="LAYER",
                        help="layer to explain at (default auto: the last conv block); repeat to average layers")
    export.add_argument("--method", default="gradcam", choices=GRADIENT_METHODS, metavar="METHOD",
                        help=f"gradient CAM method: {', '.join(GRADIENT_METHODS)} (default gradcam)")
    export.add_argument("--targets", default="top", choices=EXPORT_TARGETS,
                        help="top: explain each image's top class; input: add an int64 target_class input; "
                             "seed: add a float target_seed input shaped like the output, for dense outputs "
                             "(default top)")
    export.add_argument("--output", metavar="NAME", help="the model output to explain; the first by default")
    export.set_defaults(run=_export)

    convert = commands.add_parser("convert", help="convert a PyTorch or Keras model to ONNX with layers kept as "
                                                  "named outputs (and optionally explain images with it)")
    convert.add_argument("source", help="a torchvision model name (resnet50), timm:NAME, a factory "
                                        "'package.module:function', or a saved .keras file")
    convert.add_argument("-o", "--onnx", required=True, help="where to write the ONNX model")
    convert.add_argument("--layer", action="append", default=[], dest="layers",
                         help="a layer to keep as an output (PyTorch module path, Keras layer path); repeatable")
    convert.add_argument("--input-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
                         help="example input size for PyTorch export (default 224 224)")
    convert.add_argument("--weights", help="torchvision weights name (e.g. DEFAULT); random weights if omitted")
    convert.add_argument("--explain", nargs="+", metavar="IMAGE", dest="explain_images",
                         help="also explain these images (files or folders) with the converted model")
    _explain_options(convert, layer_flag="--explain-layer", out_required=False)
    convert.set_defaults(run=_convert)
    return parser


EXAMPLES = """examples:
  onnx-gradcam layers model.onnx
  onnx-gradcam explain model.onnx photos/ --out explained --method gradcam++
  onnx-gradcam export model.onnx -o explainer.onnx --targets input
  onnx-gradcam export model.onnx --triton model_repository
  onnx-gradcam convert resnet50 -o resnet50.onnx --layer layer4 --explain photos/

`python -m onnx_gradcam` runs the same commands. `onnx-gradcam COMMAND --help` lists a command's options."""


def _explain_options(parser: argparse.ArgumentParser, layer_flag: str, out_required: bool) -> None:
    parser.add_argument("--out", required=out_required,
                        help="output folder for overlays, maps, summary.json and summary.csv" +
                             ("" if out_required else " (default: beside the ONNX model)"))
    parser.add_argument(layer_flag, dest="explain_layer", default="auto", metavar="LAYER",
                        help="layer to explain at: a framework name or tensor name, see `onnx-gradcam layers` "
                             "(default auto: the last conv block; for convert, the last --layer)")
    parser.add_argument("--method", default="gradcam", choices=METHODS, metavar="METHOD",
                        help=f"CAM method: {', '.join(METHODS)} (default gradcam)")
    parser.add_argument("--eigen-smooth", action="store_true", help="first principal component instead of the sum")
    parser.add_argument("--aug-smooth", action="store_true", help="average over flips and brightness changes")
    parser.add_argument("--target", type=int, metavar="CLASS",
                        help="class to explain for every image (default: each image's top class)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="resize images to H W (default: from the model's metadata or its input shape)")
    parser.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="per-channel mean subtracted after scaling pixels to [0, 1] (default: metadata, else 0)")
    parser.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="per-channel std divided by after the mean (default: metadata, else 1)")
    parser.add_argument("--channel-order", choices=["RGB", "BGR"],
                        help="channel order the model expects (default: metadata, else RGB)")
    parser.add_argument("--layout", choices=["NCHW", "NHWC"], help="the image input's layout (default: from the "
                                                                   "model's metadata or its input shape)")
    parser.add_argument("--output", metavar="NAME", help="the model output to explain; the first by default")
    parser.add_argument("--alpha", type=float, default=0.5, help="map opacity in overlays (default 0.5)")
    parser.add_argument("--colormap", default="jet", choices=["jet", "turbo", "viridis"],
                        help="overlay colormap (default jet)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N",
                        help="images per ONNX Runtime run (default 16)")


def _layers(args) -> int:
    layers, default, _ = layers_and_default(args.model, args.output)
    if default is None:
        print("no candidate layers")
        return 0
    chosen = default.tensor
    rows = [("*" if layer.tensor == chosen else "", layer.tensor, layer.op, "x".join(str(d) for d in layer.shape),
             layer.name or "", layer.layout) for layer in layers]
    header = ("", "tensor", "op", "shape", "framework name", "layout")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"* default (layer='auto'): {chosen}")
    return 0


def _explain(args) -> int:
    return _explain_with(args.model, args.images, args)


def _explain_with(model_path: str, image_args: Sequence[str], args) -> int:
    explainer = Explainer(model_path, layer=args.explain_layer, method=args.method, output=args.output,
                          eigen_smooth=args.eigen_smooth, layout=args.layout)
    overrides = {"size": args.size, "mean": args.mean, "std": args.std, "channel_order": args.channel_order}
    outcomes = explain_files(explainer, find_images(image_args), args.out, args.target,
                             preprocessing_for(explainer, overrides), args.batch_size, args.alpha, args.colormap,
                             aug_smooth=args.aug_smooth)
    failed = [o for o in outcomes if o.error]
    for outcome in failed:
        print(f"skipped {outcome.image}: {outcome.error}", file=sys.stderr)
    print(f"explained {len(outcomes) - len(failed)} of {len(outcomes)} images at "
          f"{', '.join(explainer.subject.keys)}; wrote {args.out}")
    return 0


def _export(args) -> int:
    if not (args.onnx or args.triton):
        raise ValueError("say where to write the explainer: -o FILE.onnx, --triton DIR, or both")
    explainer = explainer_to_export(args.model, layer=args.layers or "auto", method=args.method, output=args.output)
    if args.onnx:
        explainer.export(args.onnx, args.targets)
        print(f"wrote {args.onnx}")
    if args.triton:
        folder = write_triton_entry(explainer, args.triton, args.name or default_name(args.model, args.method),
                                    args.targets, args.max_batch_size)
        print(f"wrote {folder}/1/model.onnx and {folder}/config.pbtxt")
    return 0


def _convert(args) -> int:
    if args.source.endswith((".keras", ".h5")):
        from converters import keras as keras_converter
        import keras

        keras_converter.export(keras.saving.load_model(args.source), args.onnx, layers=args.layers)
    else:
        import torch

        from converters import pytorch as torch_converter

        model, preprocessing = _torch_model(args.source, args.weights, args.input_size)
        example = torch.zeros(2, 3, *args.input_size)
        torch_converter.export(model, example, args.onnx, layers=args.layers, preprocessing=preprocessing)
    print(f"wrote {args.onnx}")
    if args.explain_images:
        args.out = args.out or os.path.splitext(args.onnx)[0] + "_explained"
        if args.explain_layer == "auto" and args.layers:
            args.explain_layer = args.layers[-1]
        return _explain_with(args.onnx, args.explain_images, args)
    return 0


def _torch_model(source: str, weights: Optional[str], size: Sequence[int]):
    """(model, preprocessing metadata) for a torchvision name, timm:NAME, or package.module:function."""
    imagenet = {"size": list(size), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channel_order": "RGB"}
    if source.startswith("timm:"):
        timm = importlib.import_module("timm")
        return timm.create_model(source[len("timm:"):], pretrained=weights is not None), imagenet
    if ":" in source:
        module_name, _, function_name = source.partition(":")
        factory = getattr(importlib.import_module(module_name), function_name, None)
        if factory is None:
            raise ValueError(f"module {module_name!r} has no {function_name!r}")
        return factory(), {"size": list(size)}
    import torchvision

    known = torchvision.models.list_models()
    if source not in known:
        import difflib

        close = difflib.get_close_matches(source, known, n=5)
        raise ValueError(f"unknown torchvision model {source!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                     else ""))
    return torchvision.models.get_model(source, weights=weights), imagenet


if __name__ == "__main__":
    sys.exit(main())
