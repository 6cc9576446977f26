"""A load generator: ``concurrency`` workers call an async function back to back, or one stream keeps
``in_flight`` requests unanswered, until ``max_requests`` requests have started or ``max_seconds`` have
passed, whichever comes first; it always stops by itself. Every reply goes through ``check``, so a
wrong answer counts as an error, not as speed."""

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    requests: int  # answered correctly
    errors: int
    seconds: float
    latencies: list[float] = field(repr=False)  # seconds, correct answers only
    images_per_request: int = 1
    error_examples: list[str] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        """Images per second."""
        return self.requests * self.images_per_request / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "throughput_images_per_s": round(self.throughput, 2),
            "p50_ms": round(self.percentile(50) * 1e3, 3),
            "p95_ms": round(self.percentile(95) * 1e3, 3),
            "p99_ms": round(self.percentile(99) * 1e3, 3),
        }


async def run_load(
    call: Callable[[int], Awaitable[object]],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    check: Callable[[object], None] = lambda reply: None,
    images_per_request: int = 1,
) -> LoadResult:
    """``call(i)`` makes request ``i``; ``check(reply)`` raises if the reply is wrong."""
    started = time.perf_counter()
    deadline = started + max_seconds
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            index = issued
            issued += 1
            t0 = time.perf_counter()
            try:
                reply = await asyncio.wait_for(call(index), timeout=max(0.1, deadline - t0 + 30))
                check(reply)
            except Exception as exc:  # a failed call is a measured outcome, not a crash of the harness
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return LoadResult(
        concurrency, len(latencies), len(errors), elapsed, latencies, images_per_request, errors[:3]
    )


async def run_stream(
    open_stream: Callable[[AsyncIterator[int]], AsyncIterator[object]],
    in_flight: int,
    max_requests: int,
    max_seconds: float,
    check: Callable[[object], None] = lambda reply: None,
) -> LoadResult:
    """``open_stream(indices)`` sends request ``i`` for each index it is given and yields the answers in
    order; an index is given while fewer than ``in_flight`` are unanswered. ``check(answer)`` raises if
    an answer is wrong; a failed stream counts as an error. A latency runs from an index's handing out
    to its answer."""
    started = time.perf_counter()
    deadline = started + max_seconds
    room = asyncio.Semaphore(in_flight)
    handed_out: collections.deque[float] = collections.deque()
    latencies: list[float] = []
    errors: list[str] = []

    async def indices() -> AsyncIterator[int]:
        i = 0
        while i < max_requests and time.perf_counter() < deadline:
            await room.acquire()
            handed_out.append(time.perf_counter())
            yield i
            i += 1

    async def take() -> None:
        async for answer in open_stream(indices()):
            t0 = handed_out.popleft()
            room.release()
            try:
                check(answer)
            except Exception as exc:  # a wrong answer is a measured outcome
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.wait_for(take(), timeout=max_seconds + 30)
    except Exception as exc:  # the stream failed or hung: measured, not a crash of the harness
        errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    elapsed = time.perf_counter() - started
    return LoadResult(in_flight, len(latencies), len(errors), elapsed, latencies, 1, errors[:3])
