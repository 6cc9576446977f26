"""Factory mapping an attention name to its module, so a block takes the kind as a parameter."""

from torch import nn

from attnserve.models.attention.cbam import CBAM
from attnserve.models.attention.coord import CoordAttention
from attnserve.models.attention.eca import ECA
from attnserve.models.attention.harnet import DilatedSpatialAttention
from attnserve.models.attention.se import SqueezeExcite
from attnserve.models.attention.spatial import SpatialAttention

ATTENTION_KINDS: dict[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "eca": ECA,
    "cbam": CBAM,
    "spatial": SpatialAttention,
    "coord": CoordAttention,
    "dilated_spatial": DilatedSpatialAttention,
}


def create_attn(kind: str | None, channels: int, **kwargs) -> nn.Module | None:
    """Build the attention module ``kind`` for ``channels`` channels; ``None`` or ``"none"`` gives None."""
    if kind is None or kind == "none":
        return None
    try:
        cls = ATTENTION_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown attention kind {kind!r}; choose from {sorted(ATTENTION_KINDS)}") from None
    return cls(channels, **kwargs)
