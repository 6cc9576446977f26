"""Worker threads: each model version's lane for decoding, fitting and encoding its requests, and the
pools behind lanes and inference, at a lower priority than the event loop.

A lane is one model version's own threads for decoding, fitting and encoding its requests' images
(each served model has one: service/registry.py).

Per model version rather than one pool for all, by measurement (2 cores, decode_threads 2): with one
shared pool, eight requests of two 6000×6000 PNGs for one model held both threads and a 96 px JPEG
for another model waited behind them, 4.8-5.8 s instead of 5 ms; capping each model at one of the
shared pool's two threads would fix that, but costs a lone model 23-36 % of its 1080p-JPEG
throughput (103-107 against 134-161 requests/s at concurrency 16). With a lane each, a model's work
never queues behind another's (the same JPEG took 4-21 ms during that flood): the OS shares the
cores between the threads that have work, and a lone model keeps every thread. Threads start when
a model first needs them; at most ``decode_threads`` decodes per busy model run at once, each
bounded by max_request_pixels, and what requests hold by admission (max_in_flight_mb).

``decoding`` admits at most ``decode_threads`` of the lane's requests to its pool at a time; the
rest wait on the event loop, where leaving (cancellation, deadline) costs nothing, and an accepted
request's encoding, which finishes a request and frees what it holds, queues behind at most those
and not behind every request waiting to be decoded.
"""

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from attnserve.service.stages.admission import Ticket

T = TypeVar("T")

# Niceness of the threads that decode, encode and run inference: below the event loop's, so that when the
# cores are busy the loop, which admits and refuses requests and answers health checks, runs first.
# Measured on 2 cores, 1024 callers at once with 1080p JPEGs: refusals came back in 2.2-2.9 s at nice 10
# (the upload of the burst itself takes 1.3-1.7 s) against 3.3-5.5 s at 0; health's median 2 ms
# against 7-12 ms. A lower priority never idles a core: with the loop idle, the workers get every one.
WORKER_NICE = 10


def worker_pool(threads: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool for bulk work (decoding, encoding, inference), each thread at ``WORKER_NICE``."""
    return concurrent.futures.ThreadPoolExecutor(
        threads, thread_name_prefix=name, initializer=_lower_priority
    )


def _lower_priority() -> None:
    # Linux sets a thread id's niceness for that thread alone (elsewhere the id is no process's: left
    # alone); where it is not allowed, the thread keeps the process's priority
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


class Lane:
    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self.pool = worker_pool(threads, name)
        self.decoding = asyncio.Semaphore(threads)  # requests let into the pool at once

    async def run(self, ticket: Ticket, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` on a lane's thread. If the caller goes away meanwhile, work not started yet
        is dropped; work already running cannot be stopped, and keeps the request's ticket counted
        until it ends."""
        future: concurrent.futures.Future = self.pool.submit(work, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():
                ticket.hold(future)
            raise
