"""Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, arXiv:1709.01507).

z = mean over H, W;  s = sigmoid(W2 relu(W1 z)) with reduction r = 16;  y = x * s.
"""

import torch
from torch import nn

from attnserve.maps import CHANNEL


def reduced_channels(channels: int, reduction: int, min_channels: int = 8) -> int:
    """Bottleneck width of a squeeze MLP, kept at ``min_channels`` or more for thin layers."""
    return max(min_channels, channels // reduction)


class SqueezeExcite(nn.Module):
    MAP_KINDS = {"channel": CHANNEL}

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(z))))
        return x * s, {"channel": s.flatten(1)}
