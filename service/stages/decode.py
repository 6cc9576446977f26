"""The decode stage: request bytes into RGB images: every common format, EXIF orientation applied and any mode
converted to RGB as the exporter does (attnserve.imaging.upright_rgb), large JPEGs decoded near the
model's size (draft mode), and guards against empty, truncated, unreadable and decompression-bomb
images."""

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnserve.imaging import Placement, upright_rgb
from attnserve.service.errors import ServiceError, invalid
from attnserve.service.messages import ImageInput

EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # rotated by 90°: width and height swap
# the formats docs/service.md promises, as Pillow names them, and as people do
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
NAMES = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF")
JPEG_SIGNATURE = b"\xff\xd8\xff"


@dataclass
class Decoded:
    image: Image.Image  # RGB, possibly reduced by JPEG draft mode
    width: int  # the original's size, upright (after EXIF orientation)
    height: int

    def on_original(self, placement: Placement) -> Placement:
        """``placement`` measured on ``image``, as it applies to the original (draft mode may have
        decoded it smaller)."""
        sx, sy = self.image.width / self.width, self.image.height / self.height
        return Placement(
            placement.scale_x * sx, placement.scale_y * sy, placement.offset_x, placement.offset_y
        )


@dataclass
class Opened:
    """An image of a request opened from its header, not decoded yet: enough to size the request."""

    index: int  # its place in the request, for messages
    image: Image.Image  # opened lazily (JPEG draft mode set), or raw pixels already an image
    width: int  # the original's size, upright (after EXIF orientation)
    height: int
    decoded_pixels: int  # what decoding will produce (after draft mode)
    pending: bool = True  # encoded bytes still to decode; False for raw pixels


def open_image(image: ImageInput, index: int, target: tuple[int, int], max_pixels: int) -> Opened:
    """Request image ``index``, encoded or raw, read as far as its header; ``target`` (H, W): the model's
    input. An encoded image is opened once, here, and ``decode`` finishes the same opened file.

    Only the documented formats' decoders are tried (Pillow knows about 40, some of which call out to
    other programs), and every step from the bytes to upright RGB is guarded: whatever a broken file
    makes Pillow raise (OSError, but also TypeError, struct.error, …) is the caller's INVALID_ARGUMENT
    naming the image, never an internal error."""
    if image.encoded is not None:
        if not image.encoded:
            raise invalid(f"image {index} is empty")
        with _guarded(index, len(image.encoded)):
            im, width, height = _opened(image.encoded, index, target, max_pixels)
        return Opened(index, im, width, height, im.size[0] * im.size[1])
    if image.rgb is not None:
        raw = decode_raw(image.rgb, image.height, image.width, index, max_pixels)
        return Opened(index, raw.image, raw.width, raw.height, raw.width * raw.height, pending=False)
    raise invalid(f"image {index} has neither encoded bytes nor raw pixels")


def opens_without_decoding(image: ImageInput) -> bool:
    """Whether ``open_image`` reads no pixels of ``image``: raw pixels, and a JPEG, whose markers (EXIF
    included) all come before its pixels. Pillow reads a PNG to its end for an EXIF chunk after them."""
    return image.encoded is None or image.encoded[:3] == JPEG_SIGNATURE


def decode(opened: Opened) -> Decoded:
    """The opened image decoded, upright RGB."""
    if not opened.pending:
        return Decoded(opened.image, opened.width, opened.height)
    with _guarded(opened.index, None):
        im = opened.image
        im.seek(0)  # a GIF's first frame
        im.load()
        return Decoded(upright_rgb(im), opened.width, opened.height)


def decode_encoded(data: bytes, index: int, target: tuple[int, int], max_pixels: int) -> Decoded:
    """Encoded bytes opened and decoded in one go; ``target`` (H, W): a JPEG decodes at 1/2, 1/4 or 1/8
    scale when that still covers the model input."""
    return decode(open_image(ImageInput(encoded=data), index, target, max_pixels))


@contextmanager
def _guarded(index: int, size: int | None) -> Iterator[None]:
    """Pillow's warnings silenced, and whatever it raises turned into the caller's error for image
    ``index`` (of ``size`` bytes, when known)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ServiceError:
        raise
    except UnidentifiedImageError:
        given = f" ({size} bytes)" if size is not None else ""
        raise invalid(
            f"image {index}{given} is not an image in a supported format ({', '.join(NAMES)})"
        ) from None
    except Exception as exc:  # a malformed file can make any decoder step raise anything
        kind = type(exc).__qualname__
        if type(exc).__module__ != "builtins":
            kind = f"{type(exc).__module__}.{kind}"
        raise invalid(f"image {index} could not be decoded ({kind}: {str(exc)[:200]})") from None


def _opened(
    data: bytes, index: int, target: tuple[int, int], max_pixels: int
) -> tuple[Image.Image, int, int]:
    """The image opened lazily (header only), the per-image pixel limit checked, a JPEG set to decode
    in draft mode; with the original's upright width and height."""
    # Pillow's own guard, at the server's limit: some decoders allocate a frame while opening (a 43-byte
    # GIF can ask for gigabytes), before the size check below could refuse it; it raises past twice
    # MAX_IMAGE_PIXELS. One value for every thread: the server has one max_pixels.
    Image.MAX_IMAGE_PIXELS = max_pixels // 2
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise invalid(
            f"image {index} (or one of its frames) is over the server's limit of {max_pixels} pixels; "
            "send a smaller image"
        ) from None
    width, height = im.size
    if width * height > max_pixels:
        raise invalid(
            f"image {index} is {width}×{height} = {width * height} pixels, over the server's "
            f"limit of {max_pixels}; send a smaller image"
        )
    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    if orientation in TRANSPOSING_ORIENTATIONS and im.format != "TIFF":  # Pillow's TIFF is upright already
        width, height = height, width
    if im.format == "JPEG":
        th, tw = target if orientation not in TRANSPOSING_ORIENTATIONS else target[::-1]
        im.draft("RGB", (tw, th))  # decodes at the smallest scale still at least this size
    return im, width, height


def decode_raw(rgb: bytes, height: int, width: int, index: int, max_pixels: int) -> Decoded:
    if height <= 0 or width <= 0:
        raise invalid(f"raw image {index} has shape {height}×{width}; both must be positive")
    if height * width > max_pixels:
        raise invalid(
            f"raw image {index} has {height * width} pixels, over the server's limit of {max_pixels}"
        )
    if len(rgb) != height * width * 3:
        raise invalid(
            f"raw image {index}: {height}×{width}×3 RGB needs {height * width * 3} bytes, got {len(rgb)}"
        )
    return Decoded(Image.fromarray(np.frombuffer(rgb, np.uint8).reshape(height, width, 3)), width, height)
