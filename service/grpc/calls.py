"""Every RPC's frame (service/calls.py) with the gRPC call's deadline, and a failure turned into the
call's status."""

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from attnserve.service import calls
from attnserve.service.dataplane import DataPlane
from attnserve.service.metrics import Metrics

T = TypeVar("T")


async def observed(
    metrics: Metrics,
    dataplane: DataPlane,
    method: str,
    model: str,
    context: grpc.aio.ServicerContext,
    work: Callable[[float | None], Awaitable[T]],
) -> T:
    """``await work(deadline)``, counted and timed; a failure aborts the call with its status."""
    code, value = await outcome(metrics, dataplane, method, model, context, work)
    if code is not None:
        await context.abort(code, value)
    return value


async def outcome(
    metrics: Metrics,
    dataplane: DataPlane,
    method: str,
    model: str,
    context: grpc.aio.ServicerContext,
    work: Callable[[float | None], Awaitable[T]],
) -> tuple[grpc.StatusCode | None, object]:
    """(None, result) or (status code, message), with the metrics recorded either way."""
    remaining = context.time_remaining()
    deadline = time.monotonic() + remaining if remaining is not None else None
    return await calls.outcome(metrics, dataplane, method, model, deadline, work)
