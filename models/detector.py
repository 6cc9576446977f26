"""Single-stage anchor-free detector: CenterNet-style heads (Zhou et al., "Objects as Points",
arXiv:1904.07850) over a light FPN (Lin et al., arXiv:1612.03144), with HAR-Net-style hybrid
attention (arXiv:1904.11141): spatial attention per pyramid level, channel attention across levels.

The levels at strides 4, 8 and 16 are attended, brought to stride 4 and summed; the heads predict a
per-class centre heatmap, box size and centre offset there. Decoding happens in the graph (3×3
max-pool peak test, TopK, box math), so the model emits final boxes, scores and classes with a fixed
``max_detections`` per image and needs no NMS.
"""

import torch
import torch.nn.functional as F
from torch import nn

from attnserve.models.attention import CrossLevelChannelAttention, DilatedSpatialAttention
from attnserve.models.backbone import ResNetBackbone
from attnserve.models.outputs import PREDICTION, OutputSpec, attention_specs, under

HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ≈ 0.1, CenterNet's initial heatmap prior


def head(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, 1)
    )


class HybridAttentionDetector(nn.Module):
    LEVELS = (2, 3, 4)  # backbone stages used as pyramid levels (strides 4, 8, 16)

    def __init__(
        self,
        class_names: tuple[str, ...],
        backbone_attn: str | None = None,
        widths: tuple[int, ...] = (24, 48, 96, 192),
        depths: tuple[int, ...] = (1, 1, 1, 1),
        fpn_channels: int = 64,
        max_detections: int = 50,
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.max_detections = max_detections
        self.backbone = ResNetBackbone(widths, depths, backbone_attn)
        self.strides = [self.backbone.stage_strides[s - 1] for s in self.LEVELS]
        self.out_stride = self.strides[0]
        self.lateral = nn.ModuleList(nn.Conv2d(widths[s - 1], fpn_channels, 1) for s in self.LEVELS)
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in self.LEVELS)
        self.level_attn = nn.ModuleList(DilatedSpatialAttention(fpn_channels) for _ in self.LEVELS)
        self.channel_attn = CrossLevelChannelAttention(fpn_channels, len(self.LEVELS))
        self.heatmap = head(fpn_channels, len(class_names))
        self.size = head(fpn_channels, 2)
        self.offset = head(fpn_channels, 2)
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_PRIOR_BIAS)

        level_specs = [
            spec
            for i, (stride, attn) in enumerate(zip(self.strides, self.level_attn, strict=True))
            for spec in attention_specs(f"level{stride}", attn, stride, f"level_attn.{i}")
        ]
        self.output_specs = [
            OutputSpec("boxes", PREDICTION),
            OutputSpec("scores", PREDICTION),
            OutputSpec("classes", PREDICTION),
            *level_specs,
            *attention_specs("cross_level", self.channel_attn, self.out_stride, "channel_attn"),
            *under("backbone", self.backbone.map_specs),
        ]

    def forward_heads(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Raw head outputs at stride 4 (heatmap logits, size, offset) and the attention maps."""
        feats, maps = self.backbone(x)
        laterals = [conv(feats[s - 1]) for conv, s in zip(self.lateral, self.LEVELS, strict=True)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down pathway
            laterals[i] = laterals[i] + F.interpolate(
                laterals[i + 1], size=laterals[i].shape[2:], mode="nearest"
            )
        levels = []
        for stride, smooth, attn, lat in zip(
            self.strides, self.smooth, self.level_attn, laterals, strict=True
        ):
            level, level_maps = attn(smooth(lat))
            levels.append(level)
            maps.update({f"level{stride}_{k}": v for k, v in level_maps.items()})
        levels, channel_maps = self.channel_attn(levels)
        maps.update({f"cross_level_{k}": v for k, v in channel_maps.items()})
        size = levels[0].shape[2:]
        fused = levels[0] + sum(
            F.interpolate(lv, size=size, mode="bilinear", align_corners=False) for lv in levels[1:]
        )
        raw = {"heatmap": self.heatmap(fused), "size": self.size(fused), "offset": self.offset(fused)}
        return raw, maps

    def decode(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        heat = torch.sigmoid(raw["heatmap"])
        n, _, h, w = heat.shape
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
        scores, idx = torch.topk(peaks.flatten(1), self.max_detections, dim=1)
        classes = torch.div(idx, h * w, rounding_mode="floor")
        pixel = idx - classes * (h * w)
        ys = torch.div(pixel, w, rounding_mode="floor")
        xs = pixel - ys * w
        gather_idx = pixel.unsqueeze(1).expand(n, 2, self.max_detections)
        size = torch.gather(raw["size"].flatten(2), 2, gather_idx)  # N×2×K, in output cells
        offset = torch.gather(raw["offset"].flatten(2), 2, gather_idx)
        cx = (xs.to(heat.dtype) + offset[:, 0]) * self.out_stride
        cy = (ys.to(heat.dtype) + offset[:, 1]) * self.out_stride
        half_w = size[:, 0] * self.out_stride / 2
        half_h = size[:, 1] * self.out_stride / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)
        return {"boxes": boxes, "scores": scores, "classes": classes}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raw, maps = self.forward_heads(x)
        return {**self.decode(raw), **maps}
