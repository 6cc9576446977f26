"""Vision transformers as users write them, attention in the styles public code uses (not ours): the
exporter has to find their self-attention without any help. ``build`` is a --factory target.

Attention styles:
- ``timm``: ``(q @ k.transpose(-2, -1)) * scale``, ``.softmax(dim=-1)``, heads as N×h×T×d (timm's
  ``Attention``);
- ``rearranged``: heads folded into the batch, ``bmm`` over (N·h)×T×d (code written with
  ``einops.rearrange('b n (h d) -> (b h) n d')``);
- ``heads_last``: ``einsum('bqhd,bkhd->bqkh')`` with the softmax over axis 2;
- ``sdpa``: ``F.scaled_dot_product_attention`` (fused: no probabilities anywhere);
- ``mha``: ``nn.MultiheadAttention(batch_first=True)`` called as ``attn(x, x, x)[0]``;
- ``mha_seq_first``: ``nn.MultiheadAttention()`` on T×N×C tokens with ``need_weights=False``.

Token layouts: ``cls`` (ViT), ``cls_dist`` (DeiT's class and distillation tokens), ``registers``
(a class token and four registers, Darcet et al. 2024), ``none`` (mean-pooled patches).

Each attention module keeps, while ``keep`` is set, its probabilities (N×heads×T×T) computed the plain
way beside its forward, so tests can check the exported maps against them.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

LEADING = {"cls": 1, "cls_dist": 2, "registers": 5, "none": 0}


class TimmAttention(nn.Module):
    def __init__(self, dim, num_heads=4):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.keep = None

    def qkv_heads(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        if self.keep is not None:
            self.keep.append(attn)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class SdpaAttention(TimmAttention):
    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x)
        if self.keep is not None:
            self.keep.append(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class RearrangedAttention(TimmAttention):
    def forward(self, x):
        B, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        q, k, v = (
            t.reshape(B, N, h, d).transpose(1, 2).reshape(B * h, N, d) for t in self.qkv(x).chunk(3, -1)
        )
        attn = torch.bmm(q, k.transpose(1, 2)) * self.scale
        attn = F.softmax(attn, dim=-1)
        if self.keep is not None:
            self.keep.append(attn.reshape(B, h, N, N))
        out = torch.bmm(attn, v).reshape(B, h, N, d).transpose(1, 2).reshape(B, N, C)
        return self.proj(out)


class HeadsLastAttention(TimmAttention):
    def forward(self, x):
        B, N, C = x.shape
        h = self.num_heads
        q, k, v = (t.reshape(B, N, h, C // h) for t in self.qkv(x).chunk(3, -1))
        attn = torch.einsum("bqhd,bkhd->bqkh", q, k) * self.scale
        attn = attn.softmax(dim=2)
        if self.keep is not None:
            self.keep.append(attn.permute(0, 3, 1, 2))
        out = torch.einsum("bqkh,bkhd->bqhd", attn, v).reshape(B, N, C)
        return self.proj(out)


class MHABlockAttention(nn.Module):
    """nn.MultiheadAttention, the two ways public code calls it."""

    def __init__(self, dim, num_heads=4, seq_first=False):
        super().__init__()
        self.seq_first = seq_first
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=not seq_first)
        self.keep = None

    def forward(self, x):
        t = x.transpose(0, 1) if self.seq_first else x
        if self.keep is not None:
            self.keep.append(self.attn(t, t, t, need_weights=True, average_attn_weights=False)[1])
        if self.seq_first:
            return self.attn(t, t, t, need_weights=False)[0].transpose(0, 1)
        return self.attn(x, x, x)[0]


ATTENTION = {
    "timm": TimmAttention,
    "sdpa": SdpaAttention,
    "rearranged": RearrangedAttention,
    "heads_last": HeadsLastAttention,
    "mha": MHABlockAttention,
    "mha_seq_first": lambda dim, num_heads: MHABlockAttention(dim, num_heads, seq_first=True),
}


class Block(nn.Module):
    def __init__(self, dim, num_heads, attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ATTENTION[attention](dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self, attention="timm", tokens="cls", img_size=48, patch_size=8, dim=32, depth=3, num_classes=5
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.num_prefix_tokens = LEADING[tokens]
        self.prefix = nn.Parameter(torch.randn(1, self.num_prefix_tokens, dim) * 0.5)
        num_patches = (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches, dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(dim, 4, attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0] if self.num_prefix_tokens else x.mean(dim=1))

    def probabilities(self, images):
        """Each block's attention probabilities, N×heads×T×T, computed the plain way."""
        kept = []
        for block in self.blocks:
            block.attn.keep = kept
        with torch.no_grad():
            self(images)
        for block in self.blocks:
            block.attn.keep = None
        return kept


def build(attention: str = "timm", tokens: str = "cls", img_size: int = 48, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ViT(attention, tokens, img_size).eval()
