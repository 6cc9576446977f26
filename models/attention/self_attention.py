"""Multi-head self-attention (Vaswani et al., "Attention Is All You Need", NeurIPS 2017,
arXiv:1706.03762), as ViT uses it over image patches (Dosovitskiy et al., ICLR 2021, arXiv:2010.11929).

q, k, v = split(W_qkv x) into ``heads`` heads of C / heads;  A = softmax(q kᵀ / sqrt(C / heads));
y = W_o concat_heads(A v).

It takes tokens (N×T×C), not feature maps, and returns the probabilities A (N×heads×T×T) as its map:
the softmax is written out, never fused (``F.scaled_dot_product_attention`` hides A from the graph),
so A is a tensor of the exported graph that a model can turn into maps on its patch grid.
"""

import torch
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    # token-to-token probabilities, N×heads×T×T (rows sum to 1): a model maps them onto its patch grid
    MAP_KINDS = {"probabilities": "token_attention"}

    def __init__(self, channels: int, heads: int = 4, qkv_bias: bool = True) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(n, t, c)
        return self.proj(y), {"probabilities": attn}
