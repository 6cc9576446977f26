"""The postprocess stage: one handler per task, which checks the task's own request fields and turns the
model's outputs into results, with the model's defaults for what a request leaves unset. Each served
model holds its handler (``task_handler``, at load); the data plane never branches on the task."""

import math
from typing import Protocol

import numpy as np

from attnserve.manifest import CLASSIFICATION, DETECTION, Manifest
from attnserve.service.errors import invalid
from attnserve.service.messages import Detection, ImageResult, PredictRequest, ScoredLabel
from attnserve.service.settings import ModelSettings
from attnserve.service.stages.fit import ImageView

CALLS = {CLASSIFICATION: "Classify", DETECTION: "Detect"}


class TaskHandler(Protocol):
    def check(self, request: PredictRequest) -> None:
        """Refuse, naming the field, what the task's request fields do not allow."""

    def results(
        self,
        manifest: Manifest,
        outputs: dict[str, np.ndarray],
        views: list[ImageView],
        request: PredictRequest,
    ) -> list[ImageResult]:
        """One result per image from the model's prediction outputs."""

    def map_classes(self, outputs: dict[str, np.ndarray], count: int) -> list[int]:
        """Per image, the class whose plane a CAM's PNG shows."""


class Classification:
    def __init__(self, defaults: ModelSettings) -> None:
        self.top_k = defaults.default_top_k
        self.floor = defaults.default_score_threshold

    def check(self, request: PredictRequest) -> None:
        if request.top_k is not None and request.top_k <= 0:
            raise invalid(f"top_k must be positive, not {request.top_k}")
        _check_threshold(request.score_threshold)

    def results(
        self,
        manifest: Manifest,
        outputs: dict[str, np.ndarray],
        views: list[ImageView],
        request: PredictRequest,
    ) -> list[ImageResult]:
        probabilities = outputs["probabilities"]
        k = min(request.top_k or self.top_k, probabilities.shape[1])
        floor = self.floor if request.score_threshold is None else request.score_threshold
        results = []
        for row, view in zip(probabilities, views, strict=True):
            best = np.argsort(-row, kind="stable")[:k]
            labels = [ScoredLabel(int(c), manifest.label(c), float(row[c])) for c in best if row[c] >= floor]
            results.append(ImageResult(view.width, view.height, labels=labels))
        return results

    def map_classes(self, outputs: dict[str, np.ndarray], count: int) -> list[int]:  # the top class
        return [int(c) for c in outputs["probabilities"].argmax(axis=1)]


class Detections:
    def __init__(self, defaults: ModelSettings) -> None:
        self.threshold = defaults.default_score_threshold
        self.max_detections = defaults.default_max_detections

    def check(self, request: PredictRequest) -> None:
        if request.max_detections is not None and request.max_detections <= 0:
            raise invalid(f"max_detections must be positive, not {request.max_detections}")
        _check_threshold(request.score_threshold)

    def results(
        self,
        manifest: Manifest,
        outputs: dict[str, np.ndarray],
        views: list[ImageView],
        request: PredictRequest,
    ) -> list[ImageResult]:
        floor = self.threshold if request.score_threshold is None else request.score_threshold
        limit = request.max_detections or self.max_detections
        results = []
        per_image = zip(outputs["boxes"], outputs["scores"], outputs["classes"], views, strict=True)
        for boxes, scores, classes, view in per_image:
            order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= floor]
            order = order[:limit]
            original = view.placement.boxes_to_original(boxes[order])
            original[:, 0::2] = original[:, 0::2].clip(0, view.width)
            original[:, 1::2] = original[:, 1::2].clip(0, view.height)
            detections = [
                Detection(
                    tuple(map(float, box)), int(classes[i]), manifest.label(classes[i]), float(scores[i])
                )
                for box, i in zip(original, order, strict=True)
            ]
            results.append(ImageResult(view.width, view.height, detections=detections))
        return results

    def map_classes(self, outputs: dict[str, np.ndarray], count: int) -> list[int]:
        return [0] * count  # a detector has no CAM


HANDLERS: dict[str, type[Classification] | type[Detections]] = {
    CLASSIFICATION: Classification,
    DETECTION: Detections,
}


def task_handler(manifest: Manifest, defaults: ModelSettings) -> TaskHandler:
    """The handler for the model's task, with the model's defaults."""
    return HANDLERS[manifest.task](defaults)


def check_task(manifest: Manifest, asked: str) -> None:
    """A call for the other task is refused, naming the right one."""
    if manifest.task != asked:
        raise invalid(f"model {manifest.name!r} is a {manifest.task} model; call {CALLS[manifest.task]}")


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not (math.isfinite(threshold) and 0 <= threshold <= 1):
        raise invalid(f"score_threshold must be a number in [0, 1], not {threshold}")
