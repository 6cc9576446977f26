"""The data plane: the one protocol-neutral place every front-end calls (service/grpc/). A request
object in, a result out; the request path's stages are service/stages/, in order:

decode → fit → batch → run → postprocess (the model's task handler) → encode maps

each timed for the response and the stage histograms, after admission (stages/admission.py): a request
is counted from here until it is answered and refused at once, before any decoding, when a model's
images in flight or the server's request bytes in flight would go over their limits.

Decoding, fitting, map encoding and the postprocessing of large requests run on threads of the
request's model version (a lane: service/lanes.py), never on the event loop, which is left to admitting,
refusing and answering (health checks included). It also answers what front-ends ask about models:
descriptions, readiness, the repository's index.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import numpy as np

from attnserve.manifest import AttentionOutput, Manifest
from attnserve.service.errors import ServiceError, invalid
from attnserve.service.lifecycle import ModelLifecycle
from attnserve.service.messages import (
    ImageInput,
    ImageResult,
    InferRequest,
    InferResult,
    MapRequest,
    ModelDescription,
    Prediction,
    PredictRequest,
    RepositoryEntry,
    TensorDescription,
)
from attnserve.service.metrics import Metrics
from attnserve.service.readiness import Readiness
from attnserve.service.registry import ModelRegistry, ServedModel
from attnserve.service.settings import Settings
from attnserve.service.stages.admission import Admission, Ticket
from attnserve.service.stages.decode import Opened, opens_without_decoding
from attnserve.service.stages.encode import encode, response_bytes, select
from attnserve.service.stages.fit import Prepared, decode_and_fit, open_images, prepare
from attnserve.service.stages.postprocess import TaskHandler, check_task

DATATYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(float16)": "FP16"}
T = TypeVar("T")
R = TypeVar("R")
# A request of at most this many images and no maps is postprocessed on the event loop: top-k or the
# boxes above a threshold take well under a millisecond per image (0.4 ms for a detector's 100 boxes
# at threshold 0, 14 µs for a classifier), less than a hop to a thread and back. Larger requests, and
# any with maps (resampling, PNG: milliseconds to tens of them), are finished on the model's lane: a
# detector's 64 images took 27 ms, a stall of the loop and of every health check behind it.
INLINE_POSTPROCESS_IMAGES = 4
# A request of at most INLINE_POSTPROCESS_IMAGES images, JPEGs or raw pixels (their headers are read
# without decoding: stages/decode.py), and this many bytes has its headers read right here; if each
# image then decodes to at most this many pixels (after JPEG draft mode), it is decoded and fitted here
# too: a 96 px JPEG takes about 0.2 ms, less than the hand-off to a lane thread and back, whose wake-up
# of the loop was a quarter to a third of the lane's samples in the profile (docs/benchmarks.md). The
# bounds hold the loop's work per request to about a millisecond, whatever the bytes are.
INLINE_DECODE_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 320 * 320
# An Open Inference Protocol reply of more output values than this is built on the model's lane: as
# JSON numbers (HTTP) each costs about 0.8 µs (json.dumps of a list: 83 ms for 100 000), so a large
# request would stall the loop; raw bytes cost far less, and below this the hop costs more than the work.
INLINE_REPLY_VALUES = 4096


class DataPlane:
    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.readiness = Readiness()
        self.admission = Admission(settings.max_in_flight_mb, metrics)
        self.lifecycle = ModelLifecycle(settings, registry, metrics, self.readiness)

    async def predict(self, request: PredictRequest, build: Callable[[Prediction], T]) -> T:
        """The front-end's response, ``build(prediction)``, made while the request still holds its model
        version (a version being retired waits for it)."""
        started = time.perf_counter()
        served = self._served(request.model, request.version)
        check_task(served.manifest, request.task)
        self._check_images(request.images)
        with self._admit(served, len(request.images), _image_bytes(request.images)) as ticket:
            prediction = await self._predict(served, request, ticket, started)
            heavy = len(prediction.results) > INLINE_POSTPROCESS_IMAGES or any(
                r.maps for r in prediction.results
            )
            return await self._reply(served, prediction, build, heavy)

    async def _predict(
        self, served: ServedModel, request: PredictRequest, ticket: Ticket, started: float
    ) -> Prediction:
        manifest, handler = served.manifest, served.handler
        handler.check(request)
        selected = select(manifest, request.maps.select)
        prepared = await self._prepared(
            served,
            ticket,
            request.images,
            lambda headers: self._check_budgets(headers, manifest, selected, request.maps),
            request.deadline,
        )
        outputs = [*manifest.predictions, *(a.name for a in selected)]
        batch = await served.batcher.submit(prepared.batch, outputs, request.deadline)
        if selected or len(prepared.views) > INLINE_POSTPROCESS_IMAGES:
            results, postprocess, encode_seconds = await served.lane.run(
                ticket,
                _finish,
                handler,
                manifest,
                batch.outputs,
                prepared,
                request,
                selected,
                self.settings.max_map_side,
            )
        else:
            post_started = time.perf_counter()
            results = handler.results(manifest, batch.outputs, prepared.views, request)
            postprocess, encode_seconds = time.perf_counter() - post_started, 0.0
        timing = {
            "decode": prepared.decode_seconds,
            "preprocess": prepared.preprocess_seconds,
            "queue": batch.queue_seconds,
            "inference": batch.inference_seconds,
            "postprocess": postprocess,
            "encode": encode_seconds,
        }
        self._observe(request.model, timing)
        timing["total"] = time.perf_counter() - started
        return Prediction(manifest.name, manifest.version, results, timing, uuid.uuid4().hex[:16])

    async def infer(self, request: InferRequest, build: Callable[[InferResult], T]) -> T:
        """The front-end's response, ``build(result)``, to the named outputs for a preprocessed tensor or
        for encoded images decoded and fitted by the model's manifest; made while the request still holds
        its model version, on the model's lane when the outputs are large."""
        served = self._served(request.model, request.version)
        manifest = served.manifest
        if request.input_name != manifest.input.name:
            raise invalid(
                f"model {request.model!r} has the input {manifest.input.name!r}, not {request.input_name!r}"
            )
        outputs = request.outputs or manifest.output_names()
        unknown = [name for name in outputs if name not in manifest.output_names()]
        if unknown:
            names = ", ".join(manifest.output_names())
            raise invalid(f"model {request.model!r} has no output {unknown[0]!r}; its outputs are {names}")
        if request.images is not None:
            self._check_images(request.images)
            count, nbytes = len(request.images), _image_bytes(request.images)
        else:
            tensor, spec = request.tensor, manifest.input
            expected = (3, spec.height, spec.width)
            if tensor.ndim != 4 or tuple(tensor.shape[1:]) != expected or len(tensor) == 0:
                raise invalid(
                    f"input {spec.name!r} of model {request.model!r} must be "
                    f"[N, {', '.join(map(str, expected))}] (N ≥ 1), got {list(tensor.shape)}"
                )
            self._check_count(len(tensor))
            count, nbytes = len(tensor), tensor.nbytes
        with self._admit(served, count, nbytes) as ticket:
            timing = {}
            if request.images is not None:
                prepared = await self._prepared(
                    served, ticket, request.images, self._check_budgets, request.deadline
                )
                tensor = prepared.batch
                timing = {"decode": prepared.decode_seconds, "preprocess": prepared.preprocess_seconds}
            else:
                served.batcher.announce()
            batch = await served.batcher.submit(tensor, outputs, request.deadline)
            timing.update(queue=batch.queue_seconds, inference=batch.inference_seconds)
            self._observe(request.model, timing)
            values = sum(batch.outputs[name].size for name in outputs)
            return await self._reply(
                served, InferResult(manifest, batch.outputs), build, values > INLINE_REPLY_VALUES
            )

    async def load_model(self, model: str) -> list[int]:
        """Load (or reload) ``model`` from the repository by its version policy; the versions served."""
        self.lifecycle.check_mode("load")
        self._check_admin()
        return await self.lifecycle.load(model)

    async def unload_model(self, model: str) -> list[int]:
        """Stop serving ``model`` once the calls it has are answered; the versions it had."""
        self.lifecycle.check_mode("unload")
        self._check_admin()
        return await self.lifecycle.unload(model)

    def _check_admin(self) -> None:
        # with auth_tokens the interceptor has let only the admin scope through (service/auth.py)
        if not (self.settings.auth_tokens or self.settings.unauthenticated_admin):
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "loading and unloading models needs a token with the admin scope (auth_tokens), or "
                "unauthenticated_admin on a trusted network",
            )

    def describe(self, model: str, version: int = 0) -> ModelDescription:
        """``model`` (``version``, 0: the latest) as served; NOT_FOUND when it is not."""
        served = self.registry.get(model, version)
        m = served.manifest
        outputs = [
            TensorDescription(
                o.name, DATATYPES.get(o.type, "FP32"), [d if isinstance(d, int) else -1 for d in o.shape]
            )
            for o in served.model.session.get_outputs()
        ]
        return ModelDescription(
            m,
            self.registry.versions(m.name),
            served.model.provider,
            served.model.warnings,
            outputs,
            self.readiness.model_ready(m.name),
        )

    def models(self) -> list[ModelDescription]:
        """The latest version of every model served, by name."""
        return [self.describe(name) for name in self.registry.names()]

    def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        """The versions served, and (unless ``ready_only``) those in the repository that are not: why
        each failed to load, or that the version policy leaves it out or it was unloaded."""
        entries = [RepositoryEntry(s.manifest.name, s.manifest.version, True) for s in self.registry.all()]
        if not ready_only:
            entries += self.lifecycle.unserved()
        return sorted(entries, key=lambda e: (e.name, e.version))

    def is_served(self, model: str) -> bool:
        """Whether a name is one of the served models (metrics label only those: clients cannot grow them)."""
        return model in self.registry.names()

    def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` (``version``, 0: the latest) is loaded and the server not draining."""
        try:
            served = self.registry.get(model, version)
        except ServiceError:
            return False
        return self.readiness.model_ready(served.manifest.name)

    async def _prepared(
        self,
        served: ServedModel,
        ticket: Ticket,
        images: list[ImageInput],
        before_decoding: Callable[[list[Opened]], None],
        deadline: float | None,
    ) -> Prepared:
        """Decode and fit on the model's lane (small images right here), announced to the batcher so a
        batch may wait for it."""
        served.batcher.announce()
        try:
            spec, max_pixels = served.manifest.input, self.settings.max_image_pixels
            if _small(images):
                opened, open_seconds = open_images(images, spec, max_pixels)
                before_decoding(opened)
                if all(o.decoded_pixels <= INLINE_DECODE_PIXELS for o in opened):
                    return decode_and_fit(opened, spec, open_seconds)
                work = (decode_and_fit, opened, spec, open_seconds)
            else:
                work = (prepare, images, spec, max_pixels, before_decoding)
            lane = served.lane
            async with lane.decoding:
                if deadline is not None and time.monotonic() > deadline:
                    raise ServiceError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "the deadline passed while the request waited to be decoded",
                    )
                return await lane.run(ticket, *work)
        except BaseException:
            served.batcher.withdraw()
            raise

    async def _reply(self, served: ServedModel, result: R, build: Callable[[R], T], heavy: bool) -> T:
        """``build(result)`` on the model's lane when it is ``heavy`` (tens of MiB of maps take hundreds of
        milliseconds to build as protobuf messages; JSON numbers about a microsecond each), else right
        here, where a hop to a thread would cost more than the work."""
        if not heavy:
            return build(result)
        return await asyncio.wrap_future(served.lane.pool.submit(build, result))

    @contextlib.contextmanager
    def _admit(self, served: ServedModel, images: int, nbytes: int) -> Iterator[Ticket]:
        """The request's ticket, and its hold on ``served`` (a version being retired waits for it)."""
        m = served.manifest
        with self.admission.admit(
            m.name, m.version, images, nbytes, served.settings.max_in_flight_images
        ) as t:
            served.in_flight += 1
            try:
                yield t
            finally:
                served.in_flight -= 1

    def _served(self, model: str, version: int) -> ServedModel:
        if not self.readiness.accepting_calls:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
            )
        return self.registry.get(model, version)

    def _check_budgets(
        self,
        headers: list[Opened],
        manifest: Manifest | None = None,
        selected: list[AttentionOutput] = (),
        maps: MapRequest | None = None,
    ) -> None:
        """The request's budgets, from its images' headers, before any is decoded: the pixels they
        decode to together, and the size of the maps asked for against the message limit."""
        pixels, budget = sum(h.decoded_pixels for h in headers), self.settings.max_request_pixels
        if pixels > budget:
            raise invalid(
                f"the request's {len(headers)} images decode to {pixels} pixels together, over the server's "
                f"budget of {budget} per request (max_request_pixels); send fewer or smaller images"
            )
        if not selected:
            return
        size = (manifest.input.height, manifest.input.width)
        side = self.settings.max_map_side
        needed = sum(
            response_bytes(selected, maps.encoding, maps.geometry, size, (h.width, h.height), side)
            for h in headers
        )
        limit = self.settings.max_message_mb * 2**20
        if needed > limit:
            raise invalid(
                f"the {len(selected)} maps asked for would take about {needed / 2**20:.0f} MiB of the "
                f"response, over the server's max_message_mb of {self.settings.max_message_mb}; ask for "
                "fewer maps or images, a PNG encoding or the model grid"
            )

    def _check_images(self, images: list[ImageInput]) -> None:
        if not images:
            raise invalid("the request has no images")
        self._check_count(len(images))

    def _check_count(self, count: int) -> None:
        if count > self.settings.max_images_per_request:
            limit = self.settings.max_images_per_request
            raise invalid(f"the request has {count} images; at most {limit} per request")

    def _observe(self, model: str, timing: dict[str, float]) -> None:
        for stage, seconds in timing.items():
            self.metrics.stage_seconds.labels(model, stage).observe(seconds)

    def close(self) -> None:
        for served in self.registry.all():
            served.lane.pool.shutdown(wait=False)


def _small(images: list[ImageInput]) -> bool:
    return (
        len(images) <= INLINE_POSTPROCESS_IMAGES
        and _image_bytes(images) <= INLINE_DECODE_BYTES
        and all(opens_without_decoding(i) for i in images)
    )


def _image_bytes(images: list[ImageInput]) -> int:
    return sum(len(i.encoded) if i.encoded is not None else len(i.rgb or b"") for i in images)


def _finish(
    handler: TaskHandler,
    manifest: Manifest,
    outputs: dict[str, np.ndarray],
    prepared: Prepared,
    request: PredictRequest,
    selected: list[AttentionOutput],
    max_side: int,
) -> tuple[list[ImageResult], float, float]:
    """Postprocess, and encode the selected maps (on a lane's thread); the results, with each stage's
    seconds."""
    started = time.perf_counter()
    results = handler.results(manifest, outputs, prepared.views, request)
    encode_started = time.perf_counter()
    if selected:
        classes, maps = handler.map_classes(outputs, len(results)), request.maps
        for i, (view, result) in enumerate(zip(prepared.views, results, strict=True)):
            result.maps = [
                encode(a, outputs[a.name][i], maps.encoding, maps.geometry, view, classes[i], max_side)
                for a in selected
            ]
    return results, encode_started - started, time.perf_counter() - encode_started
