"""Fitting images to a model's input and mapping boxes back to the original image."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from attnserve.imaging import CENTER_CROP, LETTERBOX, LETTERBOX_FILL, RESIZE, fit, to_input


def image_with_square(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    im = Image.new("RGB", (w, h), (0, 0, 0))
    ImageDraw.Draw(im).rectangle(box, fill=(255, 255, 255))
    return im


def bright_box(im: Image.Image) -> np.ndarray:
    ys, xs = np.nonzero(np.asarray(im)[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("policy", [RESIZE, CENTER_CROP, LETTERBOX])
def test_boxes_map_back_to_the_original_image(policy):
    original = (120, 60, 200, 140)  # x1, y1, x2, y2 (inclusive corner) in a 320×200 image
    im = image_with_square(320, 200, original)
    fitted, placement = fit(im, 96, 128, policy)
    assert fitted.size == (128, 96)
    back = placement.boxes_to_original(bright_box(fitted))
    np.testing.assert_allclose(back, [120, 60, 201, 141], atol=3.0)  # a few pixels of resampling blur


def test_letterbox_keeps_the_aspect_ratio_and_pads_grey():
    fitted, placement = fit(Image.new("RGB", (200, 100), (255, 0, 0)), 64, 64, LETTERBOX)
    assert placement.scale_x == placement.scale_y == 64 / 200
    pixels = np.asarray(fitted)
    assert tuple(pixels[0, 0]) == LETTERBOX_FILL and tuple(pixels[32, 32]) == (255, 0, 0)
    assert placement.offset_y == 16 and placement.offset_x == 0


def test_center_crop_covers_the_input():
    fitted, placement = fit(Image.new("RGB", (300, 100), (0, 255, 0)), 50, 50, CENTER_CROP)
    assert (np.asarray(fitted) == (0, 255, 0)).all()
    assert placement.scale_x == pytest.approx(0.5) and placement.offset_x == -50


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown resize policy 'stretch'"):
        fit(Image.new("RGB", (8, 8)), 4, 4, "stretch")


def test_to_input_is_nchw_float_in_unit_range():
    batch = to_input([Image.new("RGB", (4, 2), (255, 0, 51))])
    assert batch.shape == (1, 3, 2, 4) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, :, 0, 0], [1.0, 0.0, 0.2])
