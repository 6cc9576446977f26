"""Request bytes to RGB images: draft-mode JPEG decoding, the pixel guard, and mode conversion."""

import io

import numpy as np
import pytest
from attnserve.service.decoding import decode_encoded, decode_raw, to_rgb
from attnserve.service.errors import ServiceError
from PIL import Image


def encoded(im: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_a_large_jpeg_decodes_near_the_model_size_and_keeps_its_true_size():
    data = encoded(Image.new("RGB", (4000, 3000), (10, 200, 30)), "JPEG")
    decoded = decode_encoded(data, 0, (96, 96), max_pixels=50_000_000)
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.image.size == (500, 375)  # 1/8 scale: still covers 96×96
    assert decoded.image.getpixel((10, 10))[1] > 150


def test_pixel_guard_reads_the_header_only():
    data = encoded(Image.new("L", (3000, 3000)))
    with pytest.raises(ServiceError, match="9000000 pixels, over the server's limit of 4000000"):
        decode_encoded(data, 0, (96, 96), max_pixels=4_000_000)


def test_sixteen_bit_and_transparent_images_become_sensible_rgb():
    sixteen = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (255, 255, 255)
    half = Image.fromarray(np.full((4, 4), 32896, np.uint16))
    assert to_rgb(half).getpixel((0, 0)) == (128, 128, 128)
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # over white, not black


def test_raw_pixels_are_checked_against_their_shape():
    decoded = decode_raw(bytes(range(12)), 2, 2, 0, max_pixels=100)
    assert decoded.image.size == (2, 2) and decoded.image.getpixel((1, 0)) == (3, 4, 5)
    with pytest.raises(ServiceError, match="both must be positive"):
        decode_raw(b"", 0, 5, 0, max_pixels=100)
