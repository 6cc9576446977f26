"""Dynamic batching: requests for one model that arrive within ``max_queue_delay`` run as one inference.

A batch waits for more requests only while some are known to be on their way (announced by the data
plane before decoding, so still being decoded); with none coming it runs at once, and a lone request
never pays the delay. Requests that queue while the model is busy join the next batch.

The queue is bounded (RESOURCE_EXHAUSTED when full), a request whose deadline has passed is dropped
before inference (DEADLINE_EXCEEDED), and inference runs on the model's own thread so the event loop
keeps accepting requests. A batch fetches the union of the outputs its requests ask for.
"""

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np

from attnserve.service.errors import ServiceError
from attnserve.service.lanes import worker_pool
from attnserve.service.metrics import Metrics
from attnserve.service.stages.run import OnnxModel

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]  # this request's rows
    queue_seconds: float
    inference_seconds: float


@dataclass
class _Job:
    images: np.ndarray
    outputs: list[str]
    future: asyncio.Future
    deadline: float | None  # time.monotonic()
    enqueued: float


class Batcher:
    def __init__(
        self,
        model: OnnxModel,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_images: int,
        metrics: Metrics,
        instances: int = 1,
    ) -> None:
        """``instances``: batches run at once, each on its own thread, on the one session (ONNX
        Runtime's runs are thread-safe); while all are busy, requests queue and join the next batch."""
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_s
        self.max_queue_images = max_queue_images
        self.metrics = metrics
        self.label = f"{model.manifest.name}/{model.manifest.version}"
        self._metric_labels = (model.manifest.name, str(model.manifest.version))
        metrics.queue_capacity.labels(*self._metric_labels).set(max_queue_images)
        self._queue: collections.deque[_Job] = collections.deque()
        self._coming = 0  # requests announced and not yet submitted (being decoded)
        self._queued_images = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = worker_pool(instances, f"infer-{model.manifest.name}")
        self._instances = asyncio.Semaphore(instances)
        self._running: set[asyncio.Task] = set()

    def announce(self) -> None:
        """A request for this model is being prepared: a batch may wait for it."""
        self._coming += 1

    def idle(self) -> bool:
        """Nothing announced, queued or waiting: what every request left behind has been taken back."""
        return self._coming == 0 and self._queued_images == 0 and not self._queue

    def withdraw(self) -> None:
        """An announced request will not be submitted after all (it failed before inference)."""
        self._coming -= 1

    async def submit(self, images: np.ndarray, outputs: list[str], deadline: float | None) -> BatchResult:
        """Queue ``images`` (of an announced request) and wait for their outputs."""
        self._coming -= 1
        if self._queued_images + len(images) > self.max_queue_images:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the queue for model {self.label} is full ({self._queued_images} images waiting, limit "
                f"{self.max_queue_images}); retry with backoff or add replicas",
            )
        if self._worker is None:
            self._arrived = asyncio.Event()
            self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.label}")
        job = _Job(images, outputs, asyncio.get_running_loop().create_future(), deadline, time.monotonic())
        self._queue.append(job)
        self._set_depth(len(images))
        self._arrived.set()
        return await job.future

    async def close(self) -> None:
        """Stop the batching task (and with it the last reference to the model it holds, so that a
        retired version's memory can be released right after)."""
        for task in [self._worker, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._executor.shutdown(wait=False)

    def _set_depth(self, change: int) -> None:
        self._queued_images += change
        self.metrics.queue_depth.labels(*self._metric_labels).set(self._queued_images)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            # an instance first, then the batch: what queues while every instance is busy joins it
            await self._instances.acquire()
            jobs = await self._collect()
            jobs = [j for j in jobs if self._still_wanted(j)]
            if not jobs:
                self._instances.release()
                continue
            task = asyncio.create_task(self._infer(jobs))
            self._running.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._instances.release()

    async def _collect(self) -> list[_Job]:
        """The first job, and whatever joins it within max_delay, up to max_batch_size images."""
        first = self._queue.popleft()
        jobs, size = [first], len(first.images)
        close_at = first.enqueued + self.max_delay
        while size < self.max_batch_size:
            if self._queue:
                if size + len(self._queue[0].images) > self.max_batch_size:
                    break
                job = self._queue.popleft()
                jobs.append(job)
                size += len(job.images)
                continue
            remaining = close_at - time.monotonic()
            if remaining <= 0 or self._coming <= 0:  # nothing on its way: waiting would only add latency
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        self._set_depth(-size)
        return jobs

    @staticmethod
    def _still_wanted(job: _Job) -> bool:
        if job.future.done():  # the caller went away
            return False
        if job.deadline is not None and time.monotonic() > job.deadline:
            job.future.set_exception(
                ServiceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while the request was queued"
                )
            )
            return False
        return True

    async def _infer(self, jobs: list[_Job]) -> None:
        size = sum(len(j.images) for j in jobs)
        outputs = list(dict.fromkeys(name for j in jobs for name in j.outputs))
        started = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [j.images for j in jobs], outputs
            )
        except Exception as exc:
            log.exception("inference failed for %s (batch of %d)", self.label, size)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(
                        ServiceError(grpc.StatusCode.INTERNAL, f"inference failed: {exc}")
                    )
            return
        elapsed = time.monotonic() - started
        self.metrics.batch_size.labels(*self._metric_labels).observe(size)
        row = 0
        for job in jobs:
            n = len(job.images)
            if not job.future.done():
                rows = {name: results[name][row : row + n] for name in job.outputs}
                job.future.set_result(BatchResult(rows, started - job.enqueued, elapsed))
            row += n

    def _run_batch(self, parts: list[np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """On the model's thread: the requests' images joined (a copy of the whole batch, kept off the
        event loop) and run."""
        return self.model.run(parts[0] if len(parts) == 1 else np.concatenate(parts), outputs)
