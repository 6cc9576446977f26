"""The Open Inference Protocol over HTTP/REST (KServe V2): a thin aiohttp front-end over the same data
plane as the gRPC APIs, so batching, limits, metrics (``method`` "http/NAME"), errors and tokens are
shared, and clients written for Triton, KServe or MLServer's REST API work unchanged.

Inference takes JSON tensors or the binary data extension (``Inference-Header-Content-Length``: a JSON
header, then each input's bytes, ``binary_data_size`` long, in order); encoded images go as a BYTES
[N] tensor in binary data, each element behind its 4-byte little-endian length. Outputs come back as
JSON numbers, or as binary data when the request asks for it (an output's ``binary_data``, or the
request's ``binary_data_output``). Errors are ``{"error": MESSAGE}`` with the status mapped from the
data plane's (service/http/calls.py): 400, 401, 403, 404, 429, 503, 504 or 500.
"""

import json
from collections.abc import Awaitable, Callable

import numpy as np
from aiohttp import web

from attnserve.manifest import Manifest
from attnserve.service.dataplane import DataPlane
from attnserve.service.errors import ServiceError, invalid
from attnserve.service.grpc.inference_v2 import PLATFORM
from attnserve.service.http.calls import observed, parsed, parsed_json, too_large
from attnserve.service.messages import InferRequest, InferResult
from attnserve.service.metrics import Metrics
from attnserve.service.open_inference import (
    InputTensor,
    OutputRequest,
    OutputTensor,
    infer_request,
    output_tensors,
    version_number,
)

HEADER_LENGTH = "Inference-Header-Content-Length"


def routes(dataplane: DataPlane, metrics: Metrics, version: str) -> list[web.RouteDef]:
    rest = Rest(dataplane, metrics, version)
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    return [
        web.get("/v2/health/live", rest.live),
        web.get("/v2/health/ready", rest.ready),
        web.get("/v2", rest.server_metadata),
        *(web.get(path, rest.model_metadata) for path in (model, versioned)),
        *(web.get(f"{path}/ready", rest.model_ready) for path in (model, versioned)),
        *(web.post(f"{path}/infer", rest.infer) for path in (model, versioned)),
        web.post("/v2/repository/index", rest.repository_index),
        web.post("/v2/repository/models/{model}/load", rest.load),
        web.post("/v2/repository/models/{model}/unload", rest.unload),
    ]


class Rest:
    def __init__(self, dataplane: DataPlane, metrics: Metrics, version: str) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.version = version

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.dataplane.readiness.server_ready
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"name": "attnserve", "version": self.version, "extensions": ["classification", "binary_data"]}
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            version = version_number(request.match_info.get("version", ""))
        except ServiceError:
            version = -1
        ready = version >= 0 and self.dataplane.model_ready(request.match_info["model"], version)
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def model_metadata(self, request: web.Request) -> web.Response:
        async def work(deadline: float | None) -> web.Response:
            described = self.dataplane.describe(
                request.match_info["model"], version_number(request.match_info.get("version", ""))
            )
            m = described.manifest
            return web.json_response(
                {
                    "name": m.name,
                    "versions": [str(v) for v in described.versions],
                    "platform": PLATFORM,
                    "inputs": [
                        {
                            "name": m.input.name,
                            "datatype": "FP32",
                            "shape": [-1, 3, m.input.height, m.input.width],
                        }
                    ],
                    "outputs": [
                        {"name": o.name, "datatype": o.datatype, "shape": o.shape} for o in described.outputs
                    ],
                }
            )

        return await self._call("ModelMetadata", request, work)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return too_large(self.dataplane.settings.max_message_mb)

        async def work(deadline: float | None) -> web.Response:
            version = request.match_info.get("version", "")
            version_number(version)  # a bad one named before the body

            def parse(data: bytes) -> tuple[dict, list[dict], list[OutputRequest], InferRequest]:
                header, binary = _split(data, request.headers.get(HEADER_LENGTH))
                inputs = header.get("inputs")
                if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
                    raise invalid("models here take exactly one input: 'inputs' must be a list of one tensor")
                tensor = _input_tensor(inputs[0], binary)
                wanted = header.get("outputs") or []
                if not isinstance(wanted, list) or not all(
                    isinstance(o, dict) and "name" in o for o in wanted
                ):
                    raise invalid("'outputs' must be a list of {\"name\": ...} objects")
                outputs = [OutputRequest(str(o["name"]), _classification(o)) for o in wanted]
                limit = self.dataplane.settings.max_images_per_request
                model = request.match_info["model"]
                return (
                    header,
                    wanted,
                    outputs,
                    infer_request(model, version, tensor, outputs, deadline, limit),
                )

            header, wanted, outputs, infer = await parsed(body, parse)
            all_binary = bool(_parameters(header).get("binary_data_output", False))
            binary = {o["name"] for o in wanted if _parameters(o).get("binary_data")}

            def build(result: InferResult) -> web.Response:
                tensors = output_tensors(result, outputs)
                binary_names = {t.name for t in tensors} if all_binary else binary
                return _infer_response(result.manifest, header.get("id"), tensors, binary_names)

            return await self.dataplane.infer(infer, build)

        return await self._call("ModelInfer", request, work)

    async def repository_index(self, request: web.Request) -> web.Response:
        async def work(deadline: float | None) -> web.Response:
            body = await request.read()  # small: a repository index request has one flag
            options = parsed_json(body) if body else {}
            ready_only = bool(options.get("ready", False)) if isinstance(options, dict) else False
            return web.json_response(
                [
                    {
                        "name": e.name,
                        "version": str(e.version),
                        "state": "READY" if e.ready else "UNAVAILABLE",
                        "reason": e.reason,
                    }
                    for e in self.dataplane.repository_index(ready_only=ready_only)
                ]
            )

        return await self._call("RepositoryIndex", request, work)

    async def load(self, request: web.Request) -> web.Response:
        async def work(deadline: float | None) -> web.Response:
            await self.dataplane.load_model(request.match_info["model"])
            return web.json_response({})

        return await self._call("RepositoryModelLoad", request, work)

    async def unload(self, request: web.Request) -> web.Response:
        async def work(deadline: float | None) -> web.Response:
            await self.dataplane.unload_model(request.match_info["model"])
            return web.json_response({})

        return await self._call("RepositoryModelUnload", request, work)

    async def _call(
        self, method: str, request: web.Request, work: Callable[[float | None], Awaitable[web.Response]]
    ) -> web.Response:
        return await observed(self.metrics, self.dataplane, method, request.match_info.get("model", ""), work)


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header, and the binary data after it (the binary data extension)."""
    if header_length is None:
        length = len(body)
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise invalid(
                f"{HEADER_LENGTH} {header_length!r} is not a length within the body's {len(body)} bytes"
            )
        length = int(header_length)
    header = parsed_json(body[:length])
    if not isinstance(header, dict):
        raise invalid("the request's JSON must be an object with 'inputs'")
    return header, body[length:]


def _parameters(item: dict) -> dict:
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid("'parameters' must be an object")
    return parameters


def _input_tensor(spec: dict, binary: bytes) -> InputTensor:
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise invalid("the input needs a 'name' and a 'datatype'")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise invalid(f"input {name!r}: 'shape' must be a list of whole numbers")
    size = _parameters(spec).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise invalid(
                f"input {name!r}: binary_data_size {size!r} is not the {len(binary)} bytes after the "
                "JSON header"
            )
        return InputTensor(name, datatype, shape, raw=binary)
    if datatype == "BYTES":
        raise invalid(f"input {name!r}: send encoded images as binary data (the binary data extension)")
    data = spec.get("data")
    if not isinstance(data, list):
        raise invalid(f"input {name!r} has no 'data' and no binary_data_size")
    return InputTensor(name, datatype, shape, values=np.ravel(np.asarray(data, dtype=object)).tolist())


def _classification(output: dict) -> int | None:
    k = _parameters(output).get("classification")
    if k is None:
        return None
    if not isinstance(k, int) or isinstance(k, bool):
        raise invalid(f"output {output['name']!r}: the classification parameter must be a whole number")
    return k


def _infer_response(
    manifest: Manifest, request_id: object, tensors: list[OutputTensor], binary_names: set[str]
) -> web.Response:
    outputs, chunks = [], []
    for t in tensors:
        entry = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.name in binary_names:
            data = t.raw()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif t.datatype == "BYTES":
            entry["data"] = [v.decode() for v in t.data.reshape(-1)]
        else:
            entry["data"] = t.data.reshape(-1).tolist()
        outputs.append(entry)
    body = {"model_name": manifest.name, "model_version": str(manifest.version), "outputs": outputs}
    if isinstance(request_id, str) and request_id:
        body["id"] = request_id
    header = json.dumps(body).encode()
    if not chunks:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join([header, *chunks]),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
