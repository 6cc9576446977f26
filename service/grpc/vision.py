"""The attnserve.v1 VisionService: proto messages in and out; the work is the data plane's."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.api.v1 import vision_pb2_grpc
from attnserve.manifest import CLASSIFICATION, DETECTION
from attnserve.maps import ENCODINGS, FLOAT16, GEOMETRIES, MODEL_GRID
from attnserve.service.dataplane import DataPlane
from attnserve.service.errors import ServiceError, invalid
from attnserve.service.grpc.calls import observed
from attnserve.service.messages import EncodedMap, ImageInput, MapRequest, Prediction, PredictRequest
from attnserve.service.metrics import Metrics

T = TypeVar("T")


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: Metrics) -> None:
        self.dataplane = dataplane
        self.metrics = metrics

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        return await self._call("Classify", request, context, self._classify)

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        return await self._call("Detect", request, context, self._detect)

    async def StreamClassify(
        self, requests: AsyncIterator[pb.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyResponse]:
        async for request in requests:
            yield await self._call("StreamClassify", request, context, self._classify)

    async def StreamDetect(
        self, requests: AsyncIterator[pb.DetectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DetectResponse]:
        async for request in requests:
            yield await self._call("StreamDetect", request, context, self._detect)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelVersions(
                    name=d.manifest.name, versions=d.versions, task=d.manifest.task, ready=d.ready
                )
                for d in self.dataplane.models()
            ]
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        try:
            described = self.dataplane.describe(request.model, request.version)
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)
        m = described.manifest
        return pb.ModelInfo(
            name=m.name,
            version=m.version,
            versions=described.versions,
            task=m.task,
            labels=m.labels,
            input_height=m.input.height,
            input_width=m.input.width,
            resize=m.input.resize,
            attention=[
                pb.AttentionOutput(
                    name=a.name, kind=a.kind, source=a.source, shape=a.shape, stride=a.stride or 0
                )
                for a in m.attention
            ],
            precision=m.precision,
            provider=described.provider,
            exporter=m.exporter,
            sha256=m.sha256,
            warnings=described.warnings,
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        async def work(deadline: float | None) -> pb.LoadModelResponse:
            return pb.LoadModelResponse(versions=await self.dataplane.load_model(request.model))

        return await observed(self.metrics, self.dataplane, "LoadModel", request.model, context, work)

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        async def work(deadline: float | None) -> pb.UnloadModelResponse:
            return pb.UnloadModelResponse(versions=await self.dataplane.unload_model(request.model))

        return await observed(self.metrics, self.dataplane, "UnloadModel", request.model, context, work)

    async def _classify(self, request: pb.ClassifyRequest, deadline: float | None) -> pb.ClassifyResponse:
        return await self.dataplane.predict(
            PredictRequest(
                CLASSIFICATION,
                request.model,
                request.version,
                images_of(request),
                map_request_of(request.maps),
                deadline=deadline,
                top_k=request.top_k if request.HasField("top_k") else None,
                score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
            ),
            classify_response,
        )

    async def _detect(self, request: pb.DetectRequest, deadline: float | None) -> pb.DetectResponse:
        return await self.dataplane.predict(
            PredictRequest(
                DETECTION,
                request.model,
                request.version,
                images_of(request),
                map_request_of(request.maps),
                deadline=deadline,
                score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
                max_detections=request.max_detections if request.HasField("max_detections") else None,
            ),
            detect_response,
        )

    async def _call(
        self,
        method: str,
        request: pb.ClassifyRequest | pb.DetectRequest,
        context: grpc.aio.ServicerContext,
        handler: Callable[..., Awaitable[T]],
    ) -> T:
        return await observed(
            self.metrics,
            self.dataplane,
            method,
            request.model,
            context,
            lambda deadline: handler(request, deadline),
        )


def classify_response(prediction: Prediction) -> pb.ClassifyResponse:
    results = [
        pb.Classification(
            labels=[pb.ScoredLabel(class_id=s.class_id, label=s.label, score=s.score) for s in r.labels],
            maps=maps_of(r.maps),
            image_size=pb.ImageSize(height=r.height, width=r.width),
        )
        for r in prediction.results
    ]
    return pb.ClassifyResponse(results=results, **_common(prediction))


def detect_response(prediction: Prediction) -> pb.DetectResponse:
    results = [
        pb.DetectionResult(
            detections=[
                pb.Detection(
                    box=pb.Box(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]),
                    class_id=d.class_id,
                    label=d.label,
                    score=d.score,
                )
                for d in r.detections
            ],
            maps=maps_of(r.maps),
            image_size=pb.ImageSize(height=r.height, width=r.width),
        )
        for r in prediction.results
    ]
    return pb.DetectResponse(results=results, **_common(prediction))


def images_of(request: pb.ClassifyRequest | pb.DetectRequest) -> list[ImageInput]:
    images = []
    for image in request.images:
        kind = image.WhichOneof("data")
        if kind == "encoded":
            images.append(ImageInput(encoded=image.encoded))
        elif kind == "raw":
            images.append(ImageInput(rgb=image.raw.rgb, height=image.raw.height, width=image.raw.width))
        else:
            images.append(ImageInput())
    return images


def map_request_of(options: pb.MapOptions) -> MapRequest:
    encoding = _name_of(pb.MapEncoding, options.encoding, "MAP_ENCODING_", ENCODINGS, FLOAT16)
    geometry = _name_of(pb.MapGeometry, options.geometry, "MAP_GEOMETRY_", GEOMETRIES, MODEL_GRID)
    return MapRequest(list(options.select), encoding, geometry)


def _name_of(enum: EnumTypeWrapper, value: int, prefix: str, names: tuple[str, ...], unspecified: str) -> str:
    """attnserve.maps' name for a wire enum value (attnserve/maps.py: the same name, upper case)."""
    name = enum.Name(value).removeprefix(prefix).lower() if value in enum.values() else ""
    if name == "unspecified":
        return unspecified
    if name not in names:
        raise invalid(f"unknown map {prefix.removeprefix('MAP_').rstrip('_').lower()} {value}")
    return name


def maps_of(encoded: list[EncodedMap]) -> list[pb.AttentionMap]:
    return [
        pb.AttentionMap(
            name=m.name,
            kind=m.kind,
            shape=m.shape,
            encoding=pb.MapEncoding.Value(f"MAP_ENCODING_{m.encoding.upper()}"),
            data=m.data,
            geometry=pb.MapGeometry.Value(f"MAP_GEOMETRY_{m.geometry.upper()}"),
            source=m.source,
        )
        for m in encoded
    ]


def _common(prediction: Prediction) -> dict:
    timing = pb.Timing(
        **{f"{stage}_us": round(seconds * 1e6) for stage, seconds in prediction.timing.items()}
    )
    return {
        "model": prediction.model,
        "version": prediction.version,
        "timing": timing,
        "request_id": prediction.request_id,
    }
