"""The encode stage: which attention maps a request selects, and how each is encoded for the response.

Encodings: float16 tensor bytes; an 8-bit grayscale PNG heatmap (the map scaled to its own min..max);
a colour PNG overlay of the heatmap on the image. Geometry: the model's grid, or resampled onto the
original image with the letterbox / crop undone. Channel maps have no geometry and are always float16.
In PNG encodings a CAM is its top class's plane, per-head self-attention the mean of its heads, and a
full or axis gate its channel mean; in the original geometry as float16, a CAM and per-head
self-attention keep every plane (each class, each head), the others are reduced as in PNG.
"""

import io

import numpy as np
from PIL import Image

from attnserve.manifest import AttentionOutput, Manifest
from attnserve.maps import (
    ALL,
    CAM,
    CHANNEL,
    FLOAT16,
    MAP_KINDS,
    MODEL_GRID,
    ORIGINAL_IMAGE,
    PNG_HEATMAP,
    ROLLOUT,
    SELF_ATTENTION,
    SELF_ATTENTION_HEADS,
    SPATIAL,
)
from attnserve.service.errors import invalid
from attnserve.service.messages import EncodedMap
from attnserve.service.stages.fit import ImageView

OVERLAY_OPACITY = 0.5
# a perceptually ordered blue → cyan → yellow → red ramp, so a person can read the overlay
_RAMP = np.array(
    [[0, 0, 130], [0, 90, 255], [0, 220, 220], [250, 230, 0], [255, 70, 0], [160, 0, 0]], np.float32
)


def select(manifest: Manifest, selectors: list[str]) -> list[AttentionOutput]:
    """The attention outputs named by ``selectors`` (names, kinds or "all"), each once, in manifest order."""
    chosen: set[str] = set()
    for selector in selectors:
        if selector == ALL:
            matched = manifest.attention
        elif selector in MAP_KINDS:
            matched = [a for a in manifest.attention if a.kind == selector]
        else:
            matched = [a for a in manifest.attention if a.name == selector]
        if not matched:
            names = ", ".join(a.name for a in manifest.attention) or "none"
            raise invalid(
                f"model {manifest.name!r} has no attention map {selector!r}; select by name ({names}), by "
                f"kind ({', '.join(sorted({a.kind for a in manifest.attention})) or 'none'}) or 'all'"
            )
        chosen.update(a.name for a in matched)
    return [a for a in manifest.attention if a.name in chosen]


def original_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size of a map in original-image geometry: the original's, scaled down (aspect kept) so its
    longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def response_bytes(
    selected: list[AttentionOutput],
    encoding: str,
    geometry: str,
    input_size: tuple[int, int],
    original: tuple[int, int],
    max_side: int,
) -> int:
    """What ``encode`` will produce for one image of ``original`` (W, H), from shapes alone: exact for
    float16, the raw pixels (an upper bound) for PNG."""
    w, h = original_size(*original, max_side) if geometry == ORIGINAL_IMAGE else input_size[::-1]
    total = 0
    for output in selected:
        planes = output.shape[1] if output.kind in (CAM, SELF_ATTENTION_HEADS) else 1
        if output.kind == CHANNEL or (encoding == FLOAT16 and geometry == MODEL_GRID):
            total += 2 * int(np.prod(output.shape[1:]))
        elif encoding == FLOAT16:
            total += 2 * planes * w * h
        else:
            grid = (
                (output.grid or output.shape[2:])
                if geometry == MODEL_GRID and encoding == PNG_HEATMAP
                else (h, w)
            )
            total += int(np.prod(grid)) * (1 if encoding == PNG_HEATMAP else 3)
    return total


def encode(
    output: AttentionOutput,
    value: np.ndarray,
    encoding: str,
    geometry: str,
    view: ImageView,
    top_class: int,
    max_side: int,
) -> EncodedMap:
    """``value``: one image's map without the batch axis, as the graph computes it; in original-image
    geometry at most ``max_side`` on its longer side."""
    if output.kind == CHANNEL:
        return _encoded(output, value.astype("<f2"), FLOAT16, MODEL_GRID)
    if encoding == FLOAT16 and geometry == MODEL_GRID:
        return _encoded(output, value.astype("<f2"), FLOAT16, MODEL_GRID)
    planes = _planes(output.kind, value, top_class, every_plane=encoding == FLOAT16)
    size = original_size(view.width, view.height, max_side)
    if geometry == ORIGINAL_IMAGE:
        planes = np.stack([_onto_original(p, view, size) for p in planes])
    if encoding == FLOAT16:
        return _encoded(output, planes.astype("<f2"), FLOAT16, geometry)
    heat = _normalized(planes[0])
    if encoding == PNG_HEATMAP:
        image = Image.fromarray((heat * 255 + 0.5).astype(np.uint8), mode="L")
    else:
        background = view.fitted if geometry == MODEL_GRID else view.original.resize(size)
        image = overlay(background, heat)
    return EncodedMap(
        output.name, output.kind, output.source, [image.height, image.width], encoding, geometry, _png(image)
    )


def overlay(background: Image.Image, heat: np.ndarray) -> Image.Image:
    """``heat`` (values in [0, 1], any size) coloured and blended over ``background``."""
    resized = np.asarray(
        Image.fromarray(heat.astype(np.float32), mode="F").resize(background.size, Image.Resampling.BILINEAR)
    )
    position = np.clip(resized, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    colours = _RAMP[low] + (_RAMP[low + 1] - _RAMP[low]) * (position - low)[..., None]
    blended = np.asarray(background, np.float32) * (1 - OVERLAY_OPACITY) + colours * OVERLAY_OPACITY
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8), mode="RGB")


def _planes(kind: str, value: np.ndarray, top_class: int, every_plane: bool) -> np.ndarray:
    if kind == CAM:
        return (
            value.astype(np.float32) if every_plane else value[top_class : top_class + 1].astype(np.float32)
        )
    if kind in (SPATIAL, SELF_ATTENTION, ROLLOUT) or (every_plane and kind == SELF_ATTENTION_HEADS):
        return value.astype(np.float32)
    # full, axis_h, axis_w: the channel mean; self_attention_heads: the mean of the heads
    return value.mean(axis=0, keepdims=True, dtype=np.float32)


def _onto_original(plane: np.ndarray, view: ImageView, size: tuple[int, int]) -> np.ndarray:
    """Resample a grid plane onto the original image, drawn at ``size`` (W, H): each pixel reads the grid
    where the model saw it (grid cell = input pixels × grid / input size)."""
    grid_h, grid_w = plane.shape
    input_h, input_w = view.fitted.height, view.fitted.width
    p = view.placement
    x0, x1 = p.offset_x * grid_w / input_w, (view.width * p.scale_x + p.offset_x) * grid_w / input_w
    y0, y1 = p.offset_y * grid_h / input_h, (view.height * p.scale_y + p.offset_y) * grid_h / input_h
    image = Image.fromarray(plane.astype(np.float32), mode="F")
    resampled = image.transform(size, Image.Transform.EXTENT, (x0, y0, x1, y1), Image.Resampling.BILINEAR)
    return np.asarray(resampled, np.float32)


def _normalized(plane: np.ndarray) -> np.ndarray:
    low, high = float(plane.min()), float(plane.max())
    return (plane - low) / (high - low) if high > low else np.zeros_like(plane)


def _encoded(output: AttentionOutput, tensor: np.ndarray, encoding: str, geometry: str) -> EncodedMap:
    return EncodedMap(
        output.name, output.kind, output.source, list(tensor.shape), encoding, geometry, tensor.tobytes()
    )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: maps are small and latency matters
    return buffer.getvalue()
