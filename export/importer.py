"""``attnserve import``: an ONNX file from any framework (TensorFlow, PaddlePaddle, MXNet, someone else's
export) into the model repository, with the attention gates discovery finds in it as named outputs.

The file is served behind the same contract as our exports. In front of its input the importer puts the
preprocessing the model expects, as graph nodes: the server's N×3×H×W RGB in [0, 1] becomes BGR if
asked, 0..255 if asked, normalised with the given mean and std, and transposed to NHWC for a
channels-last input. A fixed batch of 1 is made dynamic when the graph allows it: the input and outputs'
batch axis made symbolic, and a Reshape whose constant shape pins the batch at 1 (a traced ``view(1,
…)``, Keras' Flatten) made to copy the batch instead, kept only if every image of a batch of eight
then gets what it gets alone. Its prediction
outputs are renamed to ours (a classifier's logits or probabilities give both; a detector's boxes,
scores and classes are named with ``--detection-outputs``). A detector with raw candidate heads
(``--head candidates``: YOLOv5/YOLOv8-style packed tensors, or boxes and class scores) gets the decode
(export/candidates_graph.py) and NMS (export/nms.py) appended, as an export does.

Without PyTorch there is nothing to compare a gate with, so each map is verified by what it must be:
finite, inside its kind's range ([0, 1]: the gates are sigmoids, hard sigmoids and softmaxes) and of
its kind's shape. The predictions of the final graph must be bit-identical to the original graph's on
the same input tensors (generated scenes and noise, preprocessed by the final graph itself); with
``--head``, its detections must match, as sets, the exporter's PyTorch decoder and numpy NMS run on the
original graph's raw outputs.
"""

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from attnserve.export import nms, repository, samples
from attnserve.export.adapter import INPUT_NAME
from attnserve.export.candidates_graph import append_candidates
from attnserve.export.decode import DecodeSpec, HeadDecoder
from attnserve.export.discovery import cpu_session, discover, promote
from attnserve.export.errors import ExportError
from attnserve.export.exporters import first_line
from attnserve.export.graph import GraphWriter, constant_values
from attnserve.export.pipeline import attention_outputs, library_versions
from attnserve.export.verify import check_batch_sizes, check_graph, parity, run_onnx
from attnserve.imaging import LETTERBOX, RESIZE
from attnserve.manifest import (
    CLASSIFICATION,
    DETECTION,
    METADATA_KEY,
    PREDICTION_OUTPUTS,
    InputSpec,
    Manifest,
)

LAYOUTS = ("auto", "nchw", "nhwc")
VALUE_RANGES = ("unit", "bytes")  # what the original graph takes: [0, 1] or 0..255
CHANNEL_ORDERS = ("rgb", "bgr")
SCORE_KINDS = ("logits", "probabilities")
PREPROCESSED = "attnserve/preprocessed"  # the original input tensor, computed by the importer's nodes
PROBABILITY_FLOOR = 1e-30  # logits of a probabilities-only classifier: log(max(p, floor))
VERIFY_IMAGES = 16
IMPORTER_HINT = (
    "The file itself passed; this is a bug in the importer for it: please report it with the file."
)
# names the served graph gives its own tensors; a tensor of the file's with one of them is renamed
RESERVED = {INPUT_NAME, *(n for names in PREDICTION_OUTPUTS.values() for n in names)}


@dataclass
class ImportRequest:
    onnx: Path
    repository: Path
    name: str
    task: str
    labels: Path | None = None
    version: int | None = None
    input_size: tuple[int, int] | None = None  # when the graph leaves H and W open
    layout: str = "auto"
    value_range: str = "unit"
    channels: str = "rgb"
    image_mean: list[float] | None = None  # in the original input's units (0..255 with value_range bytes)
    image_std: list[float] | None = None
    scores: str = "logits"  # a classifier's output: logits or probabilities
    attention: str = "auto"  # "auto": the gates discovery finds; "none": predictions only
    output: str | None = None  # a classifier's output name, when the graph has several
    detection_outputs: tuple[str, str, str] | None = None  # a detector's boxes, scores, classes
    decode: DecodeSpec | None = None  # a detector's raw candidate heads: decode and NMS appended
    head_outputs: tuple[str, ...] | None = None  # with decode: the packed head, or boxes scores [objectness]
    resize: str | None = None
    overwrite: bool = False


def import_model(req: ImportRequest, log: Callable[[str], None] = print) -> tuple[Path, Manifest]:
    started = time.perf_counter()
    if (req.image_mean is None) != (req.image_std is None) or (req.image_std and min(req.image_std) <= 0):
        raise ExportError("pass --image-mean and --image-std together (three values each), std positive.")
    data = _read(req.onnx)
    original = _without_reserved_names(onnx.load_from_string(data))
    labels = _read_labels(req)
    version = req.version or repository.next_version(req.repository, req.name)
    repository.check_free(req.repository, req.name, version, req.overwrite)
    graph_input = _the_input(original)
    layout, size = _layout_and_size(req, graph_input)
    log(f"{req.name}: importing {req.onnx} ({req.task}, {size[0]}×{size[1]}, {layout.upper()} input)")
    proto = _with_dynamic_batch(original)
    proto = _with_preprocessing(proto, graph_input.name, layout, size, req)
    resize = req.resize or (LETTERBOX if req.task == DETECTION else RESIZE)
    sample = samples.scene_images(req.task, 2, size, resize, samples.VERIFY_SEED)
    proto = _with_unpinned_reshapes(proto, sample, log=lambda line: log(f"{req.name}: {line}"))
    if req.decode is not None:
        proto = _with_decoded_heads(proto, req, len(labels), sample)
    else:
        proto = _with_prediction_outputs(proto, req, len(labels))
    check_graph(proto, IMPORTER_HINT)

    try:
        check_batch_sizes(proto, sample, list(PREDICTION_OUTPUTS[req.task]))
    except ExportError:
        raise
    except Exception as exc:  # ONNX Runtime refusing the batch: a size fixed inside the graph
        raise ExportError(
            f"the graph runs at batch size 1 only ({first_line(exc, 200)}): a shape inside it fixes the "
            "batch. Re-export it from its framework with a dynamic batch axis; the server batches requests."
        ) from None
    maps, skipped = discover(proto, sample, records=None) if req.attention == "auto" else ([], [])
    for line in skipped:
        log(f"{req.name}: gate left out: {line}")
    proto = promote(proto, maps) if maps else proto
    names = [*PREDICTION_OUTPUTS[req.task], *(m.name for m in maps)]
    check_graph(proto, IMPORTER_HINT)
    batch_sizes = check_batch_sizes(proto, sample, names)
    images = np.concatenate(
        [
            samples.scene_images(req.task, VERIFY_IMAGES, size, resize, samples.VERIFY_SEED),
            samples.noise_images(VERIFY_IMAGES // 2, size, samples.VERIFY_SEED),
        ]
    )
    verification = {
        "onnx_checker": "full check and shape inference passed",
        "onnxruntime_batch_sizes": batch_sizes,
        "predictions_vs_original": _same_predictions(
            original, proto, graph_input.name, images, req, len(labels), size
        ),
        "maps": _map_ranges(proto, maps, images),
    }
    manifest = Manifest(
        name=req.name,
        version=version,
        task=req.task,
        labels=labels,
        input=InputSpec(INPUT_NAME, size[0], size[1], resize, *_normalisation(req)),
        predictions=list(PREDICTION_OUTPUTS[req.task]),
        attention=attention_outputs(proto, sample, [], maps, size),
        precision="fp32",
        opset=_opset(proto),
        exporter="imported",
        source={
            "origin": "imported",
            "onnx": str(req.onnx),
            "onnx_sha256": hashlib.sha256(data).hexdigest(),
            "producer": f"{original.producer_name} {original.producer_version}".strip(),
            "preprocessing": {
                "layout": layout,
                "value_range": req.value_range,
                "channels": req.channels,
                "mean": req.image_mean,
                "std": req.image_std,
            },
            "scores": req.scores if req.task == CLASSIFICATION else None,
            **(
                {"decoding": req.decode.record(), "head_outputs": list(req.head_outputs or [])}
                if req.decode
                else {}
            ),
            "attention_left_out": [f"gate: {line}" for line in skipped],
        },
        versions=library_versions(),
        verification=verification,
    )
    proto.metadata_props.add(key=METADATA_KEY, value=manifest.to_json())
    out = proto.SerializeToString()
    manifest.sha256 = hashlib.sha256(out).hexdigest()
    path = repository.write_version(req.repository, req.name, version, out, manifest.to_json(), req.overwrite)
    log(f"{req.name}: wrote {path} ({len(out) / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return path, manifest


def _normalisation(req: ImportRequest) -> tuple[list[float], list[float]]:
    """The preprocessing as the manifest states every model's: (x - mean) / std of the [0, 1] RGB input."""
    scale = 255.0 if req.value_range == "bytes" else 1.0
    mean = np.array(req.image_mean if req.image_mean is not None else [0.0] * 3) / scale
    std = np.array(req.image_std if req.image_std is not None else [1.0] * 3) / scale
    if req.channels == "bgr":  # given in the file's channel order
        mean, std = mean[::-1], std[::-1]
    return mean.tolist(), std.tolist()


def _read(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{str(path)!r} does not exist; pass the path of an .onnx file.")
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:
        raise ExportError(
            f"{str(path)!r} is not an ONNX model ({type(exc).__name__}: {str(exc)[:200]})."
        ) from None
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(
            f"{str(path)!r} fails onnx.checker's full check: {str(exc).splitlines()[0][:300]}"
        ) from None
    return data


def _read_labels(req: ImportRequest) -> list[str]:
    if req.labels is None or not Path(req.labels).is_file():
        raise ExportError("--labels FILE is required: one class name per line, in the model's output order.")
    labels = [line.strip() for line in Path(req.labels).read_text().splitlines() if line.strip()]
    if not labels:
        raise ExportError(f"--labels {str(req.labels)!r} holds no labels.")
    return labels


def _the_input(proto: onnx.ModelProto) -> onnx.ValueInfoProto:
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(
            f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an image model takes "
            "one image tensor."
        )
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT or len(tensor.shape.dim) != 4:
        dims = [d.dim_value or d.dim_param or "?" for d in tensor.shape.dim]
        dtype = TensorProto.DataType.Name(tensor.elem_type).lower()
        raise ExportError(
            f"input {inputs[0].name!r} is {dtype} of shape {dims}; an image model's input is a 4-d float32 "
            "tensor (N×3×H×W or N×H×W×3)."
        )
    return inputs[0]


def _layout_and_size(req: ImportRequest, graph_input: onnx.ValueInfoProto) -> tuple[str, tuple[int, int]]:
    dims = [d.dim_value or None for d in graph_input.type.tensor_type.shape.dim]
    layout = req.layout
    if layout == "auto":
        if dims[1] == 3 and dims[3] != 3:
            layout = "nchw"
        elif dims[3] == 3 and dims[1] != 3:
            layout = "nhwc"
        else:
            raise ExportError(
                f"input {graph_input.name!r} of shape {dims} could be channels-first or channels-last; "
                "pass --layout nchw or --layout nhwc."
            )
    channels, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    if channels not in (3, None):
        raise ExportError(
            f"input {graph_input.name!r} has {channels} channels in {layout.upper()}; images have 3."
        )
    if req.input_size:
        if (h and h != req.input_size[0]) or (w and w != req.input_size[1]):
            raise ExportError(
                f"--input-size {req.input_size[0]} {req.input_size[1]} differs from the graph's {h}×{w}."
            )
        return layout, tuple(req.input_size)
    if not (h and w):
        raise ExportError(
            f"input {graph_input.name!r} leaves its height or width open; pass --input-size H W."
        )
    return layout, (h, w)


def _without_reserved_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The file's tensors called like ours (``logits``, ``images``, …) renamed ``NAME.original``."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    for node in graph.node:
        node.input[:] = [file_tensor(i) for i in node.input]
        node.output[:] = [file_tensor(o) for o in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = file_tensor(value.name)
    return out


def file_tensor(name: str) -> str:
    """What a tensor of the file is called in the served graph."""
    return f"{name}.original" if name in RESERVED or name.startswith("attnserve/") else name


def _with_dynamic_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The batch axis of the input and outputs made symbolic; intermediate shapes the file recorded are
    dropped (they may pin the batch) and shape inference re-derives them."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for value in [*out.graph.input, *out.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del out.graph.value_info[:]
    return out


def _with_unpinned_reshapes(
    proto: onnx.ModelProto, sample: np.ndarray, log: Callable[[str], None]
) -> onnx.ModelProto:
    """Reshapes to a constant shape [1, …] of a computed tensor rewritten to [0, …] (0: copy the input's
    dimension, so the batch), if the graph then runs per image at batch 8; else ``proto`` unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    constants = constant_values(graph)
    g = GraphWriter(graph, "attnserve/unpinned")
    rewritten = 0
    for node in graph.node:
        shape = constants.get(node.input[1]) if node.op_type == "Reshape" else None
        allow_zero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if shape is None or shape.ndim != 1 or len(shape) < 2 or shape[0] != 1 or allow_zero:
            continue
        if node.input[0] in constants:
            continue
        node.input[1] = g.constant(np.concatenate([[0], shape[1:]]).astype(np.int64))
        rewritten += 1
    if not rewritten:
        return proto
    outputs = [o.name for o in graph.output]
    batch = np.resize(sample, (8, *sample.shape[1:]))
    try:
        session = cpu_session(out)
        together = session.run(outputs, {INPUT_NAME: batch})
        alone = [session.run(outputs, {INPUT_NAME: batch[i : i + 1]}) for i in range(len(batch))]
    except Exception:  # ONNX Runtime refusing the batch: something else fixes it too
        return proto
    for k, value in enumerate(together):
        each = np.concatenate([a[k] for a in alone])
        if value.shape != each.shape or not np.allclose(value, each, rtol=1e-4, atol=1e-5):
            return proto
    log(f"{rewritten} Reshape(s) that pinned the batch at 1 now copy it")
    return out


def _with_preprocessing(
    proto: onnx.ModelProto, original_input: str, layout: str, size: tuple[int, int], req: ImportRequest
) -> onnx.ModelProto:
    """``images`` (N×3×H×W RGB in [0, 1]) → what the original input expects, as nodes in front of it."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    g = GraphWriter(graph, "attnserve/preprocess")
    x = INPUT_NAME
    if req.channels == "bgr":
        x = g.add("Gather", [x, g.ints(2, 1, 0)], "attnserve/preprocess/bgr", axis=1)
    if req.value_range == "bytes":
        x = g.add("Mul", [x, g.constant(np.array(255.0, np.float32))], "attnserve/preprocess/bytes")
    if req.image_mean is not None:
        mean = g.constant(np.array(req.image_mean, np.float32).reshape(1, 3, 1, 1))
        std = g.constant(np.array(req.image_std, np.float32).reshape(1, 3, 1, 1))
        x = g.add(
            "Div",
            [g.add("Sub", [x, mean], "attnserve/preprocess/centred"), std],
            "attnserve/preprocess/normalised",
        )
    if layout == "nhwc":
        x = g.add("Transpose", [x], "attnserve/preprocess/nhwc", perm=[0, 2, 3, 1])
    g.add("Identity", [x], PREPROCESSED)
    for node in graph.node:
        node.input[:] = [PREPROCESSED if i == original_input else i for i in node.input]
    kept = [i for i in graph.input if i.name != original_input]
    del graph.input[:]
    graph.input.extend(
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, *size]), *kept]
    )
    # the preprocessing nodes read the new input, so they go first
    preprocess = [n for n in graph.node if any(o.startswith("attnserve/preprocess") for o in n.output)]
    rest = [n for n in graph.node if n not in preprocess]
    del graph.node[:]
    graph.node.extend([*preprocess, *rest])
    return out


def _with_prediction_outputs(proto: onnx.ModelProto, req: ImportRequest, classes: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    g = GraphWriter(graph, "attnserve/outputs")
    outputs = {o.name: o for o in graph.output}
    if req.task == CLASSIFICATION:
        name = file_tensor(req.output) if req.output else _only_output(outputs)
        if name not in outputs:
            raise ExportError(f"--output {name!r} is not one of the graph's outputs: {', '.join(outputs)}.")
        if req.scores == "logits":
            g.add("Identity", [name], "logits")
            g.add("Softmax", ["logits"], "probabilities", axis=1)
        else:
            g.add("Identity", [name], "probabilities")
            floor = g.constant(np.array(PROBABILITY_FLOOR, np.float32))
            g.add("Log", [g.add("Max", [name, floor], "attnserve/outputs/floored")], "logits")
        finals = [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
        ]
    else:
        if req.detection_outputs is None:
            raise ExportError(
                "a detector needs --detection-outputs BOXES SCORES CLASSES: the names of its outputs boxes "
                "N×K×4 (x1, y1, x2, y2 in input pixels), scores N×K and classes N×K; it has "
                f"{', '.join(outputs)}."
            )
        named = [file_tensor(n) for n in req.detection_outputs]
        missing = [given for given, n in zip(req.detection_outputs, named, strict=True) if n not in outputs]
        if missing:
            raise ExportError(
                f"--detection-outputs: {', '.join(missing)} not among the outputs {', '.join(outputs)}."
            )
        boxes, scores, classes_out = named
        g.add("Identity", [boxes], "boxes")
        g.add("Identity", [scores], "scores")
        g.add("Cast", [classes_out], "classes", to=TensorProto.INT64)
        finals = [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", None, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info("classes", TensorProto.INT64, ["batch", None]),
        ]
    del graph.output[:]
    graph.output.extend(finals)
    return out


def _with_decoded_heads(
    proto: onnx.ModelProto, req: ImportRequest, classes: int, sample: np.ndarray
) -> onnx.ModelProto:
    """The raw candidate heads decoded and suppressed in the graph, into boxes, scores and classes."""
    if req.task != DETECTION:
        raise ExportError(f"--head describes a detector's raw heads; this import is --task {req.task}.")
    if req.detection_outputs is not None:
        raise ExportError("pass --head for raw heads or --detection-outputs for decoded ones, not both.")
    req.decode.check()
    heads = _head_outputs(proto, req)
    shapes = [v.shape for v in cpu_session(proto).run(heads, {INPUT_NAME: sample})]
    proto, anchors = append_candidates(proto, req.decode, heads, shapes, classes)
    return nms.append_nms(proto, req.decode, anchors=anchors, classes=classes)


def _head_outputs(proto: onnx.ModelProto, req: ImportRequest) -> list[str]:
    outputs = [o.name for o in proto.graph.output]
    if req.head_outputs is None:
        if not 1 <= len(outputs) <= 3:
            raise ExportError(
                f"the graph has {len(outputs)} outputs ({', '.join(outputs)}); name the raw heads with "
                "--head-outputs PACKED or --head-outputs BOXES SCORES [OBJECTNESS]."
            )
        return outputs
    named = [file_tensor(n) for n in req.head_outputs]
    missing = [given for given, n in zip(req.head_outputs, named, strict=True) if n not in outputs]
    if missing or not 1 <= len(named) <= 3:
        raise ExportError(
            f"--head-outputs takes one packed head or boxes, scores and an optional objectness among the "
            f"outputs {', '.join(outputs)}; {', '.join(missing) or len(named)} given."
        )
    return named


def _only_output(outputs: dict) -> str:
    if len(outputs) != 1:
        raise ExportError(
            f"the graph has {len(outputs)} outputs ({', '.join(outputs)}); name the class scores with "
            "--output NAME."
        )
    return next(iter(outputs))


def _same_predictions(
    original: onnx.ModelProto,
    final: onnx.ModelProto,
    original_input: str,
    images: np.ndarray,
    req: ImportRequest,
    classes: int,
    size: tuple[int, int],
) -> dict:
    """The final graph's predictions against the original graph's, fed the tensor the final graph's own
    preprocessing computed: they must be the same bits. One image at a time on both sides: the original
    may take batch 1 only, and kernels may sum in another order at another batch size."""
    probe = onnx.ModelProto()
    probe.CopyFrom(final)
    probe.graph.output.append(helper.make_tensor_value_info(PREPROCESSED, TensorProto.FLOAT, None))
    names = [*PREDICTION_OUTPUTS[req.task], PREPROCESSED]
    ours_session, theirs_session = cpu_session(probe), cpu_session(original)
    wanted = [o.name for o in original.graph.output]
    ours, theirs = {n: [] for n in names}, {n: [] for n in wanted}
    for i in range(len(images)):
        for n, v in zip(names, ours_session.run(names, {INPUT_NAME: images[i : i + 1]}), strict=True):
            ours[n].append(v)
        given = {original_input: ours[PREPROCESSED][-1]}
        for n, v in zip(wanted, theirs_session.run(wanted, given), strict=True):
            theirs[n].append(v)
    ours = {n: np.concatenate(v) for n, v in ours.items()}
    theirs = {n: np.concatenate(v) for n, v in theirs.items()}
    if req.decode is not None:
        return _same_detections(original, ours, theirs, req, classes, size)
    if req.task == CLASSIFICATION:
        source = file_tensor(req.output) if req.output else wanted[0]
        pairs = {"logits" if req.scores == "logits" else "probabilities": theirs[source]}
    else:
        named = (theirs[file_tensor(n)] for n in req.detection_outputs)
        pairs = dict(zip(("boxes", "scores", "classes"), named, strict=True))
    different = [n for n, v in pairs.items() if not np.array_equal(ours[n].astype(v.dtype), v)]
    if different:
        raise ExportError(
            f"after import the graph's {', '.join(different)} differ from the original's on the same input; "
            "this is a bug in the importer for this graph: please report it with the file."
        )
    return {
        "bit_identical": list(pairs),
        "images": f"{VERIFY_IMAGES} generated scenes and {VERIFY_IMAGES // 2} noise images",
    }


def _same_detections(
    original: onnx.ModelProto,
    ours: dict,
    theirs: dict,
    req: ImportRequest,
    classes: int,
    size: tuple[int, int],
) -> dict:
    """The graph's detections against the exporter's PyTorch decoder and numpy NMS (export/decode.py,
    export/nms.py) run on the original graph's raw heads: matched as sets, as an export's parity."""
    heads = [torch.from_numpy(theirs[n]) for n in _head_outputs(original, req)]
    with torch.no_grad():
        boxes, scores = HeadDecoder(req.decode, classes, size)(heads[0] if len(heads) == 1 else tuple(heads))
    expected = nms.reference(boxes.numpy(), scores.numpy(), req.decode)
    figures = parity(DETECTION, expected, ours, size)
    if not figures["passed"]:
        raise ExportError(
            f"the graph's decode and NMS do not match the reference decoder on the original's heads "
            f"({figures['detections']}); check --head, --box-format and --score-activation against the "
            "model's outputs."
        )
    return {
        "detections_vs_reference": figures,
        "images": f"{VERIFY_IMAGES} generated scenes and {VERIFY_IMAGES // 2} noise images",
    }


def _map_ranges(proto: onnx.ModelProto, maps: list, images: np.ndarray) -> dict:
    if not maps:
        return {}
    values = run_onnx(proto, images, [m.name for m in maps])
    figures = {}
    for m in maps:  # discovery checked the range on two images; here on every verification image
        v = values[m.name]
        if not (np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1 and list(v.shape[1:]) == m.shape[1:]):
            raise ExportError(
                f"map {m.name} ({m.kind}) has values in [{v.min():.3g}, {v.max():.3g}] and shape "
                f"{list(v.shape[1:])} on the verification images, where a gate is finite, in [0, 1] and "
                f"{m.shape[1:]}; pass --attention none to import the model without maps."
            )
        figures[m.name] = {"min": float(v.min()), "max": float(v.max()), "shape": m.shape}
    return figures


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
