"""Coordinate Attention (Hou et al., "Coordinate Attention for Efficient Mobile Network Design",
CVPR 2021, arXiv:2103.02907).

Pool along W (N×C×H×1) and along H (N×C×1×W), concatenate, 1×1 conv to max(8, C/32), BN, h-swish,
split, then a 1×1 conv and sigmoid per direction: y = x * a_h * a_w. The reference code pools with
AdaptiveAvgPool2d((None, 1)); a mean over one dim is the same and exports at any input size.
The spatial map reported is the channel mean of a_h * a_w.
"""

import torch
from torch import nn

from attnserve.maps import SPATIAL


class CoordAttention(nn.Module):
    MAP_KINDS = {"spatial": SPATIAL}

    def __init__(self, channels: int, reduction: int = 32, min_channels: int = 8) -> None:
        super().__init__()
        hidden = max(min_channels, channels // reduction)
        self.conv1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish(inplace=True)
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = x.shape[2]
        pooled_h = x.mean(dim=3, keepdim=True)  # N×C×H×1
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # N×C×W×1
        y = self.act(self.bn1(self.conv1(torch.cat([pooled_h, pooled_w], dim=2))))
        y_h, y_w = y[:, :, :h], y[:, :, h:]
        a_h = torch.sigmoid(self.conv_h(y_h))  # N×C×H×1
        a_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))  # N×C×1×W
        return x * a_h * a_w, {"spatial": (a_h * a_w).mean(dim=1, keepdim=True)}
