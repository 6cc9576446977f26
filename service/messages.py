"""The data plane's protocol-neutral requests and results: what each front-end translates its own
messages into and out of (service/grpc/)."""

from dataclasses import dataclass, field

import numpy as np

from attnserve.manifest import Manifest
from attnserve.maps import FLOAT16, MODEL_GRID


@dataclass
class ImageInput:
    encoded: bytes | None = None  # or raw RGB:
    rgb: bytes | None = None
    height: int = 0
    width: int = 0


@dataclass
class MapRequest:
    select: list[str] = field(default_factory=list)  # names, kinds or "all"
    encoding: str = FLOAT16
    geometry: str = MODEL_GRID


@dataclass
class PredictRequest:
    """Images in, the task's results and the selected maps out (Classify, Detect and their streams)."""

    task: str  # the task the caller expects the model to do
    model: str
    version: int  # 0: the latest
    images: list[ImageInput]
    maps: MapRequest = field(default_factory=MapRequest)
    deadline: float | None = None  # time.monotonic() by which the result is wanted
    top_k: int | None = None  # classification; None: the server's default
    score_threshold: float | None = None
    max_detections: int | None = None  # detection; None: all the model returns above the threshold


@dataclass
class InferRequest:
    """Named outputs for one input: a preprocessed N×3×H×W float32 tensor, or encoded images the data
    plane decodes and fits (the Open Inference Protocol's ModelInfer)."""

    model: str
    version: int
    input_name: str
    outputs: list[str]  # empty: every output
    tensor: np.ndarray | None = None
    images: list[ImageInput] | None = None
    deadline: float | None = None


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
class EncodedMap:
    name: str
    kind: str
    source: str
    shape: list[int]
    encoding: str
    geometry: str
    data: bytes


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
class InferResult:
    manifest: Manifest
    outputs: dict[str, np.ndarray]


@dataclass
class TensorDescription:
    name: str
    datatype: str  # the Open Inference Protocol's names: FP32, FP16, INT64
    shape: list[int]  # -1 where the model leaves it open


@dataclass
class ModelDescription:
    manifest: Manifest
    versions: list[int]  # every version served
    provider: str  # the ONNX Runtime execution provider it runs on
    warnings: list[str]
    outputs: list[TensorDescription]
    ready: bool


@dataclass
class RepositoryEntry:
    name: str
    version: int
    ready: bool
    reason: str = ""  # why it did not load
