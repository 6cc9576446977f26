"""The HTTP port's application: the Open Inference Protocol's REST API (rest.py), the vision API in
JSON (vision.py) and the explorer page (explorer/), behind the same bearer tokens as gRPC
(service/auth.py: the scope each path needs) and the same message size limit."""

from collections.abc import Callable

from aiohttp import web

from attnserve.service import auth
from attnserve.service.dataplane import DataPlane
from attnserve.service.http import explorer, rest, vision
from attnserve.service.http.calls import error
from attnserve.service.metrics import Metrics


def application(
    dataplane: DataPlane, metrics: Metrics, version: str, tokens: auth.TokenFile | None
) -> web.Application:
    settings = dataplane.settings
    middlewares = [_token_check(tokens, metrics)] if tokens is not None else []
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_message_mb * 2**20)
    app.add_routes(rest.routes(dataplane, metrics, version))
    app.add_routes(vision.routes(dataplane, metrics))
    if settings.explorer:
        app.add_routes(explorer.routes())
    return app


def _token_check(tokens: auth.TokenFile, metrics: Metrics) -> Callable:
    @web.middleware
    async def check(request: web.Request, handler: Callable) -> web.StreamResponse:
        needed = auth.http_scope_of(request.path)
        if needed is None:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        refused = auth.refusal(tokens, token, needed)
        if refused is None:
            return await handler(request)
        code, message, reason = refused
        metrics.auth_refused.labels(reason).inc()
        return error(code, message)

    return check
