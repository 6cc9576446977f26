"""Attention modules, one file per family, all built as ``Module(channels, **kwargs)``.

Every module's ``forward(x)`` returns ``(y, maps)``: the attended features and a dict of the
attention maps it computed, keyed by map name. ``MAP_KINDS`` on each class tells what each map is:
``"channel"`` (N×C) or ``"spatial"`` (N×1×H×W at the input's resolution).
"""

from attnserve.models.attention.cbam import CBAM
from attnserve.models.attention.coord import CoordAttention
from attnserve.models.attention.create import ATTENTION_KINDS, create_attn
from attnserve.models.attention.eca import ECA
from attnserve.models.attention.harnet import CrossLevelChannelAttention, DilatedSpatialAttention
from attnserve.models.attention.se import SqueezeExcite
from attnserve.models.attention.self_attention import MultiHeadSelfAttention
from attnserve.models.attention.spatial import SpatialAttention

__all__ = [
    "ATTENTION_KINDS",
    "CBAM",
    "ECA",
    "CoordAttention",
    "CrossLevelChannelAttention",
    "DilatedSpatialAttention",
    "MultiHeadSelfAttention",
    "SpatialAttention",
    "SqueezeExcite",
    "create_attn",
]
