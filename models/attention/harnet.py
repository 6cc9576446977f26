"""Hybrid attention for detection heads, after HAR-Net (Li & Wang, "HAR-Net: Joint Learning of Hybrid
Attention for Single-stage Object Detection", arXiv:1904.11141).

Spatial attention per pyramid level: four 3×3 convs (16 channels, dilations 1, 2, 5, 2, GroupNorm,
ReLU), a 3×3 conv to one channel and a sigmoid. Channel attention across levels: global average pool
of every level, concatenated, FC → ReLU → FC → sigmoid; one vector shared by all levels.
HAR-Net's aligned (deformable) attention needs torchvision and is left out.
"""

import torch
from torch import nn

from attnserve.maps import CHANNEL, SPATIAL
from attnserve.models.attention.se import reduced_channels


class DilatedSpatialAttention(nn.Module):
    MAP_KINDS = {"spatial": SPATIAL}

    def __init__(self, channels: int, hidden: int = 16, dilations: tuple[int, ...] = (1, 2, 5, 2)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = channels
        for d in dilations:
            layers += [
                nn.Conv2d(in_ch, hidden, 3, padding=d, dilation=d, bias=False),
                nn.GroupNorm(4, hidden),
            ]
            layers.append(nn.ReLU(inplace=True))
            in_ch = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(hidden, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = torch.sigmoid(self.out(self.body(x)))
        return x * m, {"spatial": m}


class CrossLevelChannelAttention(nn.Module):
    """One channel vector from the pooled features of every level, applied to each level."""

    MAP_KINDS = {"channel": CHANNEL}

    def __init__(self, channels: int, levels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_channels(channels * levels, reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels * levels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        w = torch.sigmoid(self.fc(torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)))
        return [f * w[:, :, None, None] for f in feats], {"channel": w}
