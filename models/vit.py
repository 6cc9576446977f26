"""Vision transformer classifier (ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021,
arXiv:2010.11929; the small-data recipe of DeiT, Touvron et al. 2021, arXiv:2012.12877), with the
maps a transformer really has, computed in the graph:

- ``layer{i}_attention``: per block, the class token's attention to the patches averaged over heads,
  N×1×Gh×Gw on the patch grid, and ``layer{i}_heads`` the same per head, N×heads×Gh×Gw;
- ``rollout``: attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
  arXiv:2005.00928): per block Â = ½A + ½I with rows renormalised (A averaged over heads),
  R = Â_L ⋯ Â_1, and the class token's row of R over the patches. Only that row is propagated
  (r ← r Â_l from the last block down), O(L·T²) instead of O(L·T³). Without a class token (mean-pooled
  tokens) the row is the mean of all rows.

``stem="patch"`` embeds non-overlapping patches with one strided convolution; ``stem="conv"`` is a
hybrid: a small stride-4 CNN, then patches of ``patch / 4`` of its features; ``stem="resnet"`` is ViT's
own hybrid (the paper's ResNet stem, small): the first three stages of the demo classifiers' ResNet
(stride 8, no attention gates), each cell of its features one token, so a classifier checkpoint's
convolutions can start it (``attnserve.demo.train --init``). Inputs of any size whose
sides are multiples of ``patch`` work: the learned position embedding (for a ``grid``×``grid`` layout)
is resized bilinearly to the input's patch grid.
"""

import torch
import torch.nn.functional as F
from torch import nn

from attnserve.models.attention.self_attention import MultiHeadSelfAttention
from attnserve.models.backbone import ResNetBackbone, conv_bn_relu
from attnserve.models.outputs import PREDICTION, ROLLOUT, SELF_ATTENTION, SELF_ATTENTION_HEADS, OutputSpec

RESNET_STEM_WIDTHS = (24, 48, 96)  # the demo classifiers' first three stages


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, maps = self.attn(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), maps["probabilities"]


class VisionTransformer(nn.Module):
    # the same in-model normalisation as the CNNs, so every demo model takes the same input
    INPUT_MEAN = ResNetBackbone.INPUT_MEAN
    INPUT_STD = ResNetBackbone.INPUT_STD

    def __init__(
        self,
        class_names: tuple[str, ...],
        patch: int = 8,
        grid: int = 12,
        dim: int = 96,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        class_token: bool = True,
        stem: str = "patch",
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.patch = patch
        if stem == "patch":
            self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        elif stem == "conv" and patch % 4 == 0:
            # two stride-2 convolutions, then patches of patch / 4 of their features
            self.embed = nn.Sequential(
                conv_bn_relu(3, dim // 4, 3, 2),
                conv_bn_relu(dim // 4, dim // 2, 3, 2),
                nn.Conv2d(dim // 2, dim, patch // 4, stride=patch // 4),
            )
        elif stem == "resnet" and patch == 8:
            self.backbone = ResNetBackbone(widths=RESNET_STEM_WIDTHS, depths=(1, 1, 1))
            self.embed = nn.Conv2d(RESNET_STEM_WIDTHS[-1], dim, 1)
        else:
            raise ValueError(
                f"stem {stem!r} with patch {patch}: use 'patch', 'conv' with a multiple of 4, "
                "or 'resnet' with 8"
            )
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.position = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02)  # patch positions, as a grid
        self.class_position = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(class_names))
        self.output_specs = [
            OutputSpec("logits", PREDICTION),
            OutputSpec("probabilities", PREDICTION),
            OutputSpec("rollout", ROLLOUT, patch, "blocks"),
            *(
                OutputSpec(f"layer{i}_attention", SELF_ATTENTION, patch, f"blocks.{i}.attn")
                for i in range(depth)
            ),
            *(
                OutputSpec(f"layer{i}_heads", SELF_ATTENTION_HEADS, patch, f"blocks.{i}.attn")
                for i in range(depth)
            ),
        ]

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with positions (class token first, when there is one) and the patch grid."""
        if x.shape[2] % self.patch or x.shape[3] % self.patch:
            raise ValueError(f"input {tuple(x.shape[2:])} is not a multiple of the {self.patch}-pixel patch")
        if hasattr(self, "backbone"):  # it normalises its input itself
            patches = self.embed(self.backbone(x)[0][-1])
        else:
            patches = self.embed((x - self.INPUT_MEAN) / self.INPUT_STD)
        grid = (patches.shape[2], patches.shape[3])
        position = self.position
        if tuple(position.shape[2:]) != grid:
            position = F.interpolate(position, size=grid, mode="bilinear", align_corners=False)
        tokens = (patches + position).flatten(2).transpose(1, 2)
        if self.class_token is not None:
            first = (self.class_token + self.class_position).expand(x.shape[0], -1, -1)
            tokens = torch.cat([first, tokens], dim=1)
        return tokens, grid

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens, (gh, gw) = self.tokens(x)
        per_head = []  # each block's N×heads×T×T
        for block in self.blocks:
            tokens, probabilities = block(tokens)
            per_head.append(probabilities)
        layers = [p.mean(dim=1) for p in per_head]  # N×T×T, heads averaged
        tokens = self.norm(tokens)
        pooled = tokens[:, 0] if self.class_token is not None else tokens.mean(dim=1)
        logits = self.head(pooled)
        first = 1 if self.class_token is not None else 0  # patch tokens start here
        n = x.shape[0]
        maps = {
            f"layer{i}_attention": _first_row(a, first)[:, 0, first:].reshape(n, 1, gh, gw)
            for i, a in enumerate(layers)
        }
        for i, p in enumerate(per_head):
            maps[f"layer{i}_heads"] = _first_row(p, first)[..., 0, first:].reshape(n, -1, gh, gw)
        maps["rollout"] = rollout(layers, first).reshape(n, 1, gh, gw)
        return {"logits": logits, "probabilities": torch.softmax(logits, dim=1), **maps}


def _first_row(attention: torch.Tensor, first: int) -> torch.Tensor:
    """…×1×T: the class token's row of a …×T×T attention (without one, the mean of every row)."""
    return attention[..., :1, :] if first else attention.mean(dim=-2, keepdim=True)


def rollout(layers: list[torch.Tensor], first: int) -> torch.Tensor:
    """Attention rollout's class-token row over the patch tokens (the mean row without a class token),
    from each block's head-averaged N×T×T attention, first block first."""
    eye = torch.eye(layers[0].shape[-1], dtype=layers[0].dtype, device=layers[0].device)
    row = None
    for attention in reversed(layers):  # r = row(Â_L), then r Â_(L-1) … Â_1
        mixed = 0.5 * attention + 0.5 * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        row = _first_row(mixed, first) if row is None else row @ mixed
    return row[:, 0, first:]
