"""Efficient Channel Attention (Wang et al., "ECA-Net", CVPR 2020, arXiv:1910.03151).

y = mean over H, W;  w = sigmoid(conv1d_k(y)) without bias, where the kernel size k is the odd
number nearest to log2(C)/gamma + b/gamma (gamma = 2, b = 1), at least 3.
"""

import math

import torch
from torch import nn

from attnserve.maps import CHANNEL


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return max(3, t if t % 2 else t + 1)


class ECA(nn.Module):
    MAP_KINDS = {"channel": CHANNEL}

    def __init__(self, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        k = eca_kernel_size(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = x.mean(dim=(2, 3)).unsqueeze(1)  # N×1×C: the channel axis is the 1-D signal
        w = torch.sigmoid(self.conv(y)).squeeze(1)
        return x * w[:, :, None, None], {"channel": w}
