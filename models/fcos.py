"""Anchor-free dense detector written the way public detectors are: FCOS (Tian et al., "FCOS: Fully
Convolutional One-Stage Object Detection", ICCV 2019, arXiv:1904.01355) heads over an FPN (Lin et al.,
arXiv:1612.03144) with CBAM (arXiv:1807.06521) on every pyramid level of the neck.

``forward()`` returns the raw heads, as FCOS's reference code does, and leaves decoding and NMS to the
caller: per level (strides 4, 8, 16) class logits N×K×H×W, box distances N×4×H×W (left, top, right,
bottom from the cell centre, in strides: ``exp(s_l · x)`` with a learned scale per level) and
centerness logits N×1×H×W; plus the CBAM maps of each level (``level{stride}_channel``,
``level{stride}_spatial``). ``RAW_HEAD`` says how to read them; ``attnserve export`` then adds the
decoding and NMS to the graph (export/decode.py, export/nms.py), so the served model returns boxes.
"""

import torch
import torch.nn.functional as F
from torch import nn

from attnserve.models.attention import CBAM
from attnserve.models.backbone import ResNetBackbone
from attnserve.models.outputs import attention_specs, under

CLASS_PRIOR = 0.01  # FCOS/RetinaNet's initial foreground probability for the class logits


def tower(channels: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class DenseAttentionDetector(nn.Module):
    LEVELS = (2, 3, 4)  # backbone stages used as pyramid levels (strides 4, 8, 16 on the demo backbone)
    # How export/decode.py reads forward()'s outputs, and the NMS FCOS's reference code applies
    RAW_HEAD = {
        "layout": "dense",
        "regression": "ltrb",
        "box_units": "stride",
        "activation": "sigmoid",
        "nms": "class",
        "iou_threshold": 0.6,
        "score_threshold": 0.05,
        "max_detections": 50,
    }

    def __init__(
        self,
        class_names: tuple[str, ...],
        widths: tuple[int, ...] = (24, 48, 96, 192),
        depths: tuple[int, ...] = (1, 1, 1, 1),
        fpn_channels: int = 64,
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.backbone = ResNetBackbone(widths, depths)
        self.strides = [self.backbone.stage_strides[s - 1] for s in self.LEVELS]
        self.lateral = nn.ModuleList(nn.Conv2d(widths[s - 1], fpn_channels, 1) for s in self.LEVELS)
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in self.LEVELS)
        self.level_attn = nn.ModuleList(CBAM(fpn_channels) for _ in self.LEVELS)
        # one head shared by every level, as in FCOS
        self.cls_tower, self.box_tower = tower(fpn_channels), tower(fpn_channels)
        self.cls = nn.Conv2d(fpn_channels, len(class_names), 3, padding=1)
        self.box = nn.Conv2d(fpn_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(fpn_channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.LEVELS)))
        nn.init.constant_(self.cls.bias, -float(torch.log(torch.tensor((1 - CLASS_PRIOR) / CLASS_PRIOR))))
        self.output_specs = [
            spec
            for i, (stride, attn) in enumerate(zip(self.strides, self.level_attn, strict=True))
            for spec in attention_specs(f"level{stride}", attn, stride, f"level_attn.{i}")
        ] + under("backbone", self.backbone.map_specs)

    def forward(self, x: torch.Tensor) -> dict:
        feats, maps = self.backbone(x)
        laterals = [conv(feats[s - 1]) for conv, s in zip(self.lateral, self.LEVELS, strict=True)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down pathway
            laterals[i] = laterals[i] + F.interpolate(
                laterals[i + 1], size=laterals[i].shape[2:], mode="nearest"
            )
        cls, box, ctr = [], [], []
        for i, (stride, smooth, attn, lat) in enumerate(
            zip(self.strides, self.smooth, self.level_attn, laterals, strict=True)
        ):
            level, level_maps = attn(smooth(lat))
            maps.update({f"level{stride}_{k}": v for k, v in level_maps.items()})
            box_features = self.box_tower(level)
            cls.append(self.cls(self.cls_tower(level)))
            box.append(torch.exp(self.scales[i] * self.box(box_features)))
            ctr.append(self.centerness(box_features))
        return {"cls": cls, "reg": box, "ctr": ctr, **maps}


def flatten_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """Per-level N×C×H×W maps → N×A×C, levels in order, each row-major (the decoder's anchor order)."""
    return torch.cat([t.flatten(2).transpose(1, 2) for t in levels], dim=1)
