"""The Open Inference Protocol (KServe V2, ``inference.GRPCInferenceService``): a second thin front-end
over the same data plane as the vision API, so batching, metrics, limits and errors are shared and
clients written for Triton, KServe or MLServer work unchanged.

ModelInfer takes the model's input as an FP32 tensor ([N, 3, H, W] in [0, 1], RGB) in
``raw_input_contents`` or typed contents, or as a BYTES tensor of encoded images ([N]) decoded and
fitted server-side by the model's manifest. Only the outputs the request names are computed (all of
them when it names none), and they come back in ``raw_output_contents``. A requested output with the
``classification`` parameter (k) comes back as BYTES "score:index:label" strings, best first. The
tensors' formats are service/open_inference.py's, shared with the HTTP front-end.
"""

import functools
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing

import grpc

from attnserve.api.inference.v2 import grpc_predict_v2_pb2 as pb
from attnserve.api.inference.v2 import grpc_predict_v2_pb2_grpc
from attnserve.service.dataplane import DataPlane
from attnserve.service.errors import ServiceError, invalid
from attnserve.service.grpc.calls import in_order, observed, outcome
from attnserve.service.messages import InferResult
from attnserve.service.metrics import Metrics
from attnserve.service.open_inference import (
    InputTensor,
    OutputRequest,
    infer_request,
    output_tensors,
    version_number,
)

PLATFORM = "onnxruntime_onnx"


class InferenceServicer(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: Metrics, version: str, stream_window: int) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.version = version
        self.stream_window = stream_window

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.readiness.server_ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            version = version_number(request.version)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="attnserve", version=self.version, extensions=["classification"]
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        async def work(deadline: float | None) -> pb.ModelMetadataResponse:
            described = self.dataplane.describe(request.name, version_number(request.version))
            m = described.manifest
            TensorMetadata = pb.ModelMetadataResponse.TensorMetadata
            image = TensorMetadata(
                name=m.input.name, datatype="FP32", shape=[-1, 3, m.input.height, m.input.width]
            )
            outputs = [
                TensorMetadata(name=o.name, datatype=o.datatype, shape=o.shape) for o in described.outputs
            ]
            return pb.ModelMetadataResponse(
                name=m.name,
                versions=[str(v) for v in described.versions],
                platform=PLATFORM,
                inputs=[image],
                outputs=outputs,
            )

        return await observed(self.metrics, self.dataplane, "ModelMetadata", request.name, context, work)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await observed(
            self.metrics,
            self.dataplane,
            "ModelInfer",
            request.model_name,
            context,
            lambda deadline: self._infer(request, deadline),
        )

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in order, up to stream_window of them at once; a failed request
        answers with its error and the stream goes on."""

        def start(request: pb.ModelInferRequest) -> Awaitable[tuple]:
            work = functools.partial(self._infer, request)
            return outcome(
                self.metrics, self.dataplane, "ModelStreamInfer", request.model_name, context, work
            )

        async with aclosing(in_order(requests, self.stream_window, start)) as outcomes:
            async for code, value in outcomes:
                if code is None:
                    yield pb.ModelStreamInferResponse(infer_response=value)
                else:
                    yield pb.ModelStreamInferResponse(error_message=f"{code.name}: {value}")

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name,
                    version=str(e.version),
                    state="READY" if e.ready else "UNAVAILABLE",
                    reason=e.reason,
                )
                for e in self.dataplane.repository_index(ready_only=request.ready)
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        async def work(deadline: float | None) -> pb.RepositoryModelLoadResponse:
            _one_repository(request.repository_name)
            await self.dataplane.load_model(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await observed(
            self.metrics, self.dataplane, "RepositoryModelLoad", request.model_name, context, work
        )

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        async def work(deadline: float | None) -> pb.RepositoryModelUnloadResponse:
            _one_repository(request.repository_name)
            await self.dataplane.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await observed(
            self.metrics, self.dataplane, "RepositoryModelUnload", request.model_name, context, work
        )

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        if len(request.inputs) != 1:
            raise invalid(f"models here take exactly one input; the request has {len(request.inputs)}")
        tensor_in = request.inputs[0]
        contents = tensor_in.contents
        tensor = InputTensor(
            tensor_in.name,
            tensor_in.datatype,
            list(tensor_in.shape),
            request.raw_input_contents[0] if request.raw_input_contents else None,
            contents.bytes_contents if tensor_in.datatype == "BYTES" else contents.fp32_contents,
        )
        outputs = [
            OutputRequest(o.name, o.parameters["classification"].int64_param)
            if "classification" in o.parameters
            else OutputRequest(o.name)
            for o in request.outputs
        ]
        infer = infer_request(
            request.model_name,
            request.model_version,
            tensor,
            outputs,
            deadline,
            self.dataplane.settings.max_images_per_request,
        )

        def build(result: InferResult) -> pb.ModelInferResponse:
            response = pb.ModelInferResponse(
                model_name=result.manifest.name, model_version=str(result.manifest.version), id=request.id
            )
            for out in output_tensors(result, outputs):
                response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
                response.raw_output_contents.append(out.raw())
            return response

        return await self.dataplane.infer(infer, build)


def _one_repository(name: str) -> None:
    if name:  # the protocol lets a server have several; this one has its one, unnamed
        raise invalid(f"this server has one model repository; leave repository_name empty, not {name!r}")
