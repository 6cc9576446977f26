"""Non-maximum suppression appended to an exported graph, so a raw-head detector serves final detections.

The graph's candidate outputs (export/decode.py: boxes N×A×4 in input pixels, scores N×A×K) go through
ONNX ``NonMaxSuppression`` — per class, or across classes with each box's best class — and the kept
candidates are ranked into the same fixed-size outputs every detector here has: ``boxes`` N×D×4,
``scores`` N×D (0 past the last kept detection), ``classes`` N×D, D = ``max_detections``. In ops:
the kept scores are scattered into a zero N×C×A tensor, ``TopK`` over it picks the best D, and their
class and anchor indices gather the boxes.

``reference`` does the same in numpy as ONNX Runtime does it (greedy by score, ties to the lower index,
a box suppressed when its IoU with a kept one exceeds the threshold, degenerate boxes never
suppressing), for the export's parity check.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from attnserve.export.adapter import CANDIDATE_OUTPUTS
from attnserve.export.decode import DecodeSpec
from attnserve.export.graph import GraphWriter
from attnserve.manifest import DETECTION, PREDICTION_OUTPUTS

CANDIDATE_BOXES, CANDIDATE_SCORES = CANDIDATE_OUTPUTS


def append_nms(proto: onnx.ModelProto, spec: DecodeSpec, anchors: int, classes: int) -> onnx.ModelProto:
    """A copy of ``proto`` whose candidate outputs (``anchors`` candidates of ``classes`` scores per
    image) are replaced by final boxes, scores and classes."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = GraphWriter(out.graph, "attnserve/nms")
    base = "attnserve/nms"
    if spec.nms == "agnostic":
        best = g.add("ReduceMax", [CANDIDATE_SCORES, g.ints(2)], base + "/best", keepdims=1)  # N×A×1
        best_class = g.add("ArgMax", [CANDIDATE_SCORES], base + "/best_class", axis=2, keepdims=0)
        ranked = g.add("Transpose", [best], base + "/ranked", perm=[0, 2, 1])  # N×1×A
        planes = 1
    else:
        ranked = g.add("Transpose", [CANDIDATE_SCORES], base + "/ranked", perm=[0, 2, 1])  # N×K×A
        planes = classes
    per_class = min(spec.max_detections, anchors)
    selected = g.add(
        "NonMaxSuppression",
        [
            CANDIDATE_BOXES,  # x1 y1 x2 y2: IoU is the same as for the y1 x1 y2 x2 the op names
            ranked,
            g.ints(per_class),
            g.constant(np.array([spec.iou_threshold], np.float32)),
            g.constant(np.array([spec.score_threshold], np.float32)),
        ],
        base + "/selected",
        center_point_box=0,
    )  # M×3: (image, class plane, anchor)
    picked = g.add("GatherND", [ranked, selected], base + "/picked")
    zeros = g.add(
        "ConstantOfShape",
        [g.add("Shape", [ranked], base + "/shape")],
        base + "/zeros",
        value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
    )
    kept = g.add("ScatterND", [zeros, selected, picked], base + "/kept")
    flat = g.add("Flatten", [kept], base + "/flat", axis=1)  # N×(planes·A), plane-major
    top = min(spec.max_detections, planes * anchors)
    scores, index = g.add("TopK", [flat, g.ints(top)], ["scores", base + "/index"], axis=1, sorted=1)
    anchor = g.add("Mod", [index, g.ints(anchors)], base + "/anchor")
    if spec.nms == "agnostic":
        g.add("GatherElements", [best_class, anchor], "classes", axis=1)
    else:
        g.add("Div", [index, g.ints(anchors)], "classes")
    corners = g.add(
        "Expand",
        [g.add("Unsqueeze", [anchor, g.ints(2)], base + "/anchor4"), g.ints(1, 1, 4)],
        base + "/corners",
    )
    g.add("GatherElements", [CANDIDATE_BOXES, corners], "boxes", axis=1)

    batch = out.graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    others = [o for o in out.graph.output if o.name not in CANDIDATE_OUTPUTS]
    del out.graph.output[:]
    finals = {
        "boxes": helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, top, 4]),
        "scores": helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, top]),
        "classes": helper.make_tensor_value_info("classes", TensorProto.INT64, [batch, top]),
    }
    out.graph.output.extend([finals[name] for name in PREDICTION_OUTPUTS[DETECTION]] + others)
    return out


def reference(boxes: np.ndarray, scores: np.ndarray, spec: DecodeSpec) -> dict[str, np.ndarray]:
    """What ``append_nms`` computes, in numpy: boxes N×A×4, scores N×A×K → the final outputs."""
    n, anchors, classes = scores.shape
    if spec.nms == "agnostic":
        ranked, best_class = scores.max(axis=2, keepdims=True).transpose(0, 2, 1), scores.argmax(axis=2)
    else:
        ranked = scores.transpose(0, 2, 1)
    planes = ranked.shape[1]
    top = min(spec.max_detections, planes * anchors)
    out_boxes = np.zeros((n, top, 4), np.float32)
    out_scores = np.zeros((n, top), np.float32)
    out_classes = np.zeros((n, top), np.int64)
    for i in range(n):
        kept = np.zeros((planes, anchors), np.float32)
        for plane in range(planes):
            for a in _greedy(boxes[i], ranked[i, plane], spec, min(spec.max_detections, anchors)):
                kept[plane, a] = ranked[i, plane, a]
        flat = kept.ravel()
        order = np.argsort(-flat, kind="stable")[:top]
        anchor = order % anchors
        out_scores[i] = flat[order]
        out_boxes[i] = boxes[i][anchor]
        out_classes[i] = best_class[i][anchor] if spec.nms == "agnostic" else order // anchors
    return {"boxes": out_boxes, "scores": out_scores, "classes": out_classes}


def _greedy(boxes: np.ndarray, scores: np.ndarray, spec: DecodeSpec, limit: int) -> list[int]:
    candidates = np.flatnonzero(scores > spec.score_threshold)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]  # ties: the lower index first
    kept: list[int] = []
    for a in order:
        if len(kept) == limit:
            break
        if all(_iou(boxes[a], boxes[k]) <= spec.iou_threshold for k in kept):
            kept.append(int(a))
    return kept


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ax1, ax2, ay1, ay2 = min(a[0], a[2]), max(a[0], a[2]), min(a[1], a[3]), max(a[1], a[3])
    bx1, bx2, by1, by2 = min(b[0], b[2]), max(b[0], b[2]), min(b[1], b[3]), max(b[1], b[3])
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    area_a, area_b = (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)
    if inter <= 0 or area_a <= 0 or area_b <= 0:
        return 0.0
    return float(inter / (area_a + area_b - inter))
