"""``attnserve predict``: a client that prints predictions and writes attention overlays a person can
look at."""

import argparse
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from PIL import Image, ImageDraw

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.client import security
from attnserve.client.clients import VisionClient
from attnserve.maps import CAM, CHANNEL, ROLLOUT, SELF_ATTENTION, SPATIAL


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attnserve predict", description="Predict with a served model.")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int, default=0, help="default: the latest")
    parser.add_argument("--server", default="localhost:50051", help="HOST:PORT")
    parser.add_argument(
        "--maps",
        action="append",
        default=[],
        metavar="KIND|NAME|all",
        help="attention maps to return (repeatable); with --overlay the default is the "
        "model's CAM, a transformer's rollout and block maps, or spatial maps",
    )
    parser.add_argument("--overlay", type=Path, metavar="DIR", help="write each map as a PNG overlay here")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--threshold", type=float, help="score threshold")
    parser.add_argument("--json", action="store_true", help="print the response as one JSON document")
    parser.add_argument("--timeout", type=float, default=30.0)
    security.add_arguments(parser)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"attnserve predict: error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        reach = security.from_arguments(args)
    except ValueError as exc:
        print(f"attnserve predict: error: {exc}", file=sys.stderr)
        return 2
    try:
        with VisionClient(args.server, timeout=args.timeout, security=reach) as client:
            info = client.model_info(args.model, args.version)
            select = args.maps or (_default_overlay_maps(info) if args.overlay else [])
            options = {"version": args.version, "select": select, "score_threshold": args.threshold}
            if args.overlay:
                options.update(encoding="png_overlay", geometry="original_image")
            if info.task == "classification":
                reply = client.classify(args.images, args.model, top_k=args.top_k, **options)
            else:
                reply = client.detect(args.images, args.model, **options)
    except grpc.RpcError as exc:
        print(f"attnserve predict: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_without_map_bytes(as_json(reply)), indent=2))
    else:
        for path, result in zip(args.images, reply.results, strict=True):
            print(f"{path}: {_describe(result, info.task)}")
    if args.overlay:  # status lines on stderr: stdout stays the prediction (one JSON document with --json)
        for path in _write_overlays(args.overlay, args.images, reply.results, info.task):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def as_json(message: Message) -> dict:
    """Every field, defaults included (class 0's ``classId``), with 64-bit integers as JSON numbers
    (protobuf's JSON mapping writes them as strings)."""
    data = MessageToDict(message, always_print_fields_with_no_presence=True)
    _int64_as_numbers(message, data)
    return data


_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


def _int64_as_numbers(message: Message, data: dict) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.json_name not in data:
            continue
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        values = getattr(message, field.name) if repeated else [getattr(message, field.name)]
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            items = data[field.json_name] if repeated else [data[field.json_name]]
            for value, item in zip(values, items, strict=True):
                _int64_as_numbers(value, item)
        elif field.cpp_type in _INT64:
            numbers = [int(v) for v in values]
            data[field.json_name] = numbers if repeated else numbers[0]


# The overlays written when --maps is not given: the first of these the model has
DEFAULT_OVERLAYS = ([CAM], [ROLLOUT, SELF_ATTENTION], [SPATIAL])  # a transformer: rollout and blocks


def _default_overlay_maps(info: pb.ModelInfo) -> list[str]:
    kinds = {a.kind for a in info.attention}
    return next((list(k) for k in DEFAULT_OVERLAYS if k[0] in kinds), [])


def _describe(result: pb.Classification | pb.DetectionResult, task: str) -> str:
    if task == "classification":
        return ", ".join(f"{s.label} {s.score:.3f}" for s in result.labels) or "(nothing above the threshold)"
    boxes = [
        f"{d.label} {d.score:.2f} at ({d.box.x1:.0f}, {d.box.y1:.0f}, {d.box.x2:.0f}, {d.box.y2:.0f})"
        for d in result.detections
    ]
    return "; ".join(boxes) or "(no detections)"


def _write_overlays(
    folder: Path, images: list[Path], results: Iterable[pb.Classification | pb.DetectionResult], task: str
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path, result in zip(images, results, strict=True):
        for m in result.maps:
            if m.kind == CHANNEL:
                continue
            overlay = Image.open(io.BytesIO(m.data)).convert("RGB")
            if task == "detection":  # the boxes too, so the map can be read against them
                draw = ImageDraw.Draw(overlay)
                for d in result.detections:
                    draw.rectangle((d.box.x1, d.box.y1, d.box.x2, d.box.y2), outline=(255, 255, 255), width=2)
                    draw.text((d.box.x1 + 3, d.box.y1 + 2), f"{d.label} {d.score:.2f}", fill=(255, 255, 255))
            target = folder / f"{path.stem}.{m.name}.png"
            overlay.save(target)
            written.append(target)
    return written


def _without_map_bytes(data: object) -> object:
    """Map bytes are base64 in JSON: replace them with their length to keep the output readable."""
    if isinstance(data, dict):
        return {
            k: (f"<{len(v) * 3 // 4} bytes>" if k == "data" else _without_map_bytes(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [_without_map_bytes(v) for v in data]
    return data
