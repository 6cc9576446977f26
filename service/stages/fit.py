"""The fit stage: each decoded image of a request fitted to the model's input (attnserve.imaging, as the
exporter fits its images), stacked into the batch tensor, with the view its maps are drawn onto."""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from attnserve.imaging import Placement, fit, to_input
from attnserve.manifest import InputSpec
from attnserve.service.messages import ImageInput
from attnserve.service.stages.decode import Opened, decode, open_image


@dataclass
class ImageView:
    """What the maps of one image are drawn onto."""

    fitted: Image.Image  # the model input (RGB, the model's size)
    original: Image.Image  # the decoded image (RGB; may be smaller than the original after JPEG draft)
    width: int  # the original's size
    height: int
    placement: Placement  # original pixels → model-input pixels


@dataclass
class Prepared:
    batch: np.ndarray  # N×3×H×W float32 in [0, 1]
    views: list[ImageView]
    decode_seconds: float
    preprocess_seconds: float


def prepare(
    images: list[ImageInput],
    spec: InputSpec,
    max_pixels: int,
    before_decoding: Callable[[list[Opened]], None] = lambda opened: None,
) -> Prepared:
    """Decode and fit every image; the two stages timed apart. Every image is opened (its header read)
    first, and ``before_decoding`` sees them all (the request's budgets: service/dataplane.py) and may
    refuse the request before any pixel is decoded."""
    opened, open_seconds = open_images(images, spec, max_pixels)
    before_decoding(opened)
    return decode_and_fit(opened, spec, open_seconds)


def open_images(images: list[ImageInput], spec: InputSpec, max_pixels: int) -> tuple[list[Opened], float]:
    """Every image opened as far as its header, and the seconds that took (counted as decoding)."""
    t0 = time.perf_counter()
    opened = [open_image(image, i, (spec.height, spec.width), max_pixels) for i, image in enumerate(images)]
    return opened, time.perf_counter() - t0


def decode_and_fit(opened: list[Opened], spec: InputSpec, open_seconds: float = 0.0) -> Prepared:
    decode_seconds, preprocess_seconds = open_seconds, 0.0
    fitted, views = [], []
    for image in opened:
        t0 = time.perf_counter()
        decoded = decode(image)
        t1 = time.perf_counter()
        model_input, placement = fit(decoded.image, spec.height, spec.width, spec.resize)
        fitted.append(model_input)
        on_original = decoded.on_original(placement)
        views.append(ImageView(model_input, decoded.image, decoded.width, decoded.height, on_original))
        decode_seconds += t1 - t0
        preprocess_seconds += time.perf_counter() - t1
    t2 = time.perf_counter()
    batch = to_input(fitted)
    return Prepared(batch, views, decode_seconds, preprocess_seconds + time.perf_counter() - t2)
