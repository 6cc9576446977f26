"""The attention-map vocabulary every layer speaks: the kinds of map a manifest lists (the exporter
writes them, the server encodes by them, a client selects by them), how a response encodes a map, and
in which geometry. On the wire (attnserve.v1's MapEncoding and MapGeometry) each encoding and geometry
is the enum value of the same name in upper case after its prefix: ``png_overlay`` is
``MAP_ENCODING_PNG_OVERLAY``.
"""

# kinds, by shape at batch N
SPATIAL = "spatial"  # N×1×H×W, in [0, 1]
CHANNEL = "channel"  # N×C, in [0, 1]
CAM = "cam"  # N×classes×H×W, a class activation map, unnormalised
FULL = "full"  # N×C×H×W, a gate on every channel and position (BAM, SimAM)
AXIS_H = "axis_h"  # N×C×H×1: coordinate attention's height gate; triplet attention's height×channel plane
AXIS_W = "axis_w"  # N×C×1×W: coordinate attention's width gate; triplet attention's channel×width plane
SELF_ATTENTION = (
    "self_attention"  # N×1×H×W: a block's class-token attention on the patch grid, heads averaged
)
SELF_ATTENTION_HEADS = "self_attention_heads"  # N×heads×H×W: the same, one plane per head
ROLLOUT = "rollout"  # N×1×H×W: attention rollout over every block (Abnar & Zuidema 2020)
MAP_KINDS = (SPATIAL, CHANNEL, CAM, FULL, AXIS_H, AXIS_W, SELF_ATTENTION, SELF_ATTENTION_HEADS, ROLLOUT)

# encodings: float16 tensor bytes; an 8-bit grayscale PNG of the map scaled to its own range; a colour
# PNG of that heatmap blended over the image
FLOAT16, PNG_HEATMAP, PNG_OVERLAY = "float16", "png_heatmap", "png_overlay"
ENCODINGS = (FLOAT16, PNG_HEATMAP, PNG_OVERLAY)
# geometries: the model's own grid, or resampled onto the original image (letterbox or crop undone)
MODEL_GRID, ORIGINAL_IMAGE = "model_grid", "original_image"
GEOMETRIES = (MODEL_GRID, ORIGINAL_IMAGE)

ALL = "all"  # the selector for every map a model has
