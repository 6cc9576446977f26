"""Python clients for the vision API, blocking and asyncio, and helpers to read the maps they return.

with VisionClient("localhost:50051") as client:
    reply = client.classify(["cat.jpg"], model="cbam_classifier", maps=["spatial"])
    heat = map_array(reply.results[0].maps[0])
"""

import functools
import io
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from PIL import Image

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.api.v1 import vision_pb2_grpc
from attnserve.client.security import ChannelSecurity

ImageLike = bytes | str | Path | np.ndarray | Image.Image
DEFAULT_MAX_MESSAGE_MB = 64
# A server with several workers shares one port between them and the kernel hands each connection to
# one worker, so a client with one connection would keep one worker busy. Calls take turns over this
# many connections (each opened on its first call: a single call opens one).
DEFAULT_CONNECTIONS = 8
_Request = TypeVar("_Request", pb.ClassifyRequest, pb.DetectRequest)


def image_message(image: ImageLike) -> pb.Image:
    """Encoded bytes or a file path are sent as they are; an H×W×3 uint8 array or a PIL image as raw RGB."""
    if isinstance(image, bytes):
        return pb.Image(encoded=image)
    if isinstance(image, (str, Path)):
        return pb.Image(encoded=Path(image).read_bytes())
    pixels = np.ascontiguousarray(
        np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    )
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"a raw image must be H×W×3 uint8, not {pixels.shape} {pixels.dtype}")
    return pb.Image(raw=pb.RawImage(rgb=pixels.tobytes(), height=pixels.shape[0], width=pixels.shape[1]))


def map_options(
    select: Sequence[str] = (), encoding: str = "float16", geometry: str = "model_grid"
) -> pb.MapOptions:
    """``encoding`` and ``geometry`` by name (attnserve.maps.ENCODINGS, GEOMETRIES), each sent as the wire
    enum of the same name."""
    return pb.MapOptions(
        select=list(select),
        encoding=_enum(pb.MapEncoding, "MAP_ENCODING_", encoding),
        geometry=_enum(pb.MapGeometry, "MAP_GEOMETRY_", geometry),
    )


def _enum(enum: EnumTypeWrapper, prefix: str, name: str) -> int:
    try:
        return enum.Value(prefix + name.upper())
    except ValueError:
        names = enum.DESCRIPTOR.values_by_name
        known = [n.removeprefix(prefix).lower() for n in names if not n.endswith("UNSPECIFIED")]
        raise ValueError(f"unknown map {prefix[4:-1].lower()} {name!r}; one of {', '.join(known)}") from None


def classify_request(
    images: Iterable[ImageLike],
    model: str,
    version: int = 0,
    top_k: int | None = None,
    score_threshold: float | None = None,
    **maps,
) -> pb.ClassifyRequest:
    request = pb.ClassifyRequest(
        model=model, version=version, images=[image_message(i) for i in images], maps=map_options(**maps)
    )
    return _with_present(request, top_k=top_k, score_threshold=score_threshold)


def detect_request(
    images: Iterable[ImageLike],
    model: str,
    version: int = 0,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    **maps,
) -> pb.DetectRequest:
    request = pb.DetectRequest(
        model=model, version=version, images=[image_message(i) for i in images], maps=map_options(**maps)
    )
    return _with_present(request, score_threshold=score_threshold, max_detections=max_detections)


def _frame_requests(
    frames: Iterable[ImageLike] | AsyncIterable[ImageLike], request: Callable[[list[ImageLike]], _Request]
) -> Iterator[_Request] | AsyncIterator[_Request]:
    """A stream's requests, one frame each; frames an async iterable yields are sent as they come."""
    if isinstance(frames, AsyncIterable):

        async def each() -> AsyncIterator[_Request]:
            async for frame in frames:
                yield request([frame])

        return each()
    return (request([frame]) for frame in frames)


def _with_present(request: _Request, **optional: float | None) -> _Request:
    """Set the optional fields that were given; unset ones keep their server-side defaults."""
    for name, value in optional.items():
        if value is not None:
            setattr(request, name, value)
    return request


def map_array(m: pb.AttentionMap) -> np.ndarray:
    """A returned map as an array: float32 of ``m.shape`` (float16), or the PNG's pixels."""
    if m.encoding == pb.MAP_ENCODING_FLOAT16:
        return np.frombuffer(m.data, "<f2").reshape(tuple(m.shape)).astype(np.float32)
    return np.asarray(Image.open(io.BytesIO(m.data)))


def _channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    size = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        # a connection of its own: gRPC otherwise shares one between every channel of the same target
        # and options, so several clients (for more throughput, or to spread over a server's replicas)
        # would all queue on one HTTP/2 connection and its stream limit
        ("grpc.use_local_subchannel_pool", 1),
    ]


class VisionClient:
    def __init__(
        self,
        target: str = "localhost:50051",
        timeout: float | None = 30.0,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        security: ChannelSecurity | None = None,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        self.security = security or ChannelSecurity()
        options = _channel_options(max_message_mb)
        self.channels = [self.security.channel(target, options) for _ in range(max(1, connections))]
        self._stubs = itertools.cycle([vision_pb2_grpc.VisionServiceStub(c) for c in self.channels])
        self.timeout = timeout

    @property
    def stub(self) -> vision_pb2_grpc.VisionServiceStub:
        """The next connection's stub: calls take turns over the connections."""
        return next(self._stubs)

    def classify(self, images: Sequence[ImageLike], model: str, **options) -> pb.ClassifyResponse:
        return self.stub.Classify(
            classify_request(images, model, **options), timeout=self.timeout, metadata=self.security.metadata
        )

    def detect(self, images: Sequence[ImageLike], model: str, **options) -> pb.DetectResponse:
        return self.stub.Detect(
            detect_request(images, model, **options), timeout=self.timeout, metadata=self.security.metadata
        )

    def stream_detect(
        self, frames: Iterable[ImageLike], model: str, **options
    ) -> Iterator[pb.DetectResponse]:
        """One response per frame, in order (video); the server runs up to its stream_window at once."""
        requests = _frame_requests(frames, functools.partial(detect_request, model=model, **options))
        return self.stub.StreamDetect(requests, metadata=self.security.metadata)

    def stream_classify(
        self, frames: Iterable[ImageLike], model: str, **options
    ) -> Iterator[pb.ClassifyResponse]:
        """One response per frame, in order; the server runs up to its stream_window at once."""
        requests = _frame_requests(frames, functools.partial(classify_request, model=model, **options))
        return self.stub.StreamClassify(requests, metadata=self.security.metadata)

    def list_models(self) -> pb.ListModelsResponse:
        return self.stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self.security.metadata
        )

    def model_info(self, model: str, version: int = 0) -> pb.ModelInfo:
        return self.stub.GetModelInfo(
            pb.GetModelInfoRequest(model=model, version=version),
            timeout=self.timeout,
            metadata=self.security.metadata,
        )

    def load_model(self, model: str) -> pb.LoadModelResponse:
        """Load or reload ``model`` from the server's repository (admin; model_control explicit)."""
        return self.stub.LoadModel(
            pb.LoadModelRequest(model=model), timeout=self.timeout, metadata=self.security.metadata
        )

    def unload_model(self, model: str) -> pb.UnloadModelResponse:
        """Stop serving ``model`` once its calls are answered (admin; model_control explicit)."""
        return self.stub.UnloadModel(
            pb.UnloadModelRequest(model=model), timeout=self.timeout, metadata=self.security.metadata
        )

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def __enter__(self) -> "VisionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncVisionClient:
    def __init__(
        self,
        target: str = "localhost:50051",
        timeout: float | None = 30.0,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        security: ChannelSecurity | None = None,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        self.security = security or ChannelSecurity()
        options = _channel_options(max_message_mb)
        self.channels = [self.security.aio_channel(target, options) for _ in range(max(1, connections))]
        self._stubs = itertools.cycle([vision_pb2_grpc.VisionServiceStub(c) for c in self.channels])
        self.timeout = timeout

    @property
    def stub(self) -> vision_pb2_grpc.VisionServiceStub:
        """The next connection's stub: calls take turns over the connections."""
        return next(self._stubs)

    async def classify(self, images: Sequence[ImageLike], model: str, **options) -> pb.ClassifyResponse:
        return await self.stub.Classify(
            classify_request(images, model, **options), timeout=self.timeout, metadata=self.security.metadata
        )

    async def detect(self, images: Sequence[ImageLike], model: str, **options) -> pb.DetectResponse:
        return await self.stub.Detect(
            detect_request(images, model, **options), timeout=self.timeout, metadata=self.security.metadata
        )

    async def stream_detect(
        self, frames: Iterable[ImageLike] | AsyncIterable[ImageLike], model: str, **options
    ) -> AsyncIterator[pb.DetectResponse]:
        """One response per frame, in order; frames may come from an async iterable (a camera)."""
        requests = _frame_requests(frames, functools.partial(detect_request, model=model, **options))
        async for reply in self.stub.StreamDetect(requests, metadata=self.security.metadata):
            yield reply

    async def stream_classify(
        self, frames: Iterable[ImageLike] | AsyncIterable[ImageLike], model: str, **options
    ) -> AsyncIterator[pb.ClassifyResponse]:
        """One response per frame, in order; frames may come from an async iterable (a camera)."""
        requests = _frame_requests(frames, functools.partial(classify_request, model=model, **options))
        async for reply in self.stub.StreamClassify(requests, metadata=self.security.metadata):
            yield reply

    async def list_models(self) -> pb.ListModelsResponse:
        return await self.stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self.security.metadata
        )

    async def model_info(self, model: str, version: int = 0) -> pb.ModelInfo:
        return await self.stub.GetModelInfo(
            pb.GetModelInfoRequest(model=model, version=version),
            timeout=self.timeout,
            metadata=self.security.metadata,
        )

    async def load_model(self, model: str) -> pb.LoadModelResponse:
        return await self.stub.LoadModel(
            pb.LoadModelRequest(model=model), timeout=self.timeout, metadata=self.security.metadata
        )

    async def unload_model(self, model: str) -> pb.UnloadModelResponse:
        return await self.stub.UnloadModel(
            pb.UnloadModelRequest(model=model), timeout=self.timeout, metadata=self.security.metadata
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def __aenter__(self) -> "AsyncVisionClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
