"""Detectors as public code writes them: heads returned raw, decoding and NMS left to the caller.
Each ``build`` style is a --factory target; ``reference_decode`` is the decoding each style's own
repository documents, written plainly here (not with export/decode.py) for the tests to check against.

- ``yolov5``: one packed N×A×(5+K) tensor, boxes cx, cy, w, h in pixels, objectness and class
  probabilities already through a sigmoid (YOLOv5's Detect in export mode);
- ``yolov8``: one packed N×(4+K)×A tensor, cx, cy, w, h in pixels and class probabilities, no
  objectness (YOLOv8's Detect);
- ``retina``: a dict of boxes N×A×4 x1 y1 x2 y2 in pixels and class logits N×A×K (torchvision-style
  heads after their box coder);
- ``fcos``: per level class logits, ltrb distances (exp of the regression, in strides) and centerness
  logits (FCOS);
- ``yolox``: per level class logits, (dx, dy, log w, log h) in strides and objectness logits (YOLOX).

Small on purpose (64×64 inputs, strides 8, 16, 32): the tests export each one. A CBAM-style spatial gate
in the neck and an SE gate in the backbone give discovery something to find.
"""

import torch
from torch import nn

CLASSES = 3
STRIDES = (8, 16, 32)


class SE(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // 4), nn.ReLU(), nn.Linear(channels // 4, channels)
        )

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class Backbone(nn.Module):
    """Three stride-2 stages to stride 8, then strides 16 and 32: one feature per level."""

    def __init__(self, width=16):
        super().__init__()

        def stage(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())

        self.stem = nn.Sequential(stage(3, width), stage(width, width), stage(width, width), SE(width))
        self.down1, self.down2 = stage(width, width), stage(width, width)
        self.gates = nn.ModuleList(SpatialGate() for _ in STRIDES)

    def forward(self, x):
        p3 = self.stem(x)
        p4 = self.down1(p3)
        p5 = self.down2(p4)
        return [gate(p) for gate, p in zip(self.gates, (p3, p4, p5), strict=True)]


class DenseHead(nn.Module):
    def __init__(self, width, classes, extra: bool):
        super().__init__()
        self.cls = nn.Conv2d(width, classes, 3, padding=1)
        self.reg = nn.Conv2d(width, 4, 3, padding=1)
        self.extra = nn.Conv2d(width, 1, 3, padding=1) if extra else None


class Detector(nn.Module):
    def __init__(self, style, width=16, classes=CLASSES):
        super().__init__()
        self.style = style
        self.backbone = Backbone(width)
        self.head = DenseHead(width, classes, extra=style in ("yolov5", "fcos", "yolox"))

    def raw(self, x):
        """Per level: class logits, box regression, and centerness/objectness logits (or None)."""
        feats = self.backbone(x)
        extra = [self.head.extra(f) for f in feats] if self.head.extra is not None else None
        return [self.head.cls(f) for f in feats], [self.head.reg(f) for f in feats], extra

    def forward(self, x):
        cls, reg, extra = self.raw(x)
        if self.style == "fcos":
            return {"cls": cls, "reg": [torch.exp(r) for r in reg], "ctr": extra}
        if self.style == "yolox":
            return cls, reg, extra
        # the candidate styles decode their grid in forward(), as those repositories do
        boxes, logits, objectness = [], [], []
        for level, (c, r) in enumerate(zip(cls, reg, strict=True)):
            stride = STRIDES[level]
            n, _, h, w = r.shape
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=r.dtype), torch.arange(w, dtype=r.dtype), indexing="ij"
            )
            cx = (xs + 0.5 + torch.tanh(r[:, 0])) * stride
            cy = (ys + 0.5 + torch.tanh(r[:, 1])) * stride
            bw, bh = torch.exp(r[:, 2].clamp(max=4)) * stride, torch.exp(r[:, 3].clamp(max=4)) * stride
            boxes.append(torch.stack([cx, cy, bw, bh], -1).reshape(n, -1, 4))
            logits.append(c.permute(0, 2, 3, 1).reshape(n, -1, c.shape[1]))
            if extra is not None:
                objectness.append(extra[level].permute(0, 2, 3, 1).reshape(n, -1, 1))
        boxes, logits = torch.cat(boxes, 1), torch.cat(logits, 1)
        if self.style == "yolov5":
            return torch.cat([boxes, torch.sigmoid(torch.cat(objectness, 1)), torch.sigmoid(logits)], dim=2)
        if self.style == "yolov8":
            return torch.cat([boxes, torch.sigmoid(logits)], dim=2).transpose(1, 2)
        cx, cy, bw, bh = boxes.unbind(-1)
        xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        return {"boxes": xyxy, "scores": logits}  # retina


# what each style passes to `attnserve export`
EXPORT_OPTIONS = {
    "yolov5": ["--head", "candidates", "--box-format", "cxcywh", "--score-activation", "none"],
    "yolov8": ["--head", "candidates", "--box-format", "cxcywh", "--score-activation", "none"],
    "retina": ["--head", "candidates"],
    "fcos": ["--head", "dense", "--box-regression", "ltrb"],
    "yolox": ["--head", "dense", "--box-regression", "yolox"],
}


def build(style="fcos", seed=0):
    torch.manual_seed(seed)
    model = Detector(style)
    # boxes a few strides wide, so neighbouring candidates overlap and NMS has work to do
    nn.init.constant_(model.head.reg.bias, 1.0)
    # random BatchNorm statistics, so eval mode is not the identity and parity means something
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@torch.no_grad()
def reference_decode(model: Detector, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate boxes (x1 y1 x2 y2 pixels) and class probabilities, N×A×4 and N×A×K, as each style's
    documentation says to decode them, from the raw per-level tensors."""
    cls, reg, extra = model.raw(images)
    boxes, scores = [], []
    for level, stride in enumerate(STRIDES):
        c, r = cls[level], reg[level]
        n, k, h, w = c.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=r.dtype), torch.arange(w, dtype=r.dtype), indexing="ij")
        if model.style == "fcos":
            d = torch.exp(r) * stride
            cx, cy = (xs + 0.5) * stride, (ys + 0.5) * stride
            b = torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], -1)
        elif model.style == "yolox":
            cx, cy = (xs + r[:, 0]) * stride, (ys + r[:, 1]) * stride
            bw, bh = torch.exp(r[:, 2]) * stride, torch.exp(r[:, 3]) * stride
            b = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        else:
            cx = (xs + 0.5 + torch.tanh(r[:, 0])) * stride
            cy = (ys + 0.5 + torch.tanh(r[:, 1])) * stride
            bw, bh = torch.exp(r[:, 2].clamp(max=4)) * stride, torch.exp(r[:, 3].clamp(max=4)) * stride
            b = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        p = torch.sigmoid(c)
        if extra is not None:
            p = p * torch.sigmoid(extra[level])
        boxes.append(b.reshape(n, -1, 4))
        scores.append(p.permute(0, 2, 3, 1).reshape(n, -1, k))
    return torch.cat(boxes, 1), torch.cat(scores, 1)
