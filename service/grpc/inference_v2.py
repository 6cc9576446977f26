"""The Open Inference Protocol (KServe V2, ``inference.GRPCInferenceService``): a second thin front-end
over the same data plane as the vision API, so batching, metrics, limits and errors are shared and
clients written for Triton, KServe or MLServer work unchanged.

ModelInfer takes the model's input as an FP32 tensor ([N, 3, H, W] in [0, 1], RGB) in
``raw_input_contents`` or typed contents, or as a BYTES tensor of encoded images ([N]) decoded and
fitted server-side by the model's manifest. Only the outputs the request names are computed (all of
them when it names none), and they come back in ``raw_output_contents``. A requested output with the
``classification`` parameter (k) comes back as BYTES "score:index:label" strings, best first.
"""

import struct

import grpc
import numpy as np

from attnserve.api.inference.v2 import grpc_predict_v2_pb2 as pb
from attnserve.api.inference.v2 import grpc_predict_v2_pb2_grpc
from attnserve.service.dataplane import DataPlane, ImageInput
from attnserve.service.errors import ServiceError, invalid
from attnserve.service.grpc.calls import observed, outcome
from attnserve.service.metrics import Metrics
from attnserve.service.registry import ModelRegistry

PLATFORM = "onnxruntime_onnx"
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float16): "FP16"}


class InferenceServicer(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, registry: ModelRegistry, metrics: Metrics, version: str) -> None:
        self.dataplane = dataplane
        self.registry = registry
        self.metrics = metrics
        self.version = version

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.readiness.server_ready)

    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        try:
            version = version_number(request.version)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, version))

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="attnserve", version=self.version, extensions=["classification"]
        )

    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        async def work(deadline):
            served = self.registry.get(request.name, version_number(request.version))
            m = served.manifest
            outputs = [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=o.name,
                    datatype=_datatype_of(o.type),
                    shape=[d if isinstance(d, int) else -1 for d in o.shape],
                )
                for o in served.model.session.get_outputs()
            ]
            image = pb.ModelMetadataResponse.TensorMetadata(
                name=m.input.name, datatype="FP32", shape=[-1, 3, m.input.height, m.input.width]
            )
            return pb.ModelMetadataResponse(
                name=m.name, versions=[str(v) for v in self.registry.versions(m.name)], platform=PLATFORM,
                inputs=[image], outputs=outputs,
            )  # fmt: skip

        return await observed(self.metrics, self.registry, "ModelMetadata", request.name, context, work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return await observed(
            self.metrics, self.registry, "ModelInfer", request.model_name, context,
            lambda deadline: self._infer(request, deadline),
        )  # fmt: skip

    async def ModelStreamInfer(self, requests, context):
        """One response per request; a failed request answers with its error and the stream goes on."""
        async for request in requests:
            code, value = await outcome(
                self.metrics, self.registry, "ModelStreamInfer", request.model_name, context,
                lambda deadline, r=request: self._infer(r, deadline),
            )  # fmt: skip
            if code is None:
                yield pb.ModelStreamInferResponse(infer_response=value)
            else:
                yield pb.ModelStreamInferResponse(error_message=f"{code.name}: {value}")

    async def RepositoryIndex(self, request, context) -> pb.RepositoryIndexResponse:
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=s.manifest.name, version=str(s.manifest.version), state="READY"
            )
            for s in self.registry.all()
        ]
        if not request.ready:
            models += [
                pb.RepositoryIndexResponse.ModelIndex(
                    name=key.split("/")[0], version=key.split("/")[1], state="UNAVAILABLE", reason=reason
                )
                for key, reason in self.registry.failed.items()
            ]
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _NO_RUNTIME_LOADING)

    async def RepositoryModelUnload(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _NO_RUNTIME_LOADING)

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        version = version_number(request.model_version)
        if len(request.inputs) != 1:
            raise invalid(f"models here take exactly one input; the request has {len(request.inputs)}")
        tensor_in = request.inputs[0]
        served = self.dataplane.registry.get(request.model_name, version)
        expected = served.manifest.input.name
        if tensor_in.name != expected:
            raise invalid(f"model {request.model_name!r} has the input {expected!r}, not {tensor_in.name!r}")
        raw = request.raw_input_contents[0] if request.raw_input_contents else None
        wanted = [o.name for o in request.outputs] or served.manifest.output_names()
        if tensor_in.datatype == "BYTES":
            images = [ImageInput(encoded=data) for data in _bytes_elements(tensor_in, raw)]
            manifest, outputs = await self.dataplane.infer(
                request.model_name, version, wanted, deadline, images=images
            )
        elif tensor_in.datatype == "FP32":
            tensor = _fp32_tensor(tensor_in, raw)
            manifest, outputs = await self.dataplane.infer(
                request.model_name, version, wanted, deadline, tensor=tensor
            )
        else:
            raise invalid(
                f"input {tensor_in.name!r} has datatype {tensor_in.datatype}; send FP32 [N, 3, H, W] pixels "
                "in [0, 1] or BYTES [N] encoded images"
            )
        response = pb.ModelInferResponse(
            model_name=manifest.name, model_version=str(manifest.version), id=request.id
        )
        for requested in request.outputs or [
            pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in wanted
        ]:
            value = outputs[requested.name]
            top = requested.parameters.get("classification")
            if top is not None:
                value = _classification(value, top.int64_param, manifest.labels, requested.name)
                datatype, data = "BYTES", _serialize_bytes(value)
            else:
                datatype, data = DATATYPES[value.dtype], np.ascontiguousarray(value).tobytes()
            response.outputs.add(name=requested.name, datatype=datatype, shape=list(value.shape))
            response.raw_output_contents.append(data)
        return response


_NO_RUNTIME_LOADING = (
    "this server loads its model repository at start-up; loading and unloading at run time is not "
    "supported: export the model into the repository and restart (or roll) the server"
)


def version_number(version: str) -> int:
    if not version:
        return 0
    if not version.isdigit():
        raise invalid(f"model version {version!r} is not a number")
    return int(version)


def _fp32_tensor(tensor, raw: bytes | None) -> np.ndarray:
    shape = list(tensor.shape)
    count = int(np.prod(shape)) if shape else 0
    if raw is not None:
        if len(raw) != count * 4:
            raise invalid(
                f"input {tensor.name!r}: shape {shape} of FP32 needs {count * 4} bytes, got {len(raw)}"
            )
        return np.frombuffer(raw, "<f4").reshape(shape)
    values = tensor.contents.fp32_contents
    if len(values) != count:
        raise invalid(f"input {tensor.name!r}: shape {shape} needs {count} fp32_contents, got {len(values)}")
    return np.asarray(values, np.float32).reshape(shape)


def _bytes_elements(tensor, raw: bytes | None) -> list[bytes]:
    """A BYTES tensor's elements: typed contents, or raw as 4-byte little-endian lengths and data."""
    if raw is None:
        elements = list(tensor.contents.bytes_contents)
    else:
        elements, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise invalid(f"input {tensor.name!r}: BYTES data ends inside an element's length")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise invalid(f"input {tensor.name!r}: BYTES element of {length} bytes runs past the data")
            elements.append(raw[offset : offset + length])
            offset += length
    count = int(np.prod(list(tensor.shape))) if tensor.shape else 0
    if len(elements) != count:
        raise invalid(
            f"input {tensor.name!r}: shape {list(tensor.shape)} needs {count} images, got {len(elements)}"
        )
    return elements


def _classification(value: np.ndarray, k: int, labels: list[str], name: str) -> np.ndarray:
    if value.ndim != 2:
        raise invalid(
            f"the classification parameter needs an [N, classes] output; {name!r} is {list(value.shape)}"
        )
    if k <= 0:
        raise invalid(f"the classification parameter must be positive, not {k}")
    k = min(k, value.shape[1])
    best = np.argsort(-value, axis=1, kind="stable")[:, :k]
    return np.array(
        [
            [f"{row[c]:f}:{c}:{labels[c]}".encode() for c in order]
            for row, order in zip(value, best, strict=True)
        ],
        dtype=object,
    )


def _serialize_bytes(value: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in value.reshape(-1))


def _datatype_of(onnx_type: str) -> str:
    return {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(float16)": "FP16"}.get(
        onnx_type, "FP32"
    )
