"""The requests a benchmark sends and how each reply is checked: generated scenes as JPEGs at the
model's size or at 1920×1080, or as preprocessed tensors; expected answers from the exported model run
directly in ONNX Runtime on the same pixels."""

import collections
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from PIL import Image
from tritonclient.grpc import service_pb2 as v2  # the Open Inference Protocol's messages
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.client import AsyncVisionClient
from attnserve.imaging import fit, to_input
from attnserve.manifest import MODEL_FILE, Manifest
from attnserve.models.scenes import classification_scene
from attnserve.service.stages.decode import decode_encoded

# How far a served probability may sit from the CPU's answer for the same pixels. On the CPU, batched
# and single inference differ in the last bits: near-ties may swap. ONNX Runtime's CUDA provider runs
# float32 convolutions and products in TF32 by default (10-bit mantissas), which moves more.
TOLERANCE = {"cpu": 1e-3, "cuda": 2e-2}


@dataclass
class ImageSet:
    jpegs: list[bytes]
    tensors: np.ndarray  # the model's input for each image, N×3×H×W
    probabilities: np.ndarray  # the exported model's answer for each, N×classes, on the CPU
    tolerance: float = TOLERANCE["cpu"]  # for answers from the provider the server runs on


def image_set(
    version_dir: Path,
    count: int,
    size: tuple[int, int] | None = None,
    seed: int = 9100,
    provider: str = "cpu",
) -> ImageSet:
    """``count`` scenes as JPEGs (quality 90) at ``size`` (W, H; default: the model's input size), for a
    server running on ``provider``."""
    manifest = Manifest.read(version_dir / "manifest.json")
    spec = manifest.input
    width, height = size or (spec.width, spec.height)
    jpegs, fitted = [], []
    for i in range(count):
        scene = Image.fromarray(classification_scene(seed, i, size=min(width, height)).image)
        buffer = io.BytesIO()
        scene.resize((width, height)).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
        decoded = decode_encoded(jpegs[-1], i, (spec.height, spec.width), max_pixels=100_000_000)
        fitted.append(fit(decoded.image, spec.height, spec.width, spec.resize)[0])
    tensors = to_input(fitted)
    session = ort.InferenceSession(str(version_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"images": tensors})
    return ImageSet(jpegs, tensors, probabilities, TOLERANCE[provider])


def check_top1(expected: np.ndarray, class_id: int, score: float, tolerance: float) -> None:
    if expected[class_id] < expected.max() - tolerance or abs(expected[class_id] - score) > tolerance:
        raise AssertionError(f"top-1 {class_id} ({score:.4f}) is not the model's ({expected.argmax()})")


class VisionCalls:
    """Classify over the vision API, ``per_request`` JPEGs a request, with the attention maps ``select``
    names (map names or kinds, ``["all"]``, or none)."""

    def __init__(
        self,
        client: AsyncVisionClient,
        model: str,
        images: ImageSet,
        select: list[str] = (),
        per_request: int = 1,
    ) -> None:
        self.client, self.model, self.images, self.select = client, model, images, list(select)
        self.per_request = per_request
        self.timings: list[pb.Timing] = []  # the server's own account of each answered request

    def stage_ms(self) -> dict[str, float]:
        """Each stage's median over the answered requests, and the server's total, in ms."""
        stages = [f.name for f in pb.Timing.DESCRIPTOR.fields]
        rows = [[getattr(t, s) for s in stages] for t in self.timings] or [[np.nan] * len(stages)]
        medians = np.median(np.array(rows, float), axis=0)
        return {s.removesuffix("_us"): round(float(v) / 1e3, 3) for s, v in zip(stages, medians, strict=True)}

    def _indices(self, i: int) -> list[int]:
        """The images of request ``i``."""
        return [(i * self.per_request + j) % len(self.images.jpegs) for j in range(self.per_request)]

    async def __call__(self, i: int) -> tuple[int, pb.ClassifyResponse]:
        jpegs = [self.images.jpegs[k] for k in self._indices(i)]
        return i, await self.client.classify(jpegs, self.model, top_k=1, select=self.select)

    async def stream(self, indices: AsyncIterator[int]) -> AsyncIterator[tuple[int, pb.ClassifyResponse]]:
        """Request ``i`` for each index, as frames of one StreamClassify stream (one image a frame, so
        ``per_request`` 1), each answer paired with its index."""
        sent: collections.deque[int] = collections.deque()

        async def frames() -> AsyncIterator[bytes]:
            async for i in indices:
                sent.append(i)
                yield self.images.jpegs[self._indices(i)[0]]

        async for reply in self.client.stream_classify(frames(), self.model, top_k=1, select=self.select):
            yield sent.popleft(), reply

    def check(self, outcome: tuple[int, pb.ClassifyResponse]) -> None:
        i, reply = outcome
        ks = self._indices(i)
        if len(reply.results) != len(ks):
            raise AssertionError(f"{len(reply.results)} results for {len(ks)} images")
        for k, result in zip(ks, reply.results, strict=True):
            label = result.labels[0]
            check_top1(self.images.probabilities[k], label.class_id, label.score, self.images.tolerance)
            if self.select and not result.maps:
                raise AssertionError(f"maps {self.select} were asked for and not returned")
        self.timings.append(reply.timing)


class TensorCalls:
    """ModelInfer (Open Inference Protocol) with one preprocessed FP32 tensor per request: the same
    request for attnserve and for the peer."""

    def __init__(self, channel: grpc.aio.Channel, model: str, images: ImageSet) -> None:
        self.stub = v2_grpc.GRPCInferenceServiceStub(channel)
        self.model, self.images = model, images
        self.requests = []
        for tensor in images.tensors:
            request = v2.ModelInferRequest(model_name=model)
            request.inputs.add(name="images", datatype="FP32", shape=[1, *tensor.shape])
            request.outputs.add(name="probabilities")
            request.raw_input_contents.append(np.ascontiguousarray(tensor).tobytes())
            self.requests.append(request)

    async def __call__(self, i: int) -> tuple[int, v2.ModelInferResponse]:
        k = i % len(self.requests)
        return k, await self.stub.ModelInfer(self.requests[k], timeout=60)

    def check(self, outcome: tuple[int, v2.ModelInferResponse]) -> None:
        k, reply = outcome
        index = [o.name for o in reply.outputs].index("probabilities")
        if reply.raw_output_contents:
            probabilities = np.frombuffer(reply.raw_output_contents[index], "<f4")
        else:
            probabilities = np.asarray(reply.outputs[index].contents.fp32_contents, np.float32)
        best = int(probabilities.argmax())
        check_top1(self.images.probabilities[k], best, float(probabilities[best]), self.images.tolerance)
