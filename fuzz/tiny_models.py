"""A model repository of tiny ONNX models, written with onnx.helper in well under a second (no torch,
no export), so a harness can run the real data plane (registry, batcher, ONNX Runtime, postprocess,
map encoding) on every input at thousands of inputs per second.

They have the demo models' kinds of outputs and manifests: a classifier (two versions: ``resize`` at
16×16, ``center_crop`` at 16×24) with every kind of attention map, and a detector (``letterbox``) with
more boxes than labels, as real detectors have; a channel map has more channels than the classifier
has labels, as real ones do.
"""

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from attnserve.imaging import CENTER_CROP, LETTERBOX, RESIZE
from attnserve.manifest import (
    CLASSIFICATION,
    DETECTION,
    MANIFEST_FILE,
    MODEL_FILE,
    PREDICTION_OUTPUTS,
    AttentionOutput,
    InputSpec,
    Manifest,
)
from attnserve.maps import (
    AXIS_H,
    AXIS_W,
    CAM,
    CHANNEL,
    FULL,
    ROLLOUT,
    SELF_ATTENTION,
    SELF_ATTENTION_HEADS,
    SPATIAL,
)

OPSET = 17
INPUT = "images"
CLASSIFIER, DETECTOR = "tiny_classifier", "tiny_detector"
CLASSIFIER_LABELS = ["circle", "square", "triangle", "star", "cross"]
DETECTOR_LABELS = ["circle", "square", "triangle"]
FEATURES = 8  # channels: more than the classifier's labels
BOXES = 8  # detections per image: more than the detector's labels
POOL = 4  # input pixels per map cell


def write_repository(repository: Path) -> Path:
    """The tiny models' repository: tiny_classifier/{1,2}, tiny_detector/1."""
    _write(repository, *_classifier(1, 16, 16, RESIZE))
    _write(repository, *_classifier(2, 16, 24, CENTER_CROP))
    _write(repository, *_detector(1, 16, 16, LETTERBOX))
    return repository


def _weights(name: str, *shape: int, seed: int) -> onnx.TensorProto:
    values = np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _const(name: str, values: list[int], dtype: type = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    outputs: dict[str, list],
    height: int,
    width: int,
    name: str,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, height, width])],
        [
            helper.make_tensor_value_info(n, TensorProto.INT64 if n == "classes" else TensorProto.FLOAT, s)
            for n, s in outputs.items()
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _manifest(
    name: str,
    version: int,
    task: str,
    labels: list[str],
    height: int,
    width: int,
    resize: str,
    attention: list[AttentionOutput],
) -> Manifest:
    return Manifest(
        name=name,
        version=version,
        task=task,
        labels=labels,
        input=InputSpec(INPUT, height, width, resize, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),
        predictions=list(PREDICTION_OUTPUTS[task]),
        attention=attention,
        precision="fp32",
        opset=OPSET,
        exporter="fuzz/tiny_models.py",
        source={"factory": "fuzz.tiny_models"},
        versions={},
        verification={},
    )


def _grid_map(name: str, kind: str, planes: int, gh: int, gw: int) -> AttentionOutput:
    return AttentionOutput(name, kind, f"tiny.{name}", "declared", [1, planes, gh, gw], POOL, [gh, gw])


def _classifier(version: int, height: int, width: int, resize: str) -> tuple[onnx.ModelProto, Manifest]:
    gh, gw, classes = height // POOL, width // POOL, len(CLASSIFIER_LABELS)
    n = helper.make_node
    nodes = [
        n("AveragePool", [INPUT], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        n("Conv", ["pooled", "conv_w", "conv_b"], ["conv"]),
        n("Relu", ["conv"], ["features"]),
        n("GlobalAveragePool", ["features"], ["gap"]),
        n("Flatten", ["gap"], ["flat"]),
        n("Gemm", ["flat", "fc_w"], ["logits"]),
        n("Softmax", ["logits"], ["probabilities"], axis=1),
        n("Sigmoid", ["flat"], ["se_gate"]),
        n("ReduceMean", ["features"], ["channel_mean"], axes=[1], keepdims=1),
        n("Sigmoid", ["channel_mean"], ["spatial_gate"]),
        n("Conv", ["features", "cam_w"], ["cam"]),
        n("Sigmoid", ["features"], ["full_gate"]),
        n("ReduceMean", ["full_gate"], ["coord_h"], axes=[3], keepdims=1),
        n("ReduceMean", ["full_gate"], ["coord_w"], axes=[2], keepdims=1),
        n("Slice", ["full_gate", "heads_start", "heads_end", "heads_axis"], ["block0_heads"]),
        n("ReduceMean", ["block0_heads"], ["block0_attention"], axes=[1], keepdims=1),
        n("Mul", ["block0_attention", "spatial_gate"], ["rollout"]),
    ]
    fc = np.random.default_rng(3).normal(0, 1, (FEATURES, classes)).astype(np.float32)
    inits = [
        _weights("conv_w", FEATURES, 3, 1, 1, seed=1),
        _weights("conv_b", FEATURES, seed=2),
        numpy_helper.from_array(fc, "fc_w"),
        numpy_helper.from_array(fc.T.reshape(classes, FEATURES, 1, 1).copy(), "cam_w"),
        _const("heads_start", [0]),
        _const("heads_end", [2]),
        _const("heads_axis", [1]),
    ]
    attention = [
        AttentionOutput("se_gate", CHANNEL, "tiny.se", "declared", [1, FEATURES]),
        _grid_map("spatial_gate", SPATIAL, 1, gh, gw),
        _grid_map("cam", CAM, classes, gh, gw),
        _grid_map("full_gate", FULL, FEATURES, gh, gw),
        AttentionOutput("coord_h", AXIS_H, "tiny.coord", "declared", [1, FEATURES, gh, 1], POOL, [gh, 1]),
        AttentionOutput("coord_w", AXIS_W, "tiny.coord", "declared", [1, FEATURES, 1, gw], POOL, [1, gw]),
        _grid_map("block0_heads", SELF_ATTENTION_HEADS, 2, gh, gw),
        _grid_map("block0_attention", SELF_ATTENTION, 1, gh, gw),
        _grid_map("rollout", ROLLOUT, 1, gh, gw),
    ]
    outputs = {"logits": ["N", classes], "probabilities": ["N", classes]}
    outputs.update({a.name: ["N", *a.shape[1:]] for a in attention})
    model = _model(nodes, inits, outputs, height, width, CLASSIFIER)
    manifest = _manifest(
        CLASSIFIER, version, CLASSIFICATION, CLASSIFIER_LABELS, height, width, resize, attention
    )
    return model, manifest


def _detector(version: int, height: int, width: int, resize: str) -> tuple[onnx.ModelProto, Manifest]:
    gh, gw, classes = height // POOL, width // POOL, len(DETECTOR_LABELS)
    cells = 3 * gh * gw
    n = helper.make_node
    nodes = [
        n("AveragePool", [INPUT], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        n("Flatten", ["pooled"], ["flat"]),
        n("Gemm", ["flat", "box_w"], ["box_logits"]),
        n("Reshape", ["box_logits", "box_shape"], ["box_units"]),
        n("Sigmoid", ["box_units"], ["box_fraction"]),
        n("Mul", ["box_fraction", "box_scale"], ["boxes"]),
        n("Gemm", ["flat", "score_w"], ["score_logits"]),
        n("Sigmoid", ["score_logits"], ["scores"]),
        n("Gemm", ["flat", "class_w"], ["class_logits"]),
        n("Reshape", ["class_logits", "class_shape"], ["class_scores"]),
        n("ArgMax", ["class_scores"], ["classes"], axis=2, keepdims=0),
        n("ReduceMean", ["pooled"], ["pooled_mean"], axes=[1], keepdims=1),
        n("Sigmoid", ["pooled_mean"], ["level0_spatial"]),
    ]
    inits = [
        _weights("box_w", cells, BOXES * 4, seed=4),
        _const("box_shape", [-1, BOXES, 4]),
        numpy_helper.from_array(np.array([width, height, width, height], np.float32), "box_scale"),
        _weights("score_w", cells, BOXES, seed=5),
        _weights("class_w", cells, BOXES * classes, seed=6),
        _const("class_shape", [-1, BOXES, classes]),
    ]
    attention = [_grid_map("level0_spatial", SPATIAL, 1, gh, gw)]
    outputs = {
        "boxes": ["N", BOXES, 4],
        "scores": ["N", BOXES],
        "classes": ["N", BOXES],
        "level0_spatial": ["N", 1, gh, gw],
    }
    model = _model(nodes, inits, outputs, height, width, DETECTOR)
    manifest = _manifest(DETECTOR, version, DETECTION, DETECTOR_LABELS, height, width, resize, attention)
    return model, manifest


def _write(repository: Path, model: onnx.ModelProto, manifest: Manifest) -> None:
    folder = Path(repository) / manifest.name / str(manifest.version)
    folder.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (folder / MODEL_FILE).write_bytes(data)
    manifest.sha256 = hashlib.sha256(data).hexdigest()
    (folder / MANIFEST_FILE).write_text(manifest.to_json())
