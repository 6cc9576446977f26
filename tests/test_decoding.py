"""Request bytes to RGB images: draft-mode JPEG decoding, the pixel guard, mode conversion, and the same
pixels from the exporter's image folders."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnserve.export.samples import folder_images
from attnserve.imaging import RESIZE, fit, to_input, to_rgb
from attnserve.service.errors import ServiceError
from attnserve.service.messages import ImageInput
from attnserve.service.stages.decode import decode, decode_encoded, decode_raw, open_image


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
    with pytest.raises(ServiceError, match="over the server's limit of 4000000 pixels"):
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


def test_the_exporter_reads_a_calibration_image_as_the_server_decodes_a_request(tmp_path):
    """A model is calibrated and verified on the pixels it will be served: a transparent PNG (over
    white, not its hidden colour) and an EXIF-rotated JPEG (upright) give the exporter's image folder
    and the server's decoder the same model input, bit for bit."""
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200  # red where transparent: dropping alpha would show it
    rgba[10:30, 20:40] = (0, 90, 255, 255)
    rotated = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    files = {"a.png": encoded(Image.fromarray(rgba, "RGBA")), "b.jpg": encoded(rotated, "JPEG", exif=exif)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    exported = folder_images(tmp_path, (32, 32), RESIZE, limit=10)
    for i, data in enumerate(files.values()):
        served = to_input([fit(decode_encoded(data, 0, (32, 32), 10**7).image, 32, 32, RESIZE)[0]])
        np.testing.assert_array_equal(exported[i : i + 1], served)
    assert exported[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # the transparent corner is white
    assert decode_encoded(files["b.jpg"], 0, (32, 32), 10**7).image.size == (30, 50)  # upright


@pytest.mark.parametrize("path", sorted((Path(__file__).parent / "data" / "malformed").glob("*")), ids=str)
def test_malformed_files_are_the_callers_error_whatever_pillow_raises(path):
    """Found by mutating small valid files: Pillow raised struct.error and TypeError from EXIF
    handling, outside its OSError family; both name the image and stay INVALID_ARGUMENT."""
    with pytest.raises(ServiceError, match=r"image 3 could not be decoded \(") as err:
        decode_encoded(path.read_bytes(), 3, (96, 96), max_pixels=10**7)
    assert err.value.code.name == "INVALID_ARGUMENT"


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "PCX", "ICO"])
def test_formats_beyond_the_documented_ones_are_not_tried(fmt):
    """Pillow opens these; the server does not (docs/service.md lists what it takes)."""
    with pytest.raises(ServiceError, match="not an image in a supported format"):
        decode_encoded(encoded(Image.new("RGB", (8, 8), (1, 2, 3)), fmt), 0, (96, 96), max_pixels=10**7)


def test_opening_reads_the_size_and_the_pixels_after_draft_mode_from_the_header():
    """What the per-request budgets add up, before any decoding: a 4000×3000 JPEG for a 96 px model
    will decode at 1/8; the same opened file is what decoding finishes."""
    jpeg = open_image(ImageInput(encoded=encoded(Image.new("RGB", (4000, 3000)), "JPEG")), 0, (96, 96), 10**8)
    assert (jpeg.width, jpeg.height, jpeg.decoded_pixels) == (4000, 3000, 500 * 375)
    assert decode(jpeg).image.size == (500, 375)
    gif = open_image(ImageInput(encoded=encoded(Image.new("P", (3000, 2000)), "GIF")), 0, (96, 96), 10**8)
    assert (gif.width, gif.height, gif.decoded_pixels) == (3000, 2000, 6_000_000)
    with pytest.raises(ServiceError, match="image 2 \\(4 bytes\\) is not an image in a supported format"):
        open_image(ImageInput(encoded=b"junk"), 2, (96, 96), 10**8)
