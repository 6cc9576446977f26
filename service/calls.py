"""What every call of every front-end (gRPC and HTTP) does around its work: the in-flight gauge, the
request counter and latency histogram, the server's count of calls in flight that shutdown waits for,
and turning errors into a status code and message (no stack traces to clients)."""

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from attnserve.service.dataplane import DataPlane
from attnserve.service.errors import ServiceError
from attnserve.service.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


async def outcome(
    metrics: Metrics,
    dataplane: DataPlane,
    method: str,
    model: str,
    deadline: float | None,
    work: Callable[[float | None], Awaitable[T]],
) -> tuple[grpc.StatusCode | None, object]:
    """(None, ``await work(deadline)``) or (status code, message), with the metrics recorded either way;
    ``deadline`` is time.monotonic()'s, or None."""
    label = model if dataplane.is_served(model) else "unknown"  # clients cannot grow the label set
    started = time.perf_counter()
    metrics.in_flight.labels(method).inc()
    dataplane.readiness.call_started()
    code: grpc.StatusCode = grpc.StatusCode.OK
    try:
        return None, await work(deadline)
    except ServiceError as exc:
        code = exc.code
        return code, exc.message
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        request_id = uuid.uuid4().hex[:16]
        log.exception("internal error in %s (request id %s)", method, request_id)
        code = grpc.StatusCode.INTERNAL
        return code, f"internal error (request id {request_id}; see the server log)"
    finally:
        dataplane.readiness.call_ended()
        metrics.in_flight.labels(method).dec()
        metrics.requests.labels(label, method, code.name).inc()
        metrics.request_seconds.labels(label, method).observe(time.perf_counter() - started)
