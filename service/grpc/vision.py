"""The attnserve.v1 VisionService: proto messages in and out (service/vision_api.py); the work is the
data plane's."""

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

import grpc

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.api.v1 import vision_pb2_grpc
from attnserve.service import vision_api
from attnserve.service.dataplane import DataPlane
from attnserve.service.errors import ServiceError
from attnserve.service.grpc.calls import in_order, observed, outcome
from attnserve.service.metrics import Metrics

T = TypeVar("T")


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: Metrics, stream_window: int) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.stream_window = stream_window

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        return await self._call("Classify", request, context, self._classify)

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        return await self._call("Detect", request, context, self._detect)

    async def StreamClassify(
        self, requests: AsyncIterator[pb.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyResponse]:
        async with aclosing(self._stream("StreamClassify", requests, context, self._classify)) as replies:
            async for reply in replies:
                yield reply

    async def StreamDetect(
        self, requests: AsyncIterator[pb.DetectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DetectResponse]:
        async with aclosing(self._stream("StreamDetect", requests, context, self._detect)) as replies:
            async for reply in replies:
                yield reply

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return vision_api.list_models(self.dataplane.models())

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        try:
            return vision_api.model_info(self.dataplane.describe(request.model, request.version))
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)

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
            vision_api.classify_request(request, deadline), vision_api.classify_response
        )

    async def _detect(self, request: pb.DetectRequest, deadline: float | None) -> pb.DetectResponse:
        return await self.dataplane.predict(
            vision_api.detect_request(request, deadline), vision_api.detect_response
        )

    async def _stream(
        self,
        method: str,
        requests: AsyncIterator[pb.ClassifyRequest | pb.DetectRequest],
        context: grpc.aio.ServicerContext,
        handler: Callable[..., Awaitable[T]],
    ) -> AsyncIterator[T]:
        """Each frame answered in order, up to stream_window of them at once; the first that fails ends
        the stream with its status, after the answers of the frames before it."""

        def start(request: pb.ClassifyRequest | pb.DetectRequest) -> Awaitable[tuple]:
            work = functools.partial(handler, request)
            return outcome(self.metrics, self.dataplane, method, request.model, context, work)

        async with aclosing(in_order(requests, self.stream_window, start)) as outcomes:
            async for code, value in outcomes:
                if code is not None:
                    await context.abort(code, value)
                yield value

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
