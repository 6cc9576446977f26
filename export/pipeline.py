"""One export, start to finish: build the model, export it, find its maps, verify, reduce precision,
and write it into the repository. Any failure raises ExportError before the repository is touched."""

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from attnserve import cpu
from attnserve.export import nms, quantize, repository, samples
from attnserve.export.adapter import CANDIDATE_OUTPUTS, INPUT_NAME, ExportAdapter
from attnserve.export.capture import ExplicitAttention, GateRecorder
from attnserve.export.decode import DecodeSpec, HeadDecoder
from attnserve.export.discovery import PromotedMap, cpu_session, discover, promote
from attnserve.export.errors import ExportError
from attnserve.export.exporters import MIN_OPSET, export_onnx
from attnserve.export.self_attention import AttentionMap, discover_self_attention, promote_self_attention
from attnserve.export.sources import SourceModel, checkpoint_record, from_arch, from_factory
from attnserve.export.verify import (
    agreement,
    agreement_value,
    check_batch_sizes,
    check_graph,
    parity,
    run_onnx,
    run_torch,
)
from attnserve.imaging import LETTERBOX, RESIZE, RESIZE_POLICIES
from attnserve.manifest import (
    CLASSIFICATION,
    DETECTION,
    METADATA_KEY,
    PREDICTION_OUTPUTS,
    AttentionOutput,
    InputSpec,
    Manifest,
)
from attnserve.maps import CHANNEL
from attnserve.models.outputs import PREDICTION, OutputSpec
from attnserve.models.zoo import DEMO_MODELS

ATTENTION_MODES = ("auto", "declared", "none")
PARITY_SCENES, PARITY_NOISE = 16, 8
# fp16/int8 must agree with fp32 on this share of held-out images by default. The demo scenes are hard
# on purpose (objects from 8 % of the side, clutter, heavy JPEG): near-ties between two classes are
# common, and int8's rounding flips about 1 % of them (docs/export.md: 0.987–0.9999 for the demo
# models), while a broken quantisation (saturating kernels, a quantised heatmap) costs far more.
DEFAULT_MIN_AGREEMENT = 0.98
# Held-out scenes for fp16/int8 agreement. A 99% bar on 400 images rests on 4 of them; at 2000 the
# demo models' ~99.7% sits six standard errors (sqrt(p(1-p)/n) ≈ 0.12%) above it.
AGREEMENT_SCENES = 2000


@dataclass
class ExportRequest:
    repository: Path
    name: str | None = None
    version: int | None = None
    arch: str | None = None
    factory: str | None = None
    factory_kwargs: str | None = None
    checkpoint: Path | None = None
    task: str | None = None
    input_size: tuple[int, int] | None = None
    labels: Path | None = None
    precision: str = "fp32"
    calibration: Path | None = None
    calibration_count: int = 256
    calibration_method: str = "percentile"
    opset: int = MIN_OPSET
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    resize: str | None = None
    attention: str = "auto"
    exporter: str = "auto"
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    decode: DecodeSpec | None = None  # a detector's raw heads: decode and NMS added to the graph
    overwrite: bool = False
    progress: bool = True


def export_model(req: ExportRequest, log: Callable[[str], None] = print) -> tuple[Path, Manifest]:
    started = time.perf_counter()
    _check_request(req)
    source = _source(req)
    name = req.name or req.arch
    version = req.version or repository.next_version(req.repository, name)
    repository.check_free(req.repository, name, version, req.overwrite)
    size, task = source.input_size, source.task
    resize = req.resize or (LETTERBOX if task == DETECTION else RESIZE)
    mean, std = _normalization(req, source)

    declared = _declared_maps(req, source)
    # eval() on the adapter too: the TorchScript exporter restores the top module's training flag
    # afterwards, which would otherwise switch every BatchNorm to batch statistics
    in_graph = () if source.in_model_normalization else (mean, std)  # ours normalise themselves
    given_labels = _given_labels(req, source)
    decode = req.decode or (DecodeSpec(**source.raw_head) if source.raw_head else None)
    decoder = _decoder(decode, source, given_labels)
    adapter = ExportAdapter(
        source.module, task, [s.name for s in declared], *in_graph, decoder=decoder
    ).eval()
    sample = samples.scene_images(task, 2, size, resize, samples.VERIFY_SEED)
    labels = _labels(source, adapter, sample, given_labels)

    log(f"{name}: exporting ({task}, {size[0]}×{size[1]}, opset {req.opset})")
    discovering = req.attention == "auto" and not source.declared
    # attention written with fused kernels is exported (and recorded) with its softmax written out
    with ExplicitAttention(source.module) if discovering else contextlib.nullcontext() as explicit:
        proto, exporter, failures = export_onnx(adapter, torch.from_numpy(sample), req.opset, req.exporter)
    for failure in failures:
        log(f"{name}: fell back from {failure}")
    discovered, left_out = [], []
    if discovering:
        proto, discovered, left_out = _discover(name, proto, source, adapter, sample, log)
    if decode is not None:
        candidates = cpu_session(proto).run([CANDIDATE_OUTPUTS[1]], {INPUT_NAME: sample[:1]})[0]
        proto = nms.append_nms(proto, decode, anchors=candidates.shape[1], classes=candidates.shape[2])
    attention = attention_outputs(proto, sample, declared, discovered, size)
    names = [*PREDICTION_OUTPUTS[task], *(a.name for a in attention)]

    log(f"{name}: verifying {exporter} graph with {len(attention)} attention outputs")
    check_graph(proto)
    batch_sizes = check_batch_sizes(proto, sample, names)
    images = np.concatenate(
        [
            samples.scene_images(task, PARITY_SCENES, size, resize, samples.VERIFY_SEED),
            samples.noise_images(PARITY_NOISE, size, samples.VERIFY_SEED),
        ]
    )
    # PyTorch's outputs from the model as written: equal to the graph's, they prove any rewrite exact
    expected = run_torch(adapter, images, discovered)
    if decode is not None:  # the graph's NMS against the same NMS in numpy, on PyTorch's candidates
        expected |= nms.reference(
            expected.pop(CANDIDATE_OUTPUTS[0]), expected.pop(CANDIDATE_OUTPUTS[1]), decode
        )
    fp32_parity = parity(task, expected, run_onnx(proto, images, names), size)
    fp32_parity["images"] = f"{PARITY_SCENES} generated scenes and {PARITY_NOISE} uniform-noise images"
    if not fp32_parity["passed"]:
        raise ExportError(
            f"{name}: the ONNX graph does not compute what PyTorch computes: {_parity_lines(fp32_parity)}. "
            "Often an operation that behaves differently when traced; try the other exporter with "
            "--exporter torchscript or --exporter torch.export, and keep forward() free of Python-side "
            "randomness and in-place tricks."
        )
    verification = {
        "onnx_checker": "full check and shape inference passed",
        "onnxruntime_batch_sizes": batch_sizes,
        "parity_fp32_vs_pytorch": fp32_parity,
    }
    if req.precision != "fp32":
        proto, verification[f"{req.precision}_vs_fp32"] = _reduce_precision(req, source, proto, names, resize)

    manifest = Manifest(
        name=name,
        version=version,
        task=task,
        labels=labels,
        input=InputSpec(INPUT_NAME, size[0], size[1], resize, mean, std),
        predictions=list(PREDICTION_OUTPUTS[task]),
        attention=attention,
        precision=req.precision,
        opset=req.opset,
        exporter=exporter,
        source={
            **source.description,
            "attention": req.attention,
            "exporter_failures": failures,
            "attention_left_out": left_out,
            **_explicit_attention_record(explicit),
            **({"decoding": decode.record()} if decode else {}),
        },
        versions=library_versions(),
        verification=verification,
    )
    proto.metadata_props.add(key=METADATA_KEY, value=manifest.to_json())
    proto.producer_name, proto.producer_version = "attnserve", manifest.versions["attnserve"]
    data = proto.SerializeToString()
    manifest.sha256 = hashlib.sha256(data).hexdigest()
    path = repository.write_version(req.repository, name, version, data, manifest.to_json(), req.overwrite)
    log(f"{name}: wrote {path} ({len(data) / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return path, manifest


def _check_request(req: ExportRequest) -> None:
    if bool(req.arch) == bool(req.factory):
        raise ExportError("pass exactly one of --arch NAME (our architectures) or --factory MODULE:CALLABLE.")
    if req.factory and not (req.task and req.input_size and req.name):
        raise ExportError(
            "--factory needs --task classification|detection, --input-size H W and --name NAME: a model "
            "we did not write does not say what it is or what size it takes."
        )
    if req.opset < MIN_OPSET:
        raise ExportError(
            f"--opset {req.opset} is too old: the exporters here need opset {MIN_OPSET} or later."
        )
    if req.resize and req.resize not in RESIZE_POLICIES:
        raise ExportError(f"--resize {req.resize!r} is not one of {', '.join(RESIZE_POLICIES)}.")
    if req.attention not in ATTENTION_MODES:
        raise ExportError(f"--attention {req.attention!r} is not one of {', '.join(ATTENTION_MODES)}.")
    if req.calibration_method not in quantize.CALIBRATION_METHODS:
        methods = ", ".join(quantize.CALIBRATION_METHODS)
        raise ExportError(f"--calibration-method {req.calibration_method!r} is not one of {methods}.")
    if (req.image_mean is None) != (req.image_std is None):
        raise ExportError("pass --image-mean and --image-std together (three values each, for R, G, B).")
    if req.image_std is not None and any(s <= 0 for s in req.image_std):
        raise ExportError("--image-std values must be positive.")
    if req.precision == "int8" and req.factory and not req.calibration:
        raise ExportError(
            "int8 needs --calibration DIR: a folder of a few hundred images like those the model will "
            "serve, to measure each layer's range."
        )


def _source(req: ExportRequest) -> SourceModel:
    if req.arch:
        if req.image_mean is not None:
            raise ExportError(
                f"--image-mean/--image-std do not apply to --arch {req.arch}: our models normalise their "
                "input themselves. Use them with --factory models."
            )
        source = from_arch(req.arch, req.checkpoint)
        if req.task and req.task != source.task:
            raise ExportError(
                f"--task {req.task} does not fit --arch {req.arch}, which is a {source.task} model."
            )
        if req.input_size:
            source.input_size = tuple(req.input_size)
        return source
    module = from_factory(req.factory, req.factory_kwargs, req.checkpoint)
    return SourceModel(
        module=module,
        task=req.task,
        input_size=tuple(req.input_size),
        labels=None,
        declared=getattr(module, "output_specs", None),
        in_model_normalization=None,
        description={
            "factory": req.factory,
            "factory_kwargs": req.factory_kwargs,
            **checkpoint_record(req.checkpoint),
            "weights": "checkpoint" if req.checkpoint else "as built by the factory",
        },
    )


def _normalization(req: ExportRequest, source: SourceModel) -> tuple[list[float], list[float]]:
    if source.in_model_normalization is not None:
        return source.in_model_normalization
    if req.image_mean is None:
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return list(req.image_mean), list(req.image_std)


def _declared_maps(req: ExportRequest, source: SourceModel) -> list:
    specs = [s for s in (source.declared or []) if s.kind != PREDICTION]
    if req.attention == "declared" and not specs:
        raise ExportError(
            "--attention declared: this model declares no attention outputs (no output_specs). Use "
            "--attention auto to find its gates in the graph, or none to export predictions only."
        )
    return specs if req.attention in ("auto", "declared") else []


def _discover(
    name: str,
    proto: onnx.ModelProto,
    source: SourceModel,
    adapter: ExportAdapter,
    sample: np.ndarray,
    log: Callable[[str], None],
) -> tuple[onnx.ModelProto, list, list[str]]:
    """The graph with every gate and self-attention map it holds as an output, those maps, and a line
    for each one found but left out (and why)."""
    with torch.no_grad(), GateRecorder(source.module) as recorder, ExplicitAttention(source.module):
        adapter(torch.from_numpy(sample))
    gates, skipped_gates = discover(proto, sample, recorder.records)
    attention, skipped_attention = discover_self_attention(proto, sample, recorder.records, source.input_size)
    left_out = []
    for what, lines in (("gate", skipped_gates), ("self-attention", skipped_attention)):
        for line in lines:
            log(f"{name}: {what} left out: {line}")
            left_out.append(f"{what}: {line}")
    proto = promote(proto, gates) if gates else proto
    proto = promote_self_attention(proto, attention) if attention else proto
    return proto, [*gates, *attention], left_out


def _explicit_attention_record(explicit: ExplicitAttention | None) -> dict:
    """What the manifest says of attention the export wrote out (nothing when it wrote none)."""
    if explicit is None or not explicit.sources:
        return {}
    return {
        "explicit_attention": {
            "modules": explicit.sources,
            "how": "F.scaled_dot_product_attention exported as softmax(q·kᵀ·scale + mask)·v, and "
            "nn.MultiheadAttention with its per-head weights computed, so the probabilities are graph "
            "tensors; the fp32 parity check compares the graph with the model as written",
        }
    }


def _given_labels(req: ExportRequest, source: SourceModel) -> list[str] | None:
    """The --labels file's lines, or the labels our own models carry."""
    if not req.labels:
        return source.labels
    path = Path(req.labels)
    if not path.is_file():
        raise ExportError(f"--labels {str(path)!r} does not exist; pass a text file with one label per line.")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _decoder(decode: DecodeSpec | None, source: SourceModel, labels: list[str] | None) -> HeadDecoder | None:
    """What turns the raw heads into candidates: given with --head, or declared by one of our models."""
    if decode is None:
        return None
    if source.task != DETECTION:
        raise ExportError(f"--head {decode.layout} is for detectors; this is a {source.task} model.")
    if not labels:
        raise ExportError(
            "a detection model needs --labels FILE (one class name per line, in class-id order)."
        )
    decode.check()
    return HeadDecoder(decode, len(labels), source.input_size)


def _labels(
    source: SourceModel, adapter: ExportAdapter, sample: np.ndarray, labels: list[str] | None
) -> list[str]:
    with torch.no_grad():
        outputs = adapter(torch.from_numpy(sample))  # also checks the outputs fit the task
    if source.task == CLASSIFICATION:
        classes = outputs[0].shape[1]
        labels = labels or [f"class_{i}" for i in range(classes)]
        if len(labels) != classes:
            raise ExportError(
                f"the model has {classes} classes but {len(labels)} labels were given; the labels file needs "
                "one line per class, in the order of the model's outputs."
            )
    elif not labels:
        raise ExportError(
            "a detection model needs --labels FILE (one class name per line, in class-id order)."
        )
    return labels


def attention_outputs(
    proto: onnx.ModelProto,
    sample: np.ndarray,
    declared: list[OutputSpec],
    discovered: Sequence[PromotedMap | AttentionMap],
    size: tuple[int, int],
) -> list[AttentionOutput]:
    names = [s.name for s in declared]
    shapes = {}
    if names:
        values = cpu_session(proto).run(names, {INPUT_NAME: sample[:1]})
        shapes = {n: list(v.shape) for n, v in zip(names, values, strict=True)}
    outputs = []
    for spec in declared:
        shape = shapes[spec.name]
        grid = shape[2:] if len(shape) == 4 else None
        outputs.append(
            AttentionOutput(spec.name, spec.kind, spec.source, "declared", shape, spec.stride, grid)
        )
    for m in discovered:
        grid = m.shape[2:] if m.kind != CHANNEL else None
        # an axis map's grid is 1 along the axis it pools: its stride is the other axis's
        stride = min(side / cells for side, cells in zip(size, grid, strict=True)) if grid else None
        outputs.append(AttentionOutput(m.name, m.kind, m.source, "discovered", m.shape, stride, grid))
    return outputs


def _reduce_precision(
    req: ExportRequest, source: SourceModel, proto: onnx.ModelProto, names: list[str], resize: str
) -> tuple[onnx.ModelProto, dict]:
    size, task = source.input_size, source.task
    if req.calibration:
        images = samples.folder_images(req.calibration, size, resize, req.calibration_count)
        if len(images) >= 10:  # one in five held out from calibration to measure agreement
            held_out, calibration = images[::5], np.delete(images, np.s_[::5], axis=0)
            measured_on = f"{len(held_out)} --calibration images held out from calibration"
        else:
            held_out = calibration = images
            measured_on = f"the {len(images)} --calibration images (too few to hold any out)"
    else:
        calibration = samples.scene_images(
            task, req.calibration_count, size, resize, samples.CALIBRATION_SEED
        )
        held_out = samples.scene_images(task, AGREEMENT_SCENES, size, resize, samples.AGREEMENT_SEED)
        measured_on = f"{AGREEMENT_SCENES} held-out generated scenes"
    map_names = names[len(PREDICTION_OUTPUTS[task]) :]
    reference = run_onnx(proto, held_out, names)
    if req.precision == "fp16":
        reduced = quantize.to_fp16(proto)
    else:
        predictions = list(PREDICTION_OUTPUTS[task])
        reduced = quantize.to_int8(proto, calibration, predictions, req.calibration_method, req.progress)
    check_graph(reduced)
    figures = agreement(task, reference, run_onnx(reduced, held_out, names), map_names)
    figures["measured_on"] = measured_on
    checked = {"this CPU's kernels": agreement_value(task, figures)}
    if req.precision == "int8":
        figures["calibration_images"] = len(calibration)
        figures["settings"] = quantize.INT8_SETTINGS
        figures["cpu"] = cpu.describe()
        # the graph's own arithmetic (dequantise, compute in float, quantise), which CPUs whose int8 kernels
        # accumulate exactly (VNNI, AMX, ARM dot product) compute up to rounding: this export then
        # vouches for those CPUs too, not only for the one it ran on
        exact = run_onnx(reduced, held_out, names, optimized=False)
        figures["reference_arithmetic"] = agreement(task, reference, exact, [])
        checked["the reference arithmetic"] = agreement_value(task, figures["reference_arithmetic"])
    figures["min_agreement"] = req.min_agreement
    for how, value in checked.items():
        if value < req.min_agreement:
            raise ExportError(
                f"the {req.precision} model agrees with fp32 on only {value:.1%} of {measured_on} with "
                f"{how} (at least {req.min_agreement:.0%} required). Calibrate on more, and more typical, "
                "images (--calibration DIR), export fp32, or accept less with --min-agreement."
            )
    return reduced, figures


def _parity_lines(figures: dict) -> str:
    diffs = figures["max_abs_diff"]
    parts = [f"{n} differs by up to {diffs[n]:.2e}" for n in figures["failed"] if n in diffs]
    if "detections" in figures["failed"]:
        d = figures["detections"]
        parts.append(
            f"{d['unmatched']} of {d['compared']} detections unmatched, scores differ by up to "
            f"{d['score_max_abs_diff']:.2e}, boxes by {d['box_max_abs_diff_px']:.2e} px"
        )
    return "; ".join(parts) + f" (tolerance {figures['tolerance']})"


def library_versions() -> dict:
    return {
        "attnserve": version("attnserve"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": version("onnxscript"),
    }


def demo_requests(repository: Path, **common) -> list[ExportRequest]:
    return [dataclasses.replace(ExportRequest(repository, **common), arch=n, name=n) for n in DEMO_MODELS]
