"""Raw detector heads → candidate boxes and class scores, in PyTorch, so the decode is exported with the
model. What follows in the graph is non-maximum suppression (export/nms.py).

Most single-stage detectors return their heads undecoded and leave decoding and NMS to the caller. Two
layouts cover the families people publish:

- ``candidates`` (YOLOv5/YOLOv8, SSD-like, any model that decodes its anchors itself): boxes N×A×4 and
  class scores N×A×K, with or without an objectness N×A (or N×A×1). Given as a dict (``boxes``,
  ``scores``, optional ``objectness``), a tuple in that order, or one packed tensor N×A×(4+[1]+K)
  (YOLOv5) or N×(4+[1]+K)×A (YOLOv8), told apart by K, the number of labels.
- ``dense`` (FCOS/YOLOX/CenterNet-style anchor-free heads per pyramid level): per level class maps
  N×K×H×W, box maps N×4×H×W and optional centerness/objectness N×1×H×W. Given as a dict (``cls``,
  ``reg``, optional ``ctr``, each a list over levels) or a tuple of those lists. Each level's stride is
  the input size over its map size. Box maps are ``ltrb`` (distances from the cell centre to the four
  sides, FCOS) or ``yolox`` (centre offset from the cell's corner and log size), in stride units, or in
  input pixels with ``box_units="pixels"``.

Boxes come out as x1, y1, x2, y2 in input pixels; scores as probabilities (the activation the head
needs: ``sigmoid`` for logits, ``softmax`` over classes, or ``none``), times objectness when there is one.
"""

from dataclasses import asdict, dataclass

import torch
from torch import nn

from attnserve.export.adapter import describe
from attnserve.export.errors import ExportError

LAYOUTS = ("candidates", "dense")
BOX_FORMATS = ("xyxy", "cxcywh")
REGRESSIONS = ("ltrb", "yolox")
BOX_UNITS = ("stride", "pixels")
ACTIVATIONS = ("sigmoid", "softmax", "none")
NMS_MODES = ("class", "agnostic")


@dataclass(frozen=True)
class DecodeSpec:
    """How to read a detector's raw outputs, and the NMS that makes them final; the manifest keeps it."""

    layout: str  # one of LAYOUTS
    box_format: str = "xyxy"  # candidates: how boxes are given
    regression: str = "ltrb"  # dense: what the box maps hold
    box_units: str = "stride"  # dense: box maps in level strides or input pixels
    activation: str = "sigmoid"  # turns class outputs (and objectness) into probabilities
    nms: str = "class"  # "class": per class; "agnostic": across classes, each box its best class
    iou_threshold: float = 0.5
    score_threshold: float = 0.05  # candidates at or below it are dropped before NMS
    max_detections: int = 100  # per image, after NMS

    def check(self) -> None:
        for value, allowed, option in (
            (self.layout, LAYOUTS, "--head"),
            (self.box_format, BOX_FORMATS, "--box-format"),
            (self.regression, REGRESSIONS, "--box-regression"),
            (self.box_units, BOX_UNITS, "--box-units"),
            (self.activation, ACTIVATIONS, "--score-activation"),
            (self.nms, NMS_MODES, "--nms"),
        ):
            if value not in allowed:
                raise ExportError(f"{option} {value!r} is not one of {', '.join(allowed)}.")
        if not 0 <= self.iou_threshold <= 1:
            raise ExportError(f"--iou-threshold {self.iou_threshold} is not in [0, 1].")
        if not 0 <= self.score_threshold < 1:
            raise ExportError(f"--nms-score-threshold {self.score_threshold} is not in [0, 1).")
        if self.max_detections < 1:
            raise ExportError(f"--max-detections {self.max_detections} must be at least 1.")

    def record(self) -> dict:
        return asdict(self)


class HeadDecoder(nn.Module):
    """The model's raw outputs → (boxes N×A×4 xyxy input pixels, scores N×A×K probabilities)."""

    def __init__(self, spec: DecodeSpec, classes: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.spec = spec
        self.classes = classes
        self.input_size = input_size

    def forward(self, out: object) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.layout == "candidates":
            boxes, scores, objectness = self._candidates(out)
            boxes = _xyxy(boxes) if self.spec.box_format == "cxcywh" else boxes
        else:
            boxes, scores, objectness = self._dense(out)
        scores = self._activate(scores, softmax_ok=True)
        if objectness is not None:
            scores = scores * self._activate(objectness, softmax_ok=False)
        return boxes, scores

    def _activate(self, t: torch.Tensor, softmax_ok: bool) -> torch.Tensor:
        if self.spec.activation == "sigmoid" or (self.spec.activation == "softmax" and not softmax_ok):
            return torch.sigmoid(t)
        if self.spec.activation == "softmax":
            return torch.softmax(t, dim=-1)
        return t

    def _candidates(self, out: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        k = self.classes
        objectness = None
        if isinstance(out, dict) and "boxes" in out and "scores" in out:
            boxes, scores, objectness = out["boxes"], out["scores"], out.get("objectness")
        elif isinstance(out, (tuple, list)) and len(out) in (2, 3) and all(torch.is_tensor(t) for t in out):
            boxes, scores, objectness = out[0], out[1], (out[2] if len(out) == 3 else None)
        elif torch.is_tensor(out) and out.dim() == 3:
            packed = out
            if packed.shape[2] not in (4 + k, 5 + k) and packed.shape[1] in (4 + k, 5 + k):
                packed = packed.transpose(1, 2)  # YOLOv8: N×(4+K)×A
            if packed.shape[2] not in (4 + k, 5 + k):
                raise self._unfit(
                    out, f"a packed tensor's box and class axis must be {4 + k} or {5 + k} long"
                )
            boxes, rest = packed[..., :4], packed[..., 4:]
            if rest.shape[-1] == k + 1:
                objectness, rest = rest[..., 0], rest[..., 1:]
            scores = rest
        else:
            raise self._unfit(out, "")
        if objectness is not None and objectness.dim() == 3:
            objectness = objectness[..., 0]
        fits = (
            boxes.dim() == 3
            and boxes.shape[-1] == 4
            and scores.dim() == 3
            and scores.shape[:2] == boxes.shape[:2]
            and scores.shape[2] == k
            and (objectness is None or objectness.shape == boxes.shape[:2])
        )
        if not fits:
            raise self._unfit(out, f"boxes N×A×4, scores N×A×{k} and objectness N×A must agree")
        return boxes, scores, None if objectness is None else objectness[..., None]

    def _dense(self, out: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if isinstance(out, dict):
            levels = (out.get("cls"), out.get("reg"), out.get("ctr"))
        elif isinstance(out, (tuple, list)) and len(out) in (2, 3):
            levels = (out[0], out[1], out[2] if len(out) == 3 else None)
        else:
            levels = (None, None, None)
        cls, reg, ctr = (list(v) if isinstance(v, (tuple, list)) else v for v in levels)
        if not (isinstance(cls, list) and isinstance(reg, list) and cls and len(cls) == len(reg)):
            raise self._unfit(out, "")
        if ctr is not None and (not isinstance(ctr, list) or len(ctr) != len(cls)):
            raise self._unfit(out, "the centerness list must have one map per level")
        boxes, scores, objectness = [], [], []
        for level, (c, r) in enumerate(zip(cls, reg, strict=True)):
            o = ctr[level] if ctr is not None else None
            if not (
                torch.is_tensor(c)
                and torch.is_tensor(r)
                and c.dim() == 4
                and c.shape[1] == self.classes
                and r.dim() == 4
                and r.shape[1] == 4
                and r.shape[2:] == c.shape[2:]
                and (o is None or (torch.is_tensor(o) and o.shape[1] == 1 and o.shape[2:] == c.shape[2:]))
            ):
                why = f"level {level}: class N×{self.classes}×H×W, box N×4×H×W, centerness N×1×H×W"
                raise self._unfit(out, why)
            boxes.append(self._grid_boxes(r))
            scores.append(c.flatten(2).transpose(1, 2))
            if o is not None:
                objectness.append(o.flatten(2).transpose(1, 2))
        return (
            torch.cat(boxes, dim=1),
            torch.cat(scores, dim=1),
            torch.cat(objectness, dim=1) if objectness else None,
        )

    def _grid_boxes(self, reg: torch.Tensor) -> torch.Tensor:
        """One level's box maps → N×(H·W)×4 xyxy input pixels."""
        h, w = reg.shape[2:]
        stride_y, stride_x = self.input_size[0] / h, self.input_size[1] / w
        if stride_y != stride_x or stride_y != int(stride_y):
            raise ExportError(
                f"a {h}×{w} level on a {self.input_size[0]}×{self.input_size[1]} input has no whole stride; "
                "dense heads need each level's map to divide the input exactly."
            )
        stride = stride_y
        ys = torch.arange(h, dtype=reg.dtype, device=reg.device).view(1, h, 1).expand(1, h, w)
        xs = torch.arange(w, dtype=reg.dtype, device=reg.device).view(1, 1, w).expand(1, h, w)
        scale = 1.0 if self.spec.box_units == "pixels" else stride
        if self.spec.regression == "ltrb":
            cx, cy = (xs + 0.5) * stride, (ys + 0.5) * stride
            left, top, right, bottom = (reg[:, i] * scale for i in range(4))
            x1, y1, x2, y2 = cx - left, cy - top, cx + right, cy + bottom
        else:  # yolox: (dx, dy) from the cell's corner, (log w, log h)
            cx, cy = xs * stride + reg[:, 0] * scale, ys * stride + reg[:, 1] * scale
            half_w, half_h = torch.exp(reg[:, 2]) * scale / 2, torch.exp(reg[:, 3]) * scale / 2
            x1, y1, x2, y2 = cx - half_w, cy - half_h, cx + half_w, cy + half_h
        return torch.stack([x1, y1, x2, y2], dim=-1).flatten(1, 2)

    def _unfit(self, out: object, why: str) -> ExportError:
        expected = {
            "candidates": "boxes N×A×4 and class scores N×A×K (a dict with 'boxes', 'scores' and optional "
            "'objectness', a tuple in that order, or one packed N×A×(4+[1]+K) or N×(4+[1]+K)×A tensor)",
            "dense": "per-level class maps N×K×H×W, box maps N×4×H×W and optional centerness N×1×H×W (a "
            "dict with 'cls', 'reg' and optional 'ctr' lists, or a tuple of those lists)",
        }[self.spec.layout]
        return ExportError(
            f"the model's output does not fit --head {self.spec.layout}: expected {expected}"
            f"{'; ' + why if why else ''}; got {describe(out)}."
        )


def _xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
