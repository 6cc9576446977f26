"""The admission stage, before any other: a request is counted from the moment it enters the data plane
until it is answered, and refused at once (RESOURCE_EXHAUSTED, naming the limit) when counting it would
go over a limit, before anything is decoded, so that a refusal costs microseconds.

Two limits, both checked on every request:

- ``max_in_flight_images``, per model version: images being decoded or waiting to be, queued, in
  inference or being encoded. It bounds the work (and so the wait) ahead of an accepted request; the
  batcher's ``max_queue_size`` only sees images already decoded, so without this a burst of large
  JPEGs waited unboundedly in front of the decode threads.
- ``max_in_flight_mb``, for the whole server: the request image bytes (encoded, raw pixels or a V2
  tensor) held by admitted requests, which is what a burst of large images fills memory with.

A request alone (nothing else in flight for its model, or no bytes held) is always admitted, so a
request larger than a limit is served when the server is otherwise idle rather than refused for good
with advice to retry.

A ticket is released once, when the request ends, however it ends (result, error, cancellation,
deadline); work it started on a thread that cannot be stopped (a decode under way when the caller went
away) keeps it counted until that work ends, so the counts never under-state what the server holds.
"""

import asyncio
import concurrent.futures
import contextlib

import grpc

from attnserve.service.errors import ServiceError
from attnserve.service.metrics import Metrics

RETRY = "retry with backoff, or add replicas"


class Ticket:
    """What one admitted request holds; ``release`` when it ends (idempotent)."""

    def __init__(self, admission: "Admission", key: tuple[str, str], images: int, nbytes: int) -> None:
        self._admission = admission
        self.key = key
        self.images = images
        self.nbytes = nbytes
        self._holds = 0
        self._released = False
        self._returned = False

    def hold(self, work: concurrent.futures.Future) -> None:
        """Keep the ticket counted until ``work`` (running on a thread, not cancellable) ends."""
        loop = asyncio.get_running_loop()
        self._holds += 1

        def ended(_: concurrent.futures.Future) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed first: nothing is counted anymore
                loop.call_soon_threadsafe(self._unhold)

        work.add_done_callback(ended)

    def release(self) -> None:
        self._released = True
        self._maybe_return()

    def _unhold(self) -> None:
        self._holds -= 1
        self._maybe_return()

    def _maybe_return(self) -> None:
        if self._released and not self._holds and not self._returned:
            self._returned = True
            self._admission._return(self)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """The counts, kept on the event loop thread (no lock: only the loop changes them)."""

    def __init__(self, max_in_flight_mb: int, metrics: Metrics) -> None:
        self.max_bytes = max_in_flight_mb * 2**20
        self.metrics = metrics
        self.images: dict[tuple[str, str], int] = {}  # (model, version) → images in flight
        self.bytes = 0  # request image bytes held, the whole server

    def admit(self, model: str, version: int, images: int, nbytes: int, max_images: int) -> Ticket:
        """Count a request of ``images`` images (``nbytes`` bytes of them) for ``model`` ``version``
        (which may have ``max_images`` in flight), or refuse it with RESOURCE_EXHAUSTED naming the
        limit."""
        key = (model, str(version))
        held = self.images.get(key, 0)
        if held and held + images > max_images:
            self._shed(key, "max_in_flight_images")
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {model}/{version} has {held} images in flight (decoding, queued or running), "
                f"and this request's {images} would go over its limit of {max_images} "
                f"(max_in_flight_images); {RETRY}",
            )
        if self.bytes and self.bytes + nbytes > self.max_bytes:
            self._shed(key, "max_in_flight_mb")
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server holds {self.bytes / 2**20:.1f} MiB of request images in flight, and this "
                f"request's {nbytes / 2**20:.1f} MiB would go over its limit of "
                f"{self.max_bytes // 2**20} MiB (max_in_flight_mb); {RETRY}",
            )
        self.images[key] = held + images
        self.bytes += nbytes
        self._observe(key)
        return Ticket(self, key, images, nbytes)

    def idle(self) -> bool:
        """Nothing admitted is still counted."""
        return self.bytes == 0 and not any(self.images.values())

    def _return(self, ticket: Ticket) -> None:
        self.images[ticket.key] -= ticket.images
        self.bytes -= ticket.nbytes
        self._observe(ticket.key)

    def _shed(self, key: tuple[str, str], limit: str) -> None:
        self.metrics.shed.labels(key[0], limit).inc()

    def _observe(self, key: tuple[str, str]) -> None:
        self.metrics.in_flight_images.labels(*key).set(self.images[key])
        self.metrics.in_flight_bytes.set(self.bytes)
