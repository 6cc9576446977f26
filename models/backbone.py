"""ResNet-style backbone (He et al., arXiv:1512.03385) with pluggable attention.

Attention sits where SE and CBAM place it: on the residual branch after its last BN, before the add.
"""

import torch
from torch import nn

from attnserve.models.attention import create_attn
from attnserve.models.outputs import OutputSpec, attention_specs


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Basic (two 3×3) or bottleneck (1×1, 3×3, 1×1 with expansion 4) residual block."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, bottleneck: bool, attn: str | None) -> None:
        super().__init__()
        if bottleneck:
            mid = out_ch // 4
            self.branch = nn.Sequential(
                conv_bn_relu(in_ch, mid, 1),
                conv_bn_relu(mid, mid, 3, stride),
                nn.Conv2d(mid, out_ch, 1, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        else:
            self.branch = nn.Sequential(
                conv_bn_relu(in_ch, out_ch, 3, stride),
                nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.attn = create_attn(attn, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = self.branch(x)
        maps: dict[str, torch.Tensor] = {}
        if self.attn is not None:
            y, maps = self.attn(y)
        return torch.relu(y + self.shortcut(x)), maps


class ResNetBackbone(nn.Module):
    """A stride-2 stem and up to four stages at strides 2, 4, 8, 16 (4, 8, 16, 32 with ``stem_pool``,
    ResNet-50's layout), one per width; returns every stage's features."""

    STAGE_STRIDES = (1, 2, 2, 2)
    # the input normalisation applied inside forward() (same for R, G and B); exporters record it
    INPUT_MEAN = 0.5
    INPUT_STD = 0.25

    def __init__(
        self,
        widths: tuple[int, ...] = (24, 48, 96, 192),
        depths: tuple[int, ...] = (1, 1, 1, 1),
        attn: str | None = None,
        bottleneck: bool = False,
        attn_stages: tuple[int, ...] = (1, 2, 3, 4),
        stem_width: int | None = None,
        stem_pool: bool = False,
    ) -> None:
        super().__init__()
        stem_width = stem_width or widths[0]
        if stem_pool:  # ResNet's 7×7 stride-2 convolution and 3×3 stride-2 max-pool: stride 4
            self.stem = nn.Sequential(conv_bn_relu(3, stem_width, 7, stride=2), nn.MaxPool2d(3, 2, padding=1))
        else:
            self.stem = conv_bn_relu(3, stem_width, 3, stride=2)
        self.blocks = nn.ModuleList()
        self.map_specs: list[OutputSpec] = []
        self.block_map_prefixes: list[str] = []
        self.stage_ends: set[int] = set()  # index of each stage's last block: its output is a feature map
        self.stage_strides: list[int] = []
        stride, in_ch = (4 if stem_pool else 2), stem_width
        strides = self.STAGE_STRIDES[: len(widths)]
        for stage, (width, depth, s) in enumerate(zip(widths, depths, strides, strict=True), 1):
            stride *= s
            self.stage_strides.append(stride)
            for i in range(depth):
                block_attn = attn if stage in attn_stages else None
                block = ResidualBlock(in_ch, width, s if i == 0 else 1, bottleneck, block_attn)
                prefix = f"stage{stage}_block{i}"
                if block.attn is not None:
                    self.map_specs += attention_specs(
                        prefix, block.attn, stride, f"blocks.{len(self.blocks)}.attn"
                    )
                self.blocks.append(block)
                self.block_map_prefixes.append(prefix)
                in_ch = width
            self.stage_ends.add(len(self.blocks) - 1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """``x``: N×3×H×W RGB in [0, 1]; normalising here means no caller can get it wrong."""
        x = self.stem((x - self.INPUT_MEAN) / self.INPUT_STD)
        feats: list[torch.Tensor] = []
        maps: dict[str, torch.Tensor] = {}
        for idx, block in enumerate(self.blocks):
            x, block_maps = block(x)
            prefix = self.block_map_prefixes[idx]
            maps.update({f"{prefix}_{k}": v for k, v in block_maps.items()})
            if idx in self.stage_ends:
                feats.append(x)
        return feats, maps
