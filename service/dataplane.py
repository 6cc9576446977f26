"""The data plane: what every front-end (our vision API, and later the Open Inference Protocol) calls.

decode → preprocess (fit to the model's input) → queue and batched inference → postprocess → encode
maps; each stage timed for the response and the stage histograms. Decoding, fitting and PNG encoding
run on a thread pool, off the event loop.
"""

import asyncio
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np

from attnserve.imaging import Placement, fit, to_input
from attnserve.manifest import CLASSIFICATION, DETECTION, Manifest
from attnserve.maps import FLOAT16, MODEL_GRID
from attnserve.service.decoding import Decoded, decode_encoded, decode_raw
from attnserve.service.errors import ServiceError, invalid
from attnserve.service.maps import EncodedMap, ImageView, encode, select
from attnserve.service.metrics import Metrics
from attnserve.service.readiness import Readiness
from attnserve.service.registry import ModelRegistry
from attnserve.service.settings import Settings

DEFAULT_TOP_K = 5
DEFAULT_DETECTION_THRESHOLD = 0.3


@dataclass
class ImageInput:
    encoded: bytes | None = None  # or raw RGB:
    rgb: bytes | None = None
    height: int = 0
    width: int = 0


@dataclass
class MapRequest:
    select: list[str] = field(default_factory=list)
    encoding: str = FLOAT16
    geometry: str = MODEL_GRID


@dataclass
class ScoredLabel:
    class_id: int
    label: str
    score: float


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels
    class_id: int
    label: str
    score: float


@dataclass
class ImageResult:
    width: int
    height: int
    labels: list[ScoredLabel] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    maps: list[EncodedMap] = field(default_factory=list)


@dataclass
class Prediction:
    model: str
    version: int
    results: list[ImageResult]
    timing: dict[str, float]  # seconds per stage
    request_id: str


@dataclass
class _Prepared:
    batch: np.ndarray
    views: list[ImageView]
    decode_seconds: float
    preprocess_seconds: float


class DataPlane:
    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.readiness = Readiness()
        self._pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")

    async def predict(
        self,
        task: str,
        model: str,
        version: int,
        images: list[ImageInput],
        map_request: MapRequest,
        deadline: float | None = None,
        top_k: int | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> Prediction:
        started = time.perf_counter()
        served = self._served(model, version)
        manifest = served.manifest
        if manifest.task != task:
            other = "Detect" if manifest.task == DETECTION else "Classify"
            raise invalid(f"model {model!r} is a {manifest.task} model; call {other}")
        self._check(manifest, images, top_k, score_threshold, max_detections)
        selected = select(manifest, map_request.select)
        prepared = await self._prepared(served, images)
        outputs = [*manifest.predictions, *(a.name for a in selected)]
        batch = await served.batcher.submit(prepared.batch, outputs, deadline)
        post_started = time.perf_counter()
        if task == CLASSIFICATION:
            results = self._classifications(manifest, batch.outputs, prepared.views, top_k, score_threshold)
        else:
            results = self._detections(
                manifest, batch.outputs, prepared.views, score_threshold, max_detections
            )
        postprocess = time.perf_counter() - post_started
        encode_started = time.perf_counter()
        if selected:
            await asyncio.get_running_loop().run_in_executor(
                self._pool, self._encode, selected, batch.outputs, prepared, results, map_request
            )
        timing = {
            "decode": prepared.decode_seconds,
            "preprocess": prepared.preprocess_seconds,
            "queue": batch.queue_seconds,
            "inference": batch.inference_seconds,
            "postprocess": postprocess,
            "encode": time.perf_counter() - encode_started,
        }
        for stage, seconds in timing.items():
            self.metrics.stage_seconds.labels(model, stage).observe(seconds)
        timing["total"] = time.perf_counter() - started
        return Prediction(manifest.name, manifest.version, results, timing, uuid.uuid4().hex[:16])

    async def infer(
        self,
        model: str,
        version: int,
        outputs: list[str],
        deadline: float | None = None,
        tensor: np.ndarray | None = None,
        images: list[ImageInput] | None = None,
    ) -> tuple[Manifest, dict[str, np.ndarray]]:
        """The named outputs for a preprocessed N×3×H×W float32 ``tensor``, or for encoded ``images``
        (decoded and fitted by the model's manifest): the Open Inference Protocol's path."""
        served = self._served(model, version)
        manifest = served.manifest
        unknown = [name for name in outputs if name not in manifest.output_names()]
        if unknown:
            names = ", ".join(manifest.output_names())
            raise invalid(f"model {model!r} has no output {unknown[0]!r}; its outputs are {names}")
        timing = {}
        if images is not None:
            self._check(manifest, images, None, None, None)
            prepared = await self._prepared(served, images)
            tensor = prepared.batch
            timing = {"decode": prepared.decode_seconds, "preprocess": prepared.preprocess_seconds}
        else:
            spec = manifest.input
            expected = (3, spec.height, spec.width)
            if tensor.ndim != 4 or tuple(tensor.shape[1:]) != expected or len(tensor) == 0:
                raise invalid(
                    f"input {spec.name!r} of model {model!r} must be [N, {', '.join(map(str, expected))}] "
                    f"(N ≥ 1), got {list(tensor.shape)}"
                )
            self._check_count(len(tensor))
            served.batcher.announce()
        batch = await served.batcher.submit(tensor, outputs, deadline)
        timing.update(queue=batch.queue_seconds, inference=batch.inference_seconds)
        for stage, seconds in timing.items():
            self.metrics.stage_seconds.labels(model, stage).observe(seconds)
        return manifest, batch.outputs

    async def _prepared(self, served, images: list[ImageInput]) -> _Prepared:
        """Decode and fit on the thread pool, announced to the batcher so a batch may wait for it."""
        served.batcher.announce()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._prepare, images, served.manifest
            )
        except BaseException:
            served.batcher.withdraw()
            raise

    def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` (``version``, 0: the latest) is loaded and the server not draining."""
        try:
            served = self.registry.get(model, version)
        except ServiceError:
            return False
        return self.readiness.model_ready(served.manifest.name)

    def _served(self, model: str, version: int):
        if not self.readiness.accepting_calls:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
            )
        return self.registry.get(model, version)

    def _check_count(self, count: int) -> None:
        if count > self.settings.max_images_per_request:
            limit = self.settings.max_images_per_request
            raise invalid(f"the request has {count} images; at most {limit} per request")

    def _check(self, manifest: Manifest, images, top_k, score_threshold, max_detections) -> None:
        if not images:
            raise invalid("the request has no images")
        self._check_count(len(images))
        if top_k is not None and top_k <= 0:
            raise invalid(f"top_k must be positive, not {top_k}")
        if max_detections is not None and max_detections <= 0:
            raise invalid(f"max_detections must be positive, not {max_detections}")
        if score_threshold is not None and not (math.isfinite(score_threshold) and 0 <= score_threshold <= 1):
            raise invalid(f"score_threshold must be a number in [0, 1], not {score_threshold}")

    def _prepare(self, images: list[ImageInput], manifest: Manifest) -> _Prepared:
        spec = manifest.input
        limit = self.settings.max_image_pixels
        decode_seconds = preprocess_seconds = 0.0
        fitted, views = [], []
        for i, image in enumerate(images):
            t0 = time.perf_counter()
            if image.encoded is not None:
                decoded = decode_encoded(image.encoded, i, (spec.height, spec.width), limit)
            elif image.rgb is not None:
                decoded = decode_raw(image.rgb, image.height, image.width, i, limit)
            else:
                raise invalid(f"image {i} has neither encoded bytes nor raw pixels")
            t1 = time.perf_counter()
            model_input, placement = fit(decoded.image, spec.height, spec.width, spec.resize)
            fitted.append(model_input)
            views.append(ImageView(model_input, decoded.image, decoded.width, decoded.height,
                                        _on_original(placement, decoded)))  # fmt: skip
            decode_seconds += t1 - t0
            preprocess_seconds += time.perf_counter() - t1
        t2 = time.perf_counter()
        batch = to_input(fitted)
        return _Prepared(batch, views, decode_seconds, preprocess_seconds + time.perf_counter() - t2)

    @staticmethod
    def _classifications(manifest, outputs, views, top_k, score_threshold) -> list[ImageResult]:
        probabilities = outputs["probabilities"]
        k = min(top_k or DEFAULT_TOP_K, probabilities.shape[1])
        floor = score_threshold or 0.0
        results = []
        for row, view in zip(probabilities, views, strict=True):
            best = np.argsort(-row, kind="stable")[:k]
            labels = [
                ScoredLabel(int(c), _label(manifest, c), float(row[c])) for c in best if row[c] >= floor
            ]
            results.append(ImageResult(view.width, view.height, labels=labels))
        return results

    @staticmethod
    def _detections(manifest, outputs, views, score_threshold, max_detections) -> list[ImageResult]:
        floor = DEFAULT_DETECTION_THRESHOLD if score_threshold is None else score_threshold
        results = []
        per_image = zip(outputs["boxes"], outputs["scores"], outputs["classes"], views, strict=True)
        for boxes, scores, classes, view in per_image:
            order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= floor][:max_detections]
            original = view.placement.boxes_to_original(boxes[order])
            original[:, 0::2] = original[:, 0::2].clip(0, view.width)
            original[:, 1::2] = original[:, 1::2].clip(0, view.height)
            detections = [
                Detection(
                    tuple(map(float, box)), int(classes[i]), _label(manifest, classes[i]), float(scores[i])
                )
                for box, i in zip(original, order, strict=True)
            ]
            results.append(ImageResult(view.width, view.height, detections=detections))
        return results

    @staticmethod
    def _encode(
        selected, outputs, prepared: _Prepared, results: list[ImageResult], request: MapRequest
    ) -> None:
        top = outputs["probabilities"].argmax(axis=1) if "probabilities" in outputs else None
        for i, (view, result) in enumerate(zip(prepared.views, results, strict=True)):
            top_class = int(top[i]) if top is not None else 0
            result.maps = [
                encode(a, outputs[a.name][i], request.encoding, request.geometry, view, top_class)
                for a in selected
            ]

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _on_original(placement: Placement, decoded: Decoded) -> Placement:
    """``placement`` was measured on the decoded image, which JPEG draft mode may have shrunk."""
    sx = decoded.image.width / decoded.width
    sy = decoded.image.height / decoded.height
    return Placement(placement.scale_x * sx, placement.scale_y * sy, placement.offset_x, placement.offset_y)


def _label(manifest: Manifest, class_id) -> str:
    c = int(class_id)
    return manifest.labels[c] if 0 <= c < len(manifest.labels) else f"class_{c}"
