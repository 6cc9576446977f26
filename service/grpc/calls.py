"""Every RPC's frame (service/calls.py) with the gRPC call's deadline, a failure turned into the
call's status, and a stream's requests run several at a time."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from attnserve.service import calls
from attnserve.service.dataplane import DataPlane
from attnserve.service.metrics import Metrics

T = TypeVar("T")
R = TypeVar("R")


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


async def in_order(
    requests: AsyncIterator[R], window: int, start: Callable[[R], Awaitable[T]]
) -> AsyncIterator[T]:
    """``await start(request)`` for each of a stream's requests, with up to ``window`` of them running at
    once and their results yielded in the requests' order: one stream fills a batch as that many calls
    would, and a client that sends a frame and waits for its answer is answered at once. Reading runs
    at most ``window`` requests ahead of the answers written, so a client that stops reading answers
    stops the server reading its requests (HTTP/2 flow control). Closing the generator cancels the
    requests still running."""
    room = asyncio.Semaphore(window)
    running: asyncio.Queue[asyncio.Future[T] | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                await room.acquire()
                running.put_nowait(asyncio.ensure_future(start(request)))
        finally:
            running.put_nowait(None)  # the end of the requests, or of reading them

    reader = asyncio.ensure_future(read())
    try:
        while (result := await running.get()) is not None:
            yield await result
            room.release()
        await reader  # a read that failed fails the call
    finally:
        reader.cancel()
        while not running.empty():
            if (left := running.get_nowait()) is not None:
                left.cancel()
