"""Spatial attention, the spatial half of CBAM (Woo et al., "CBAM", ECCV 2018, arXiv:1807.06521).

Ms = sigmoid(BN(conv7x7([max_c F; mean_c F])));  y = x * Ms. The reference code adds the BN.
"""

import torch
from torch import nn

from attnserve.maps import SPATIAL


class SpatialAttention(nn.Module):
    MAP_KINDS = {"spatial": SPATIAL}

    def __init__(self, channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        del channels  # the map is pooled over channels; kept for the shared constructor convention
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        m = torch.sigmoid(self.bn(self.conv(pooled)))
        return x * m, {"spatial": m}
