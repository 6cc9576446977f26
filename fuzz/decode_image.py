"""Harness 1: request image bytes along the path an image takes through the data plane.

First the decode and fit stages themselves (service/stages/fit.py ``prepare``: open_image with the
model's input size and the pixel limit, the request's budgets from the headers, decode, fit by the
model's resize policy), with what their results promise checked: the batch tensor's shape and range,
and the original's upright size against the decoded image (equal, or a JPEG draft-mode reduction of
it). Then the whole request as a Classify or Detect call asking for every map in the original
geometry: the model, postprocess, and each map drawn onto the original.

Which tiny model (resize, center_crop or letterbox) and which map encoding an input gets depends on
its length only, so a corpus file always runs the same way."""

import numpy as np

from attnserve.manifest import CLASSIFICATION, DETECTION
from attnserve.maps import ALL, FLOAT16, ORIGINAL_IMAGE, PNG_OVERLAY
from attnserve.service.errors import ServiceError
from attnserve.service.messages import ImageInput, MapRequest, PredictRequest
from attnserve.service.stages.decode import Opened
from attnserve.service.stages.encode import select
from attnserve.service.stages.fit import ImageView, prepare
from fuzz.plane import plane
from fuzz.tiny_models import CLASSIFIER, DETECTOR

# (task, model, version): resize, center_crop, letterbox; × the two map encodings
ROUTES = [
    (task, model, version, encoding)
    for encoding in (PNG_OVERLAY, FLOAT16)
    for task, model, version in (
        (CLASSIFICATION, CLASSIFIER, 1),
        (CLASSIFICATION, CLASSIFIER, 2),
        (DETECTION, DETECTOR, 1),
    )
]
DRAFT_SCALES = (1, 2, 4, 8)  # JPEG draft mode decodes at 1/scale, rounding up


def check(data: bytes) -> None:
    """Raises only for a bug: anything but ServiceError, or a result that breaks the contract."""
    p = plane()
    task, model, version, encoding = ROUTES[len(data) % len(ROUTES)]
    maps = MapRequest([ALL], encoding, ORIGINAL_IMAGE)
    manifest = p.dataplane.registry.get(model, version).manifest
    spec = manifest.input
    selected = select(manifest, maps.select)

    def budgets(headers: list[Opened]) -> None:
        p.dataplane._check_budgets(headers, manifest, selected, maps)

    try:
        prepared = prepare([ImageInput(encoded=data)], spec, p.dataplane.settings.max_image_pixels, budgets)
    except ServiceError:
        return
    if prepared.batch.shape != (1, 3, spec.height, spec.width) or prepared.batch.dtype != np.float32:
        raise AssertionError(f"batch of {prepared.batch.shape} {prepared.batch.dtype} for {spec}")
    if not (np.isfinite(prepared.batch).all() and 0 <= prepared.batch.min() <= prepared.batch.max() <= 1):
        raise AssertionError("batch values outside [0, 1]")
    _check_view(prepared.views[0])

    request = PredictRequest(task, model, version, [ImageInput(encoded=data)], maps)
    try:
        prediction = p.run(p.dataplane.predict(request, lambda prediction: prediction))
    except ServiceError:
        return
    finally:
        p.check_idle()
    (result,) = prediction.results
    view = prepared.views[0]
    if (result.width, result.height) != (view.width, view.height) or len(result.maps) != len(selected):
        raise AssertionError("the request's result differs from its decoded view")


def _check_view(view: ImageView) -> None:
    w, h = view.width, view.height
    iw, ih = view.original.size
    if view.original.mode != "RGB" or w < 1 or h < 1:
        raise AssertionError(f"decoded {view.original.mode} image, original {w}×{h}")
    if not any((iw, ih) == (-(-w // s), -(-h // s)) for s in DRAFT_SCALES):
        raise AssertionError(
            f"the original is reported as {w}×{h} (upright), but decodes upright to {iw}×{ih}: "
            "image_size, boxes and maps in the original geometry are computed for the wrong size"
        )
    p = view.placement
    if not all(np.isfinite([p.scale_x, p.scale_y, p.offset_x, p.offset_y])) or min(p.scale_x, p.scale_y) <= 0:
        raise AssertionError(f"placement {p}")
