"""Every HTTP call's frame (service/calls.py: metrics, errors) with the reply as aiohttp's: a failure
becomes ``{"error": MESSAGE}`` with the HTTP status of its gRPC code, as the Open Inference Protocol's
REST API has it and the vision API's JSON follows."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from aiohttp import web

from attnserve.service import calls
from attnserve.service.dataplane import DataPlane
from attnserve.service.errors import invalid
from attnserve.service.metrics import Metrics

T = TypeVar("T")
# A body over this is parsed on a thread: JSON numbers parse into a tensor at about 25 ms per MiB (0.47 s
# for 19 MiB, measured), base64 images into a message at about 8 ms per MiB; below it, a few ms at most.
INLINE_PARSE_BYTES = 256 * 1024
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,  # retry with backoff, as the message says
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def error(code: grpc.StatusCode, message: str) -> web.Response:
    return web.json_response({"error": message}, status=STATUS.get(code, 500))


def too_large(max_message_mb: int) -> web.Response:
    """The reply to a body over the limit, refused before the call as gRPC refuses such a message."""
    return web.json_response(
        {"error": f"the request body is over the server's max_message_mb of {max_message_mb} MiB"}, status=413
    )


async def observed(
    metrics: Metrics,
    dataplane: DataPlane,
    method: str,
    model: str,
    work: Callable[[float | None], Awaitable[web.Response]],
) -> web.Response:
    """``await work(None)`` (HTTP calls carry no deadline), counted and timed under ``http/METHOD``."""
    code, value = await calls.outcome(metrics, dataplane, f"http/{method}", model, None, work)
    return value if code is None else error(code, str(value))


async def parsed(body: bytes, parse: Callable[[bytes], T]) -> T:
    """``parse(body)``, on a thread when the body is large: a request's JSON is parsed into tensors or
    messages before any limit of the data plane's applies, and a body of max_message_mb must not stall
    the event loop (and every health check behind it) meanwhile."""
    if len(body) <= INLINE_PARSE_BYTES:
        return parse(body)
    return await asyncio.to_thread(parse, body)


def parsed_json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"the request body is not JSON: {exc}") from None
