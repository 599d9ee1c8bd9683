"""The ``onnx-gradcam`` command line: ``layers``, ``explain``, ``export``, ``convert``, ``scan``.

``convert`` is the one command that needs a training framework: it imports the ``converters`` package
(and torch or TensorFlow) only when it runs; the others need ONNX Runtime alone.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import warnings
from typing import Optional, Sequence

from . import __version__, layers_and_default
from .autodiff import UnsupportedOperatorError
from .explainer import EXPORT_TARGETS, Explainer
from .export import default_name, explainer_to_export, write_triton_entry
from .files import OVERLAY_FORMATS, OVERLAY_SIZES, explain_files, find_images, input_folders, preprocessing_for
from .graph.layers import UnknownLayerError
from .images import IMAGENET_MEAN, IMAGENET_STD
from .methods import GRADIENT_METHODS, METHODS
from .pipeline import default_workers, session_options
from .scores.faithfulness import FAITHFULNESS
from .subject import PRECISIONS
from .writing import atomic, file_to_write, refuse_inputs, same_file

SOME_IMAGES_FAILED, USAGE_ERROR = 1, 2
LOCAL_RAY = "local"
"""``--ray`` given no address: start a local Ray instance."""
"""Exit statuses besides 0: an image failed (without --keep-going), or the command could not run."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UnknownLayerError as error:
        model = getattr(args, "model", None) or args.onnx
        return _fail(args, error.pointing_at(f"`onnx-gradcam layers {model}` lists the candidates."))
    except (ValueError, TypeError, OSError, ImportError, UnsupportedOperatorError) as error:
        return _fail(args, error)


def _fail(args, error: Exception) -> int:
    """A user's mistake: one line on stderr, no traceback."""
    print(f"onnx-gradcam {args.command}: error: {error}", file=sys.stderr)
    return USAGE_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-gradcam", description="Grad-CAM and its family for ONNX models, on ONNX Runtime.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"onnx-gradcam {__version__}")
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
    export.add_argument("--max-batch-size", type=_count, default=8, metavar="N",
                        help="Triton max_batch_size (default 8; 0 for a model with a fixed batch size)")
    _layer_option(export, "--layer")
    export.add_argument("--method", default="gradcam", choices=GRADIENT_METHODS, metavar="METHOD",
                        help=f"gradient CAM method: {', '.join(GRADIENT_METHODS)} (default gradcam)")
    export.add_argument("--targets", default="top", choices=EXPORT_TARGETS,
                        help="top: explain each image's top class; input: add an int64 target_class input; "
                             "seed: add a float target_seed input shaped like the output, for dense outputs "
                             "(default top)")
    export.add_argument("--output", metavar="NAME", help="the model output to explain; the first by default")
    _precision_option(export)
    export.set_defaults(run=_export)

    convert = commands.add_parser("convert", help="convert a PyTorch or Keras model to ONNX with layers kept as "
                                                  "named outputs (and optionally explain images with it)")
    convert.add_argument("source", help="a torchvision model name (resnet50), timm:NAME, a factory "
                                        "'package.module:function', or a saved .keras file")
    convert.add_argument("-o", "--onnx", required=True, help="where to write the ONNX model")
    convert.add_argument("--layer", action="append", default=[], dest="layers",
                         help="a layer to keep as an output (PyTorch module path, Keras layer path); repeatable")
    convert.add_argument("--input-size", type=_positive_int, nargs=2, default=(224, 224), metavar=("H", "W"),
                         help="example input size for PyTorch export (default 224 224)")
    convert.add_argument("--channels", type=_positive_int, metavar="C",
                         help="image channels of the PyTorch example input (default: the first Conv2d's "
                              "in_channels, else 3)")
    convert.add_argument("--weights", help="torchvision weights name (e.g. DEFAULT); random weights if omitted")
    convert.add_argument("--explain", nargs="+", metavar="IMAGE", dest="explain_images",
                         help="also explain these images (files or folders) with the converted model")
    _explain_options(convert, layer_flag="--explain-layer", out_required=False)
    convert.set_defaults(run=_convert)
    _scan_parser(commands)
    return parser


def _scan_parser(commands) -> None:
    scan = commands.add_parser("scan", help="rank layers (and methods) by how well their maps find the ground "
                                            "truth and how faithful they are to the model; writes a report")
    scan.add_argument("model", help="the ONNX model")
    scan.add_argument("images", nargs="+", help="image files or folders of images")
    truth = scan.add_mutually_exclusive_group()
    truth.add_argument("--boxes", metavar="FILE", help="object boxes: CSV with header image,x0,y0,x1,y1 (pixels "
                                                       "of the image file; rows of one image are united) or JSON "
                                                       "{image: [[x0, y0, x1, y1], ...]}")
    truth.add_argument("--masks", metavar="DIR", help="a folder of object masks, one per image with the same stem "
                                                      "(nonzero = object)")
    scan.add_argument("--out", required=True, help="folder for scores.csv, scores.json, scores_by_depth.png, "
                                                   "grid.png and report.html")
    scan.add_argument("--layer", action="append", dest="scan_layers", metavar="LAYER",
                      help="a layer to scan; repeatable (default: every candidate, see `onnx-gradcam layers MODEL`)")
    scan.add_argument("--method", action="append", dest="methods", choices=GRADIENT_METHODS, metavar="METHOD",
                      help=f"a gradient CAM method to compare; repeatable: {', '.join(GRADIENT_METHODS)} "
                           "(default gradcam)")
    scan.add_argument("--target", type=int, metavar="CLASS",
                      help="class to explain for every image (default: each image's top class)")
    scan.add_argument("--faithfulness", nargs="*", choices=FAITHFULNESS, metavar="SCORE",
                      help=f"faithfulness scores to compute: {', '.join(FAITHFULNESS)} (default all but ROAD, "
                           "whose sparse solves cost about a second per image at 224x224; the flag alone: none)")
    scan.add_argument("--rank-by", nargs="+", metavar="SCORE",
                      help="scores to rank by (default: the localisation scores with --boxes or --masks, else "
                           "the faithfulness scores)")
    scan.add_argument("--grid-images", type=_count, default=6, metavar="N",
                      help="images in the picture grid (default 6)")
    scan.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                      help="images per ONNX Runtime run (default 16)")
    scan.add_argument("--output", metavar="NAME", help="the model output to explain; the first by default")
    _preprocessing_options(scan)
    scan.set_defaults(run=_scan)


EXAMPLES = """examples:
  onnx-gradcam layers model.onnx
  onnx-gradcam explain model.onnx photos/ --out explained --method gradcam++
  onnx-gradcam export model.onnx -o explainer.onnx --targets input
  onnx-gradcam export model.onnx --triton model_repository
  onnx-gradcam scan model.onnx val_images/ --boxes boxes.csv --out scan
  onnx-gradcam convert resnet50 -o resnet50.onnx --layer layer4 --explain photos/

`python -m onnx_gradcam` runs the same commands. `onnx-gradcam COMMAND --help` lists a command's options.
No command writes over one of its inputs. Exit status: 0 done, 1 an image failed (without --keep-going),
2 the command could not run (the reason is one line on stderr)."""


def _layer_option(parser: argparse.ArgumentParser, flag: str, default: str = "auto: the last conv block") -> None:
    """One meaning for a repeated layer flag in every command: the layers' maps averaged (as pytorch-grad-cam
    averages its target_layers)."""
    parser.add_argument(flag, action="append", dest="explain_layers", metavar="LAYER",
                        help="layer to explain at: a framework name or tensor name, see `onnx-gradcam layers "
                             f"MODEL` (default {default}); repeat to average the layers' maps")


def _precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="float16 and bfloat16 models: float32 recomputes the head in float32 for the backward "
                             "pass (default); model keeps the model's own type")


def _explain_options(parser: argparse.ArgumentParser, layer_flag: str, out_required: bool) -> None:
    parser.add_argument("--out", required=out_required,
                        help="output folder for overlays, maps, summary.json and summary.csv" +
                             ("" if out_required else " (default: beside the ONNX model)") +
                             "; outputs are named after the image's path below the folder common to all inputs, "
                             "extension kept (photos/dup.jpg -> dup.jpg_cam.png, dup.jpg_cam.npy)")
    parser.add_argument("--into-input-folder", action="store_true",
                        help="allow --out to be a folder the input images are in (refused by default: the "
                             "overlays would mix with the images)")
    _layer_option(parser, layer_flag, "auto: the last conv block" + ("" if out_required else "; here the last --layer"))
    parser.add_argument("--method", default="gradcam", choices=METHODS, metavar="METHOD",
                        help=f"CAM method: {', '.join(METHODS)} (default gradcam)")
    parser.add_argument("--eigen-smooth", action="store_true", help="first principal component instead of the sum")
    parser.add_argument("--aug-smooth", action="store_true", help="average over flips and brightness changes")
    parser.add_argument("--target", type=int, metavar="CLASS",
                        help="class to explain for every image (default: each image's top class)")
    _preprocessing_options(parser)
    parser.add_argument("--layout", choices=["NCHW", "NHWC"], help="the image input's layout (default: from the "
                                                                   "model's metadata or its input shape)")
    parser.add_argument("--output", metavar="NAME", help="the model output to explain; the first by default")
    _precision_option(parser)
    parser.add_argument("--alpha", type=_fraction, default=0.5, help="map opacity in overlays, 0 to 1 (default 0.5)")
    parser.add_argument("--colormap", default="jet", choices=["jet", "turbo", "viridis"],
                        help="overlay colormap (default jet)")
    parser.add_argument("--overlay-size", choices=OVERLAY_SIZES, default="original",
                        help="overlays at the original image's size and aspect (the map resized back), or at the "
                             "model's input size (default original)")
    parser.add_argument("--overlay-format", choices=OVERLAY_FORMATS, default="png",
                        help="overlay files: png (lossless) or jpg (quality 90: a fifth of the size, and 30 times "
                             "faster to encode) (default png)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help="images per ONNX Runtime run, of one size (default 16)")
    parser.add_argument("--workers", type=_positive_int, default=default_workers(), metavar="N",
                        help="threads reading images, and as many writing outputs, while ONNX Runtime runs "
                             f"(default {default_workers()})")
    parser.add_argument("--no-overlays", dest="overlays", action="store_false",
                        help="write maps (.npy) and the summary only")
    parser.add_argument("--resume", action="store_true",
                        help="keep the images the summary in --out holds as explained, their outputs there, and "
                             "explain the rest (an interrupted run; refused for another layer or method)")
    parser.add_argument("--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
                        help="explain on Ray Data (pip install onnx-gradcam[ray]): a local Ray instance, or the "
                             "cluster at ADDRESS (auto, ray://head:10001); --workers actors of one CPU each. "
                             "Writes maps/ and summary/ as Parquet (and overlays/ unless --no-overlays) into --out")
    parser.add_argument("--keep-going", action=argparse.BooleanOptionalAction, default=None,
                        help="explain the other images when one fails and exit 0 (the failures are rows of the "
                             "summary); without it a failure stops the run with exit status 1. Default: on when "
                             "an input is a folder, off for files only")


def _preprocessing_options(parser: argparse.ArgumentParser) -> None:
    """How image files become the model's input, where the model's metadata does not say (or says wrong)."""
    parser.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"),
                        help="resize images to H W (default: from the model's metadata or its input shape; a "
                             "fixed-size model takes its own size only; a model of any size, none given, "
                             "explains each image at its own size)")
    parser.add_argument("--mean", type=_finite, nargs="+", metavar="M",
                        help="mean subtracted after scaling pixels to [0, 1]: one per channel, or one for all "
                             "(default: metadata, else 0)")
    parser.add_argument("--std", type=_nonzero_float, nargs="+", metavar="S",
                        help="std divided by after the mean: one per channel, or one for all (default: metadata, "
                             "else 1)")
    parser.add_argument("--channel-order", choices=["RGB", "BGR"],
                        help="channel order the model expects (default: metadata, else RGB)")


def _preprocessing_overrides(args) -> dict:
    return {"size": args.size, "mean": args.mean, "std": args.std, "channel_order": args.channel_order}


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number (1 or more)")
    return value


def _count(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give 0 or more")
    return value


def _fraction(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def _nonzero_float(text: str) -> float:
    value = _finite(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 cannot divide the pixels: give a non-zero std")
    return value


def _finite(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _number(text: str, kind: type):
    """``kind(text)``, or argparse's one-line usage error."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None


def _layers(args) -> int:
    layers, default, _, where = layers_and_default(args.model, args.output)
    if default is None:
        print("no candidate layers")
        return 0
    chosen = default.tensor
    rows = [("*" if layer.tensor == chosen else "", layer.tensor, layer.op, "x".join(str(d) for d in layer.shape),
             layer.name or "", layer.layout, where[layer.tensor].depth, _stride(where[layer.tensor].stride),
             _place(where[layer.tensor])) for layer in layers]
    header = ("", "tensor", "op", "shape", "framework name", "layout", "depth", "stride", "place")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"* default (layer='auto'): {chosen}")
    return 0


def _stride(stride) -> str:
    return "" if stride is None else f"{stride:g}"


def _place(place) -> str:
    """A place as the layers table shows it: its kind, and for a branch where it rejoins and what to use."""
    if place.merge is None:
        return place.kind
    return f"{place.kind} (rejoins at {place.merge}; block output {place.use_instead})"


def _explain(args) -> int:
    return _explain_with(args.model, args.images, args)


def _explain_with(model_path: str, image_args: Sequence[str], args) -> int:
    if args.ray is not None:
        return _explain_on_ray(model_path, image_args, args)
    explainer = Explainer(model_path, layer=args.explain_layers or "auto", method=args.method, output=args.output,
                          eigen_smooth=args.eigen_smooth, layout=args.layout, precision=args.precision,
                          session_options=session_options)
    images = find_images(image_args)
    _check_out_folder(args.out, image_args, args.into_input_folder)
    keep_going = args.keep_going if args.keep_going is not None else any(os.path.isdir(p) for p in image_args)
    overrides = _preprocessing_overrides(args)
    outcomes = explain_files(explainer, images, args.out, args.target, preprocessing_for(explainer, overrides),
                             args.batch_size, args.alpha, args.colormap, aug_smooth=args.aug_smooth,
                             keep_going=keep_going, overlay_size=args.overlay_size,
                             overlay_format=args.overlay_format, workers=args.workers,
                             resume=args.resume, overlays=args.overlays)
    for outcome in outcomes:
        if outcome.status != "explained":
            print(f"{outcome.status} {outcome.image}: {outcome.reason}", file=sys.stderr)
    failed = sum(o.status == "failed" for o in outcomes)
    explained = sum(o.status == "explained" for o in outcomes)
    resumed = sum(o.resumed for o in outcomes)
    print(f"explained {explained} of {len(outcomes)} images ({failed} failed) at "
          f"{', '.join(explainer.subject.keys)}; wrote {args.out}" +
          (f"; {resumed} were done already (--resume)" if args.resume else ""))
    return SOME_IMAGES_FAILED if failed and not keep_going else 0


ON_THE_HOST_ONLY = {"resume": "--resume", "aug_smooth": "--aug-smooth", "eigen_smooth": "--eigen-smooth",
                    "output": "--output", "layout": "--layout"}
"""explain's options a Ray run does not take (its summary is Parquet, its explainer the model's defaults)."""


def _explain_on_ray(model_path: str, image_args: Sequence[str], args) -> int:
    """``explain --ray``: the images explained by :func:`onnx_gradcam.bulk.explain_dataset`."""
    given = [flag for name, flag in ON_THE_HOST_ONLY.items() if getattr(args, name)]
    given += ["--precision"] * (args.precision != "float32") + ["--overlay-size"] * (args.overlay_size != "original")
    given += ["--overlay-format"] * (args.overlay_format != "png")
    if given:
        raise ValueError(f"{', '.join(given)} cannot be used with --ray; leave them out, or run without --ray")
    from .bulk import explain_dataset

    _check_out_folder(args.out, image_args, args.into_input_folder)
    summary = explain_dataset(list(image_args), model_path, args.out, layer=args.explain_layers or "auto",
                              method=args.method, targets=args.target, actors=args.workers,
                              batch_size=args.batch_size, overlays=args.overlays,
                              preprocessing=_preprocessing_overrides(args),
                              alpha=args.alpha, colormap=args.colormap,
                              address=None if args.ray == LOCAL_RAY else args.ray)
    print(summary)
    keep_going = args.keep_going if args.keep_going is not None else True
    return SOME_IMAGES_FAILED if summary.failed and not keep_going else 0


def _check_out_folder(out: str, image_args: Sequence[str], allowed: bool) -> None:
    """Refuse an output folder that is an input image, or (unless ``allowed``) a folder input images are in."""
    refuse_inputs(out, [path for path in image_args if not os.path.isdir(path)], "output folder")
    for folder in input_folders(image_args):
        if same_file(out, folder) and not allowed:
            raise ValueError(f"--out {out!r} is a folder the input images are in: overlays and maps would mix "
                             "with them; name another folder, or pass --into-input-folder")


def _scan(args) -> int:
    from .scanning import scan

    find_images(args.images)
    _check_out_folder(args.out, args.images, allowed=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = scan(args.model, args.images, ground_truth=args.boxes or args.masks,
                      layers=args.scan_layers or "all", methods=args.methods or ["gradcam"], targets=args.target,
                      output=args.output, faithfulness=args.faithfulness, rank_by=args.rank_by,
                      batch_size=args.batch_size, grid_images=args.grid_images, out=args.out,
                      preprocessing=_preprocessing_overrides(args))
    for warning in caught:
        print(f"onnx-gradcam scan: {warning.message}", file=sys.stderr)
    print(result.recommendation)
    print(f"scanned {result.rows[0]['images']} images at {len(result.rows)} layer-method pairs; wrote "
          f"{os.path.join(args.out, 'report.html')} (and scores.csv, scores.json, scores_by_depth.png, grid.png)")
    return 0


def _export(args) -> int:
    if not (args.onnx or args.triton):
        raise ValueError("say where to write the explainer: -o FILE.onnx, --triton DIR, or both")
    if args.onnx:
        refuse_inputs(file_to_write(args.onnx), [args.model], "-o file")  # before the explainer is built
    explainer = explainer_to_export(args.model, layer=args.explain_layers or "auto", method=args.method,
                                    output=args.output, precision=args.precision)
    if args.onnx:
        explainer.export(args.onnx, args.targets)
        print(f"wrote {args.onnx}")
    if args.triton:
        folder = write_triton_entry(explainer, args.triton, args.name or default_name(args.model, args.method),
                                    args.targets, args.max_batch_size)
        print(f"wrote {folder}/1/model.onnx and {folder}/config.pbtxt")
    return 0


def _convert(args) -> int:
    refuse_inputs(file_to_write(args.onnx), [args.source], "-o file")
    if args.explain_images:  # the images and --out are checked before the conversion, which takes a while
        args.out = args.out or os.path.splitext(args.onnx)[0] + "_explained"
        find_images(args.explain_images)
        _check_out_folder(args.out, args.explain_images, args.into_input_folder)
    with atomic(args.onnx) as staged:
        _convert_to(args, staged)
    print(f"wrote {args.onnx}")
    if args.explain_images:
        args.explain_layers = args.explain_layers or args.layers[-1:] or None
        return _explain_with(args.onnx, args.explain_images, args)
    return 0


def _convert_to(args, path: str) -> None:
    """Convert ``args.source`` (a saved Keras file, or a PyTorch model by name) into the ONNX file ``path``."""
    if args.source.endswith((".keras", ".h5")):
        from converters import keras as keras_converter
        import keras

        keras_converter.export(keras.saving.load_model(args.source), path, layers=args.layers)
        return
    import torch

    from converters import pytorch as torch_converter

    model, preprocessing = _torch_model(args.source, args.weights, args.input_size)
    channels = args.channels or next((m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), 3)
    example = torch.zeros(2, channels, *args.input_size)
    torch_converter.export(model, example, path, layers=args.layers, preprocessing=preprocessing)


def _torch_model(source: str, weights: Optional[str], size: Sequence[int]):
    """(model, preprocessing metadata) for a torchvision name, timm:NAME, or package.module:function."""
    imagenet = {"size": list(size), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channel_order": "RGB"}
    if source.startswith("timm:"):
        timm = importlib.import_module("timm")
        return timm.create_model(source[len("timm:"):], pretrained=weights is not None), imagenet
    if ":" in source:
        return _factory(source)(), {"size": list(size)}
    import torchvision

    known = torchvision.models.list_models()
    if source not in known:
        import difflib

        close = difflib.get_close_matches(source, known, n=5)
        raise ValueError(f"unknown torchvision model {source!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                     else ""))
    return _torchvision_model(torchvision, source, weights), imagenet


def _factory(source: str):
    """The function ``package.module:function`` names, or one line saying which part is missing."""
    module_name, _, function_name = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(f"cannot import {module_name!r} for the factory {source!r}: {error} (is its folder on "
                         "PYTHONPATH?)") from None
    factory = getattr(module, function_name, None)
    if factory is None:
        raise ValueError(f"module {module_name!r} has no {function_name!r}")
    return factory


def _torchvision_model(torchvision, name: str, weights: Optional[str]):
    """torchvision's ``name`` with ``weights``; unknown weights and a failed download are one line each."""
    try:
        return torchvision.models.get_model(name, weights=weights)
    except KeyError:
        known = [w.name for w in torchvision.models.get_model_weights(name)]
        raise ValueError(f"unknown weights {weights!r} for {name}; known: DEFAULT, {', '.join(known)}") from None
    except OSError as error:  # urllib's URLError: no network, proxy refused, ...
        raise ValueError(f"cannot download the {weights} weights of {name}: {getattr(error, 'reason', error)}; "
                         "without a network, put the weights file in torch's cache ($TORCH_HOME/hub/checkpoints) "
                         "or leave out --weights for random weights") from None


if __name__ == "__main__":
    sys.exit(main())
