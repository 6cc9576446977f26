"""The real data plane and both gRPC servicers, in this process and without a network server, over the
tiny models (fuzz/tiny_models.py): built once per process, on first use.

Settings are the server's defaults except where noted in ``SETTINGS``: lower limits, so that the
fuzzer reaches every limit with small inputs and each input stays fast (the checks are the same code);
one thread each, so a fuzz run leaves the machine's other cores alone.
"""

import asyncio
import atexit
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from attnserve.service.dataplane import DataPlane
from attnserve.service.grpc.inference_v2 import InferenceServicer
from attnserve.service.grpc.vision import VisionServicer
from attnserve.service.metrics import Metrics
from attnserve.service.registry import ModelRegistry
from attnserve.service.settings import Settings
from fuzz.tiny_models import write_repository

T = TypeVar("T")
SETTINGS = dict(
    provider="cpu",
    intra_op_threads=1,
    decode_threads=1,
    max_queue_delay_ms=0.0,  # a lone request never waits anyway; no timer in the fuzz loop
    max_image_pixels=4_000_000,  # as the test suite's server; default 40 M
    max_images_per_request=8,  # default 64
    max_request_pixels=6_000_000,  # default 100 M: below 2 × max_image_pixels, so it can bite
    max_message_mb=4,  # default 64: maps in the original geometry reach it with originals of ~400×400
    max_map_side=512,  # default 2048
)


@dataclass
class Plane:
    dataplane: DataPlane
    vision: VisionServicer
    v2: InferenceServicer
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        for served in self.dataplane.registry.all():
            self.run(served.batcher.close())
        self.run(asyncio.sleep(0))  # the batchers' tasks see their cancellation
        self.loop.close()
        self.dataplane.close()

    def check_idle(self) -> None:
        """Between requests every batcher is idle: a request that failed withdrew what it announced and
        nothing is left queued (else later batches would wait, or the queue would fill up for good)."""
        if not self.dataplane.admission.idle():
            raise AssertionError(f"admission still counts {self.dataplane.admission.images} after a request")
        busy = [s.batcher.label for s in self.dataplane.registry.all() if not s.batcher.idle()]
        if busy:
            raise AssertionError(f"batchers not idle after a request (something announced or queued): {busy}")


_plane: Plane | None = None


def plane() -> Plane:
    global _plane
    if _plane is None:
        _plane = _build()
    return _plane


def _build() -> Plane:
    Image.init()  # Pillow's plugins imported now, not in the time of the first image
    # libFuzzer ends the process without Python's exit handlers: the repository only lives while it
    # loads (the models are in memory after)
    folder = tempfile.TemporaryDirectory(prefix="attnserve-fuzz-")
    settings = Settings(repository=write_repository(Path(folder.name)), **SETTINGS).validate()
    metrics, registry = Metrics(), ModelRegistry()
    dataplane = DataPlane(settings, registry, metrics)
    loop = asyncio.new_event_loop()
    with folder:
        loop.run_until_complete(dataplane.lifecycle.start())
    if dataplane.lifecycle.failures or len(registry.all()) != 3:
        raise RuntimeError(f"the tiny models did not load: {dataplane.lifecycle.failures}")
    dataplane.readiness.all_loaded()
    built = Plane(
        dataplane,
        VisionServicer(dataplane, metrics, settings.stream_window),
        InferenceServicer(dataplane, metrics, "fuzz", settings.stream_window),
        loop,
    )
    atexit.register(built.close)
    return built
