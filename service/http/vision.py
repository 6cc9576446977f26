"""The attnserve.v1 vision API over HTTP: the same messages as its gRPC service, in proto3's JSON
mapping (field names in lowerCamelCase, bytes in base64, enums by name, 64-bit integers as strings), so
an image is classified or its objects detected, with the model's maps, by a browser or ``curl``:

    GET  /v1/models                                   ListModelsResponse
    GET  /v1/models/{model}[/versions/{v}]             ModelInfo
    POST /v1/models/{model}[/versions/{v}]/classify    ClassifyRequest → ClassifyResponse
    POST /v1/models/{model}[/versions/{v}]/detect      DetectRequest → DetectResponse

The path names the model (and version); the body is the rest of the request message. Errors as the
other HTTP API's (service/http/calls.py).
"""

from collections.abc import Callable

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.service import vision_api
from attnserve.service.dataplane import DataPlane
from attnserve.service.errors import invalid
from attnserve.service.http.calls import observed, parsed, too_large
from attnserve.service.messages import Prediction, PredictRequest
from attnserve.service.metrics import Metrics
from attnserve.service.open_inference import version_number


def routes(dataplane: DataPlane, metrics: Metrics) -> list[web.RouteDef]:
    vision = Vision(dataplane, metrics)
    model = "/v1/models/{model}"
    versioned = "/v1/models/{model}/versions/{version}"
    return [
        web.get("/v1/models", vision.list_models),
        *(web.get(path, vision.model_info) for path in (model, versioned)),
        *(web.post(f"{path}/classify", vision.classify) for path in (model, versioned)),
        *(web.post(f"{path}/detect", vision.detect) for path in (model, versioned)),
    ]


class Vision:
    def __init__(self, dataplane: DataPlane, metrics: Metrics) -> None:
        self.dataplane = dataplane
        self.metrics = metrics

    async def list_models(self, request: web.Request) -> web.Response:
        async def work(deadline: float | None) -> web.Response:
            return _json_response(_json(vision_api.list_models(self.dataplane.models())))

        return await observed(self.metrics, self.dataplane, "ListModels", "", work)

    async def model_info(self, request: web.Request) -> web.Response:
        async def work(deadline: float | None) -> web.Response:
            model, version = _model_of(request)
            return _json_response(_json(vision_api.model_info(self.dataplane.describe(model, version))))

        return await observed(self.metrics, self.dataplane, "GetModelInfo", request.match_info["model"], work)

    async def classify(self, request: web.Request) -> web.Response:
        return await self._predict(
            "Classify",
            request,
            pb.ClassifyRequest(),
            vision_api.classify_request,
            vision_api.classify_response,
        )

    async def detect(self, request: web.Request) -> web.Response:
        return await self._predict(
            "Detect", request, pb.DetectRequest(), vision_api.detect_request, vision_api.detect_response
        )

    async def _predict(
        self,
        method: str,
        request: web.Request,
        message: pb.ClassifyRequest | pb.DetectRequest,
        translate: Callable[[Message, float | None], PredictRequest],
        respond: Callable[[Prediction], Message],
    ) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return too_large(self.dataplane.settings.max_message_mb)

        async def work(deadline: float | None) -> web.Response:
            await parsed(body, lambda data: _parse(data, message))
            model, version = _model_of(request)
            if message.model not in ("", model) or message.version not in (0, version):
                raise invalid(
                    "the path names the model and version; leave 'model' and 'version' out of the body"
                )
            message.model, message.version = model, version
            # the JSON is built where the data plane builds a reply: on the model's lane when heavy
            reply = await self.dataplane.predict(translate(message, deadline), lambda p: _json(respond(p)))
            return _json_response(reply)

        return await observed(self.metrics, self.dataplane, method, request.match_info["model"], work)


def _model_of(request: web.Request) -> tuple[str, int]:
    return request.match_info["model"], version_number(request.match_info.get("version", ""))


def _parse(body: bytes, message: Message) -> None:
    try:
        json_format.Parse(body.decode("utf-8") if body else "{}", message)
    except UnicodeDecodeError as exc:
        raise invalid(f"the request body is not UTF-8 JSON: {exc}") from None
    except json_format.ParseError as exc:
        raise invalid(f"the request body is not a {message.DESCRIPTOR.name} in JSON: {exc}") from None


def _json(message: Message) -> bytes:
    """Every field, defaults too (an empty list of labels is there, not missing), on one line."""
    return json_format.MessageToJson(message, indent=None, always_print_fields_with_no_presence=True).encode()


def _json_response(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")
