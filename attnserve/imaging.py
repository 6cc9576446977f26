"""A decoded image made upright 8-bit RGB, fitted to a model's input size, and model coordinates mapped
back to the image.

The exporter (calibration and test images) and the server (every request) both convert and fit images
here, so a model is verified on exactly the pixels it will be served.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

RESIZE = "resize"  # stretch to the input size (aspect ratio not kept)
CENTER_CROP = "center_crop"  # scale the shorter side to cover the input, crop the centre
LETTERBOX = "letterbox"  # scale the longer side to fit, pad the rest with grey
RESIZE_POLICIES = (RESIZE, CENTER_CROP, LETTERBOX)
LETTERBOX_FILL = (114, 114, 114)


def upright_rgb(im: Image.Image) -> Image.Image:
    """A decoded image as the models see it: EXIF orientation applied, then ``to_rgb``."""
    return to_rgb(ImageOps.exif_transpose(im))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16-bit and 32-bit greyscale scaled down, transparency over white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


@dataclass(frozen=True)
class Placement:
    """Where the original image lies in the model input: ``input = original * scale + offset``."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """x1, y1, x2, y2 in input pixels → original-image pixels."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[..., 0::2] = (out[..., 0::2] - self.offset_x) / self.scale_x
        out[..., 1::2] = (out[..., 1::2] - self.offset_y) / self.scale_y
        return out


def fit(image: Image.Image, height: int, width: int, policy: str) -> tuple[Image.Image, Placement]:
    """``image`` (RGB) fitted to ``width``×``height`` by ``policy``, and where the original lies in it."""
    w, h = image.size
    if policy == RESIZE:
        sx, sy = width / w, height / h
        return image.resize((width, height), Image.Resampling.BILINEAR), Placement(sx, sy, 0.0, 0.0)
    if policy == CENTER_CROP:
        scale = max(width / w, height / h)
        new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
        left, top = (new_w - width) // 2, (new_h - height) // 2
        sx, sy = new_w / w, new_h / h
        # only the part kept is resampled: resizing the whole of a 1×150000 image first takes gigabytes
        box = (left / sx, top / sy, (left + width) / sx, (top + height) / sy)
        cropped = image.resize((width, height), Image.Resampling.BILINEAR, box=box)
        return cropped, Placement(sx, sy, -left, -top)
    if policy == LETTERBOX:
        scale = min(width / w, height / h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        left, top = (width - new_w) // 2, (height - new_h) // 2
        canvas = Image.new("RGB", (width, height), LETTERBOX_FILL)
        canvas.paste(image.resize((new_w, new_h), Image.Resampling.BILINEAR), (left, top))
        return canvas, Placement(new_w / w, new_h / h, left, top)
    raise ValueError(f"unknown resize policy {policy!r}; choose from {', '.join(RESIZE_POLICIES)}")


def to_input(images: list[Image.Image] | np.ndarray) -> np.ndarray:
    """Fitted RGB images (or an N×H×W×3 uint8 array) → the models' N×3×H×W float32 input in [0, 1]."""
    batch = (
        np.stack([np.asarray(im, dtype=np.uint8) for im in images]) if isinstance(images, list) else images
    )
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
