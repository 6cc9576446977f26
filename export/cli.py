"""``attnserve export``: PyTorch model → verified ONNX model with its attention maps, in a model repository.

attnserve export --arch NAME [--checkpoint PATH] --repository DIR [--name NAME] [--version N]
attnserve export --factory MODULE:CALLABLE [--factory-kwargs JSON] [--checkpoint PATH]
                 --task classification|detection --input-size H W [--labels FILE]
                 --name NAME --repository DIR [--version N]
attnserve export --demo --repository DIR

A detector that returns raw heads gets its decoding and NMS added to the graph with --head
candidates|dense (and the box, score and NMS options below); see docs/export.md.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from attnserve.export.decode import (
    ACTIVATIONS,
    BOX_FORMATS,
    BOX_UNITS,
    LAYOUTS,
    NMS_MODES,
    REGRESSIONS,
    DecodeSpec,
)
from attnserve.export.errors import ExportError
from attnserve.export.exporters import EXPORTERS
from attnserve.export.pipeline import (
    ATTENTION_MODES,
    ExportRequest,
    demo_requests,
    export_model,
)
from attnserve.export.repository import versions
from attnserve.export.verify import agreement_value
from attnserve.imaging import RESIZE_POLICIES
from attnserve.manifest import PRECISIONS, TASKS, Manifest
from attnserve.models.zoo import ARCH_PRESETS

# every option's default is the request's own, stated once there
DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExportRequest)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnserve export", description=__doc__.splitlines()[0])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    what = p.add_argument_group("what to export (one of)")
    what.add_argument("--arch", help=f"one of our architectures: {', '.join(ARCH_PRESETS)}")
    what.add_argument(
        "--factory", metavar="MODULE:CALLABLE", help="import MODULE, call CALLABLE to build the model"
    )
    what.add_argument("--demo", action="store_true", help="every shipped demo model, each under its own name")
    p.add_argument(
        "--factory-kwargs", metavar="JSON", help="keyword arguments for the factory, a JSON object"
    )
    p.add_argument(
        "--checkpoint", type=Path, help="state dict to load (torch.save of tensors; never unpickled code)"
    )
    p.add_argument("--task", choices=TASKS, help="required with --factory")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="required with --factory")
    p.add_argument("--labels", type=Path, help="text file, one class name per line in output order")
    where = p.add_argument_group("where to write")
    where.add_argument("--repository", type=Path, required=True, help="model repository folder")
    where.add_argument("--name", help="model name in the repository (default: the --arch name)")
    where.add_argument("--version", type=int, help="version number (default: the next free one)")
    where.add_argument("--overwrite", action="store_true", help="replace an existing version")
    where.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave a model alone if it has any version (provisioning)",
    )
    how = p.add_argument_group("how")
    how.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS["precision"])
    how.add_argument("--calibration", type=Path, metavar="DIR", help="images for int8 calibration")
    how.add_argument(
        "--calibration-count",
        type=int,
        default=DEFAULTS["calibration_count"],
        help="images used for calibration",
    )
    how.add_argument(
        "--calibration-method",
        choices=("percentile", "minmax"),
        default=DEFAULTS["calibration_method"],
        help="percentile (default; more accurate on the demo models) or minmax",
    )
    how.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULTS["min_agreement"],
        help="fp16/int8 agreement with fp32 required",
    )
    how.add_argument("--opset", type=int, default=DEFAULTS["opset"])
    how.add_argument(
        "--image-mean", nargs=3, type=float, metavar=("R", "G", "B"), help="for --factory models"
    )
    how.add_argument("--image-std", nargs=3, type=float, metavar=("R", "G", "B"), help="for --factory models")
    how.add_argument(
        "--resize", choices=RESIZE_POLICIES, help="default: letterbox (detection), resize (else)"
    )
    how.add_argument(
        "--attention", choices=ATTENTION_MODES, default=DEFAULTS["attention"], help="which attention outputs"
    )
    how.add_argument("--exporter", choices=("auto", *EXPORTERS), default=DEFAULTS["exporter"])
    how.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_head_options(p)
    return p


def add_head_options(parser: argparse.ArgumentParser, layouts: tuple[str, ...] = LAYOUTS) -> None:
    """--head and its companions (read back by ``decode_spec``), for export and import alike."""
    heads = parser.add_argument_group("raw detector heads: decoding and NMS added to the graph")
    defaults = DecodeSpec("candidates")
    heads.add_argument(
        "--head", choices=layouts, help="candidates: boxes N×A×4 + scores N×A×K; dense: per level"
    )
    heads.add_argument(
        "--box-format", choices=BOX_FORMATS, help=f"candidates' boxes (default {defaults.box_format})"
    )
    heads.add_argument(
        "--box-regression", choices=REGRESSIONS, help=f"dense box maps (default {defaults.regression})"
    )
    heads.add_argument(
        "--box-units", choices=BOX_UNITS, help=f"dense box maps in (default {defaults.box_units})"
    )
    heads.add_argument(
        "--score-activation",
        choices=ACTIVATIONS,
        help=f"class outputs → probabilities (default {defaults.activation})",
    )
    heads.add_argument(
        "--nms", choices=NMS_MODES, help=f"per class or class-agnostic (default {defaults.nms})"
    )
    heads.add_argument("--iou-threshold", type=float, help=f"NMS IoU (default {defaults.iou_threshold})")
    heads.add_argument(
        "--nms-score-threshold",
        type=float,
        help=f"candidates at or below are dropped (default {defaults.score_threshold})",
    )
    heads.add_argument("--max-detections", type=int, help=f"per image (default {defaults.max_detections})")


# --head's companions, as DecodeSpec fields
DECODE_OPTIONS = {
    "box_format": "box_format",
    "box_regression": "regression",
    "box_units": "box_units",
    "score_activation": "activation",
    "nms": "nms",
    "iou_threshold": "iou_threshold",
    "nms_score_threshold": "score_threshold",
    "max_detections": "max_detections",
}


def decode_spec(args: argparse.Namespace) -> DecodeSpec | None:
    given = {field: getattr(args, option) for option, field in DECODE_OPTIONS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if args.head is None:
        if given:
            options = ", ".join(f"--{o.replace('_', '-')}" for o, f in DECODE_OPTIONS.items() if f in given)
            raise ExportError(
                f"{options} describe raw detector heads: pass --head candidates or --head dense too."
            )
        return None
    spec = DecodeSpec(args.head, **given)
    spec.check()
    return spec


def requests_from(args: argparse.Namespace) -> list[ExportRequest]:
    common = dict(
        version=args.version,
        checkpoint=args.checkpoint,
        task=args.task,
        input_size=tuple(args.input_size) if args.input_size else None,
        labels=args.labels,
        precision=args.precision,
        calibration=args.calibration,
        calibration_count=args.calibration_count,
        calibration_method=args.calibration_method,
        opset=args.opset,
        image_mean=args.image_mean,
        image_std=args.image_std,
        resize=args.resize,
        attention=args.attention,
        exporter=args.exporter,
        min_agreement=args.min_agreement,
        decode=decode_spec(args),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if args.demo:
        if args.arch or args.factory or args.checkpoint or args.name:
            raise ExportError(
                "--demo exports the shipped demo models: leave out --arch, --factory, --checkpoint, --name."
            )
        return demo_requests(args.repository, **common)
    return [
        ExportRequest(
            args.repository,
            name=args.name,
            arch=args.arch,
            factory=args.factory,
            factory_kwargs=args.factory_kwargs,
            **common,
        )
    ]


def run(args: argparse.Namespace) -> int:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        for request in requests_from(args):
            name = request.name or request.arch
            if args.skip_existing and versions(request.repository, name):
                log(f"{name}: already in {request.repository}; skipped")
                continue
            path, manifest = export_model(request, log)
            print(summary(path, manifest))
    except ExportError as exc:
        print(f"attnserve export: error: {exc}", file=sys.stderr)
        return 2
    return 0


def summary(path: Path, manifest: Manifest) -> str:
    v = manifest.verification
    fp32 = v["parity_fp32_vs_pytorch"]
    worst = max(fp32["max_abs_diff"].values(), default=0.0)
    lines = [
        f"{path}: {manifest.task}, {manifest.precision}, exporter {manifest.exporter}, "
        f"{len(manifest.attention)} attention outputs",
        f"  parity with PyTorch: max abs diff {worst:.1e} (tolerance {fp32['tolerance']})",
    ]
    if "detections" in fp32:
        d = fp32["detections"]
        lines.append(f"  detections matched as sets: {d['compared'] - d['unmatched']}/{d['compared']}")
    for key in ("fp16_vs_fp32", "int8_vs_fp32"):
        if key in v:
            figures = v[key]
            value = agreement_value(manifest.task, figures)
            lines.append(f"  {key.replace('_vs_', ' vs ')} agreement {value:.3f} on {figures['measured_on']}")
            if "reference_arithmetic" in figures:
                exact = agreement_value(manifest.task, figures["reference_arithmetic"])
                host = figures["cpu"]
                features = ", ".join(host["int8_features"] or ["unknown"])
                lines.append(f"    on {host['model']} ({features}); {exact:.3f} in the reference arithmetic")
    lines += [
        f"  {a.name}: {a.kind} {a.shape} from {a.source or 'model'} ({a.origin})" for a in manifest.attention
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
