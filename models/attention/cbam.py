"""Convolutional Block Attention Module (Woo et al., "CBAM", ECCV 2018, arXiv:1807.06521).

Channel then spatial. Mc = sigmoid(MLP(avgpool F) + MLP(maxpool F)) with one shared MLP,
reduction 16; F' = Mc * F. Then the spatial attention of ``spatial.py``: F'' = Ms * F'.
"""

import torch
from torch import nn

from attnserve.maps import CHANNEL, SPATIAL
from attnserve.models.attention.se import reduced_channels
from attnserve.models.attention.spatial import SpatialAttention


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))


class CBAM(nn.Module):
    MAP_KINDS = {"channel": CHANNEL, "spatial": SPATIAL}

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial = SpatialAttention(channels, kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mc = self.channel_gate(x)
        y, spatial_maps = self.spatial(x * mc[:, :, None, None])
        return y, {"channel": mc, **spatial_maps}
