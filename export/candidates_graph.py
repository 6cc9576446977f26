"""A graph's raw candidate outputs → the candidate boxes and scores that export/nms.py suppresses, as ONNX
nodes: for an imported ONNX detector, which has no PyTorch behind it to carry export/decode.py's decoder.

The layouts are ``--head candidates``' (export/decode.py): one packed tensor N×A×(4+[1]+K) (YOLOv5) or
N×(4+[1]+K)×A (YOLOv8, ultralytics' ``output0``), or separate boxes N×A×4, class scores N×A×K and
optional objectness N×A(×1). Which packed orientation a file has is read from its shape on a sample;
the exporter's PyTorch decoder, run on the original graph's outputs, is the import's parity reference.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from attnserve.export.adapter import CANDIDATE_OUTPUTS
from attnserve.export.decode import DecodeSpec
from attnserve.export.errors import ExportError
from attnserve.export.graph import GraphWriter

CANDIDATE_BOXES, CANDIDATE_SCORES = CANDIDATE_OUTPUTS
PREFIX = "attnserve/decode"


def append_candidates(
    proto: onnx.ModelProto, spec: DecodeSpec, heads: list[str], shapes: list[tuple[int, ...]], classes: int
) -> tuple[onnx.ModelProto, int]:
    """A copy of ``proto`` whose outputs are the candidates decoded from its ``heads`` outputs (of
    ``shapes`` on a sample), and the number of candidates per image."""
    if spec.layout != "candidates":
        raise ExportError(
            f"--head {spec.layout} is for PyTorch models; an imported ONNX detector's heads are read as "
            "--head candidates (boxes and class scores per candidate, packed or separate)."
        )
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = GraphWriter(out.graph, PREFIX)
    if len(heads) == 1:
        boxes, scores, objectness, anchors = _unpacked(g, heads[0], shapes[0], classes)
    else:
        boxes, scores, objectness, anchors = _separate(g, heads, shapes, classes)
    if spec.box_format == "cxcywh":
        centre = _slice(g, boxes, 0, 2, "centre")
        half = g.add(
            "Mul", [_slice(g, boxes, 2, 4, "size"), g.constant(np.array(0.5, np.float32))], PREFIX + "/half"
        )
        corners = [
            g.add("Sub", [centre, half], PREFIX + "/x1y1"),
            g.add("Add", [centre, half], PREFIX + "/x2y2"),
        ]
        boxes = g.add("Concat", corners, PREFIX + "/xyxy", axis=2)
    g.add("Identity", [boxes], CANDIDATE_BOXES)
    scores = _activated(g, scores, spec.activation, softmax_ok=True)
    if objectness is not None:
        scores = g.add(
            "Mul", [scores, _activated(g, objectness, spec.activation, softmax_ok=False)], PREFIX + "/scored"
        )
    g.add("Identity", [scores], CANDIDATE_SCORES)
    batch = out.graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    del out.graph.output[:]
    out.graph.output.extend(
        [
            helper.make_tensor_value_info(CANDIDATE_BOXES, TensorProto.FLOAT, [batch, anchors, 4]),
            helper.make_tensor_value_info(CANDIDATE_SCORES, TensorProto.FLOAT, [batch, anchors, classes]),
        ]
    )
    return out, anchors


def _unpacked(g: GraphWriter, packed: str, shape: tuple[int, ...], k: int):
    """One N×A×(4+[1]+K) or N×(4+[1]+K)×A tensor → boxes, class scores, objectness or None, A."""
    widths = (4 + k, 5 + k)
    if len(shape) != 3 or (shape[2] not in widths and shape[1] not in widths):
        raise ExportError(
            f"the packed head {packed!r} is {list(shape)}; with {k} labels it must be N×A×{4 + k} or "
            f"N×A×{5 + k} (boxes, [objectness,] classes per candidate) or the transpose N×{4 + k}×A."
        )
    if shape[2] not in widths:  # YOLOv8: N×(4+K)×A
        packed = g.add("Transpose", [packed], PREFIX + "/candidates_last", perm=[0, 2, 1])
        shape = (shape[0], shape[2], shape[1])
    objectness = _slice(g, packed, 4, 5, "objectness") if shape[2] == 5 + k else None
    scores = _slice(g, packed, shape[2] - k, shape[2], "class_scores")
    return _slice(g, packed, 0, 4, "boxes"), scores, objectness, shape[1]


def _separate(g: GraphWriter, heads: list[str], shapes: list[tuple[int, ...]], k: int):
    """Boxes N×A×4, class scores N×A×K and optional objectness N×A or N×A×1."""
    boxes, scores = heads[0], heads[1]
    (box_shape, score_shape), objectness = shapes[:2], None
    fits = len(box_shape) == 3 and box_shape[2] == 4 and tuple(score_shape) == (*box_shape[:2], k)
    if len(heads) == 3:
        fits = fits and tuple(shapes[2]) in (tuple(box_shape[:2]), (*box_shape[:2], 1))
        objectness = heads[2]
        if len(shapes[2]) == 2:
            objectness = g.add("Unsqueeze", [objectness, g.ints(2)], PREFIX + "/objectness")
    if not fits:
        given = ", ".join(f"{h} {list(s)}" for h, s in zip(heads, shapes, strict=True))
        raise ExportError(
            f"the head outputs must be boxes N×A×4, class scores N×A×{k} and optional objectness N×A; got "
            f"{given}."
        )
    return boxes, scores, objectness, box_shape[1]


def _slice(g: GraphWriter, tensor: str, start: int, end: int, name: str) -> str:
    return g.add("Slice", [tensor, g.ints(start), g.ints(end), g.ints(2)], f"{PREFIX}/{name}")


def _activated(g: GraphWriter, tensor: str, activation: str, softmax_ok: bool) -> str:
    """As export/decode.py's HeadDecoder: softmax over classes, objectness through a sigmoid."""
    if activation == "sigmoid" or (activation == "softmax" and not softmax_ok):
        return g.add("Sigmoid", [tensor], f"{tensor}/sigmoid")
    if activation == "softmax":
        return g.add("Softmax", [tensor], f"{tensor}/softmax", axis=2)
    return tensor
