"""``attnserve import``: an ONNX file from any framework → the model repository, its gates as maps.

attnserve import MODEL.onnx --task classification|detection --labels FILE --name NAME --repository DIR
                 [--layout auto|nchw|nhwc] [--input-range unit|bytes] [--channels rgb|bgr]
                 [--image-mean R G B --image-std R G B] [--scores logits|probabilities] [--output NAME]
                 [--detection-outputs BOXES SCORES CLASSES] [--input-size H W]
                 [--head candidates [--head-outputs NAME...] [--box-format ...] [--nms ...] ...]
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from attnserve.export.cli import add_head_options, decode_spec
from attnserve.export.errors import ExportError
from attnserve.export.importer import (
    CHANNEL_ORDERS,
    LAYOUTS,
    SCORE_KINDS,
    VALUE_RANGES,
    ImportRequest,
    import_model,
)
from attnserve.imaging import RESIZE_POLICIES
from attnserve.manifest import TASKS

# every option's default is the request's own, stated once there
DEFAULTS = {f.name: f.default for f in dataclasses.fields(ImportRequest)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnserve import", description=__doc__.splitlines()[0])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("onnx", type=Path, help="the .onnx file")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument(
        "--labels", type=Path, required=True, help="text file, one class name per line in output order"
    )
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--repository", type=Path, required=True, help="model repository folder")
    p.add_argument("--version", type=int, help="version number (default: the next free one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument(
        "--input-size", nargs=2, type=int, metavar=("H", "W"), help="when the graph leaves H, W open"
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=DEFAULTS["layout"],
        help="the input's layout (auto: from its shape)",
    )
    p.add_argument(
        "--input-range",
        choices=VALUE_RANGES,
        default=DEFAULTS["value_range"],
        help="unit: [0, 1]; bytes: 0..255",
    )
    p.add_argument(
        "--channels", choices=CHANNEL_ORDERS, default=DEFAULTS["channels"], help="the input's channel order"
    )
    p.add_argument("--image-mean", nargs=3, type=float, metavar=("R", "G", "B"), help="in the input's units")
    p.add_argument("--image-std", nargs=3, type=float, metavar=("R", "G", "B"), help="in the input's units")
    p.add_argument(
        "--scores", choices=SCORE_KINDS, default=DEFAULTS["scores"], help="what a classifier outputs"
    )
    p.add_argument("--output", help="a classifier's class-score output, when the graph has several")
    p.add_argument(
        "--detection-outputs", nargs=3, metavar=("BOXES", "SCORES", "CLASSES"), help="a detector's"
    )
    p.add_argument("--resize", choices=RESIZE_POLICIES, help="default: letterbox (detection), resize (else)")
    p.add_argument(
        "--attention", choices=("auto", "none"), default=DEFAULTS["attention"], help="auto: the gates found"
    )
    add_head_options(p, layouts=("candidates",))
    p.add_argument(
        "--head-outputs",
        nargs="+",
        metavar="NAME",
        help="with --head: the packed head, or BOXES SCORES [OBJECTNESS] (default: the graph's outputs)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        decode = decode_spec(args)
    except ExportError as exc:
        parser.error(str(exc))
    if args.head_outputs and decode is None:
        parser.error("--head-outputs names raw heads: pass --head candidates too.")
    request = ImportRequest(
        onnx=args.onnx,
        repository=args.repository,
        name=args.name,
        task=args.task,
        labels=args.labels,
        version=args.version,
        input_size=tuple(args.input_size) if args.input_size else None,
        layout=args.layout,
        value_range=args.input_range,
        channels=args.channels,
        image_mean=args.image_mean,
        image_std=args.image_std,
        scores=args.scores,
        attention=args.attention,
        output=args.output,
        detection_outputs=tuple(args.detection_outputs) if args.detection_outputs else None,
        decode=decode,
        head_outputs=tuple(args.head_outputs) if args.head_outputs else None,
        resize=args.resize,
        overwrite=args.overwrite,
    )
    try:
        path, manifest = import_model(request, log=lambda line: print(line, file=sys.stderr, flush=True))
    except ExportError as exc:
        print(f"attnserve import: error: {exc}", file=sys.stderr)
        return 2
    checked = manifest.verification["predictions_vs_original"]
    print(f"{path}: {manifest.task}, imported, {len(manifest.attention)} attention outputs")
    if "detections_vs_reference" in checked:
        matched = checked["detections_vs_reference"]["detections"]
        print(f"  {matched['compared']} detections matched the reference decode + NMS on {checked['images']}")
    else:
        same = ", ".join(checked["bit_identical"])
        print(f"  {same} bit-identical to the original graph's on {checked['images']}")
    for a in manifest.attention:
        print(f"  {a.name}: {a.kind} {a.shape} from {a.source or 'model'}")
    return 0
