"""Resource governance, against a real server on loopback: a burst over a limit is refused at once
(RESOURCE_EXHAUSTED naming the limit) while the requests admitted are served; every request is counted
until it ends, however it ends; a flood of heavy requests for one model does not hold up another
model's; health answers while the server is saturated. And, in process, that work already running
when its caller leaves keeps the request counted until it ends.

One server for the module, with limits small enough for a few requests to reach them:
max_in_flight_images 8 per model version, max_in_flight_mb 2 for the server, decode_threads 2 (the
default). The heavy images are PNGs of 4000² and 6000² pixels: a few hundred KB on the wire, each a
fifth to a third of a second of decoding, so that a handful of requests keeps the decode threads busy
for seconds without the upload itself loading the machine.
"""

import asyncio
import io
import statistics
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from attnserve.client import AsyncVisionClient
from attnserve.service.errors import ServiceError
from attnserve.service.lanes import Lane
from attnserve.service.metrics import Metrics
from attnserve.service.stages.admission import Admission
from bench.harness import start_server

LIMIT_IMAGES = 8
LIMIT_MB = 2


def png(side: int, colour: tuple[int, int, int], compress_level: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, "PNG", compress_level=compress_level)
    return buffer.getvalue()


def jpeg(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {
        "heavy": png(4000, (200, 40, 40)),  # 56 KB, ~0.2 s to decode and fit
        "heavier": png(6000, (40, 200, 40)),  # 120 KB, ~0.35 s
        "big": png(6000, (40, 40, 200), compress_level=1),  # the same, in 486 KB
        "small": jpeg(96, 1),
    }


@pytest.fixture(scope="module")
def server(demo_repository, tmp_path_factory):
    server = start_server(
        demo_repository,
        tmp_path_factory.mktemp("overload") / "server.log",
        "--max-in-flight-images",
        str(LIMIT_IMAGES),
        "--max-in-flight-mb",
        str(LIMIT_MB),
        "--max-batch-size",
        "1",
        "--max-queue-delay-ms",
        "0",
    )
    yield server
    assert server.stop() == 0, server.log()


def metric(server, name: str, match: str = "") -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if (line.startswith(name + "{") or line.startswith(name + " ")) and match in line
    )


def held(server, model: str | None = None) -> tuple[float, float]:
    """(images in flight for ``model``, or every model; request bytes in flight)."""
    match = f'model="{model}"' if model else ""
    return metric(server, "attnserve_in_flight_images", match), metric(server, "attnserve_in_flight_bytes")


def wait_until_idle(server, seconds: float = 15) -> None:
    """Every ticket returned: work already running when its caller left keeps it until it ends, which
    for the images here is at most a few decodes."""
    end = time.monotonic() + seconds
    while held(server) != (0, 0):
        assert time.monotonic() < end, f"still held after {seconds} s: {held(server)}"
        time.sleep(0.05)


async def timed(call) -> tuple[object, float]:
    started = time.perf_counter()
    try:
        return await call, time.perf_counter() - started
    except grpc.aio.AioRpcError as exc:
        return exc, time.perf_counter() - started


def test_a_burst_over_the_limit_is_refused_at_once_and_the_admitted_are_served(server, images):
    async def burst():
        async with AsyncVisionClient(server.target, timeout=60) as client:
            calls = [timed(client.classify([images["heavy"]], "cbam_classifier")) for _ in range(40)]
            return await asyncio.wait_for(asyncio.gather(*calls), 60)

    shed_before = metric(server, "attnserve_shed_requests_total", 'limit="max_in_flight_images"')
    replies = asyncio.run(burst())
    accepted = [t for r, t in replies if not isinstance(r, grpc.RpcError)]
    refused = [(r, t) for r, t in replies if isinstance(r, grpc.RpcError)]
    assert len(accepted) >= LIMIT_IMAGES, "as many as the limit holds were admitted"
    assert refused, "40 requests of one image at once, against a limit of 8"
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r, _ in refused), refused[0][0]
    message = refused[0][0].details()
    assert "max_in_flight_images" in message and "cbam_classifier/1" in message, message
    assert "retry with backoff" in message
    # At once: a refusal does no decoding, so every one comes back before the first admitted request,
    # which waits for at least one decode of 0.2 s (longer when the cores are busy). Measured on 2 busy
    # cores: the slowest refusal 33-58 ms (the upload of 40 requests of 56 KB included), the first
    # answer 0.40-0.45 s, 7× apart; without admission there is no refusal at all.
    assert max(t for _, t in refused) < min(accepted), (sorted(t for _, t in refused)[-3:], min(accepted))
    shed = metric(server, "attnserve_shed_requests_total", 'limit="max_in_flight_images"') - shed_before
    assert shed == len(refused)
    assert held(server) == (0, 0), "every admitted request returned what it held when it was answered"


def test_request_bytes_in_flight_are_bounded_for_the_whole_server(server, images):
    """Ten requests of ~0.5 MB for a model whose image limit (8) they do not reach: at most four fit
    the server's 2 MiB at once, the others are refused naming max_in_flight_mb."""
    assert 3 * len(images["big"]) < LIMIT_MB * 2**20 < 5 * len(images["big"])

    async def burst():
        async with AsyncVisionClient(server.target, timeout=60) as client:
            calls = [client.classify([images["big"]], "eca_classifier") for _ in range(10)]
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)

    replies = asyncio.run(burst())
    refused = [r for r in replies if isinstance(r, grpc.RpcError)]
    assert 4 <= len(replies) - len(refused) < len(replies)
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert "max_in_flight_mb" in refused[0].details(), refused[0].details()
    assert held(server) == (0, 0)


def test_what_a_request_holds_is_returned_however_it_ends(server, images):
    """Served, invalid, past its deadline while waiting to be decoded, and cancelled by the client while
    decoding: each returns what it holds (the cancelled ones once their decode, which cannot be
    stopped, ends), and the model then admits a full load again."""
    truncated = images["heavy"][: len(images["heavy"]) // 2]

    async def mixed():
        async with (
            AsyncVisionClient(server.target, timeout=60) as client,
            AsyncVisionClient(server.target, timeout=0.3) as hurried,
        ):
            model = "harnet_detector"
            served = [asyncio.create_task(client.detect([images["small"]], model)) for _ in range(2)]
            invalid = [asyncio.create_task(client.detect([truncated], model)) for _ in range(2)]
            # two decode at once (decode_threads 2), so the others wait, past a 0.3 s deadline
            cancelled = [asyncio.create_task(client.detect([images["heavier"]], model)) for _ in range(2)]
            late = [asyncio.create_task(hurried.detect([images["heavier"]], model)) for _ in range(2)]
            await asyncio.sleep(0.15)  # the first two are decoding now
            for task in cancelled:
                task.cancel()
            results = await asyncio.gather(*served, *invalid, *cancelled, *late, return_exceptions=True)
            return results, model

    (ok1, ok2, bad1, bad2, gone1, gone2, late1, late2), model = asyncio.run(mixed())
    assert ok1.results and ok2.results
    assert bad1.code() == bad2.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(gone1, asyncio.CancelledError) and isinstance(gone2, asyncio.CancelledError)
    assert late1.code() == late2.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until_idle(server)

    async def full_load():  # nothing leaked: the model admits its whole limit again
        async with AsyncVisionClient(server.target, timeout=60) as client:
            calls = [client.detect([images["small"]], model) for _ in range(LIMIT_IMAGES)]
            return await asyncio.wait_for(asyncio.gather(*calls), 60)

    assert all(r.results for r in asyncio.run(full_load()))
    assert held(server) == (0, 0)


def test_a_flood_for_one_model_does_not_hold_up_another(server, images):
    """Four requests of two 6000² PNGs for one model (its whole limit: 8 images) keep its two decode
    threads busy for 1.5 s or more; a 96 px JPEG for another model meanwhile is answered as if the
    server were idle.

    Threshold 0.5 s: with one decode pool for all models (before each model had its own lane) that
    request queued behind the flood's decodes: this test against that code measured 1.9 s, and it can
    never take less than one decode of two 6000² images (0.7 s) even on an idle machine. With lanes it
    takes 12-22 ms on 2 busy cores, so 0.5 s sits 20× above what it does and below the least it would
    do without isolation."""

    async def flood():
        async with (
            AsyncVisionClient(server.target, timeout=60) as flooder,
            AsyncVisionClient(server.target, timeout=60) as other,
        ):
            await other.classify([images["small"]], "vit_classifier")  # connected and warm
            heavy = [images["heavier"], images["heavier"]]
            started = time.perf_counter()
            tasks = [asyncio.create_task(flooder.classify(heavy, "cbam_classifier")) for _ in range(4)]
            while held(server, "cbam_classifier")[0] < 2 * len(tasks):  # all four admitted
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # decoding now
            reply, latency = await timed(other.classify([images["small"]], "vit_classifier"))
            still_flooding = sum(not t.done() for t in tasks)
            replies = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            return reply, latency, still_flooding, time.perf_counter() - started, replies

    reply, latency, still_flooding, flood_seconds, replies = asyncio.run(flood())
    assert all(r.results for r in replies), "the flood itself is served"
    assert reply.results[0].labels
    assert still_flooding, "the other model's request was answered during the flood"
    assert latency < 0.5, f"{latency * 1e3:.0f} ms during a flood of {flood_seconds:.1f} s"
    assert held(server) == (0, 0)


def test_health_answers_at_once_while_the_server_is_saturated(server, images):
    """Every decode thread of two models busy with 4000² and 6000² PNGs, and a burst of requests
    mostly refused at the door; grpc.health.v1 Check, every 20 ms from another thread, answers 95 % of
    the time within the goal of 100 ms, every time within 1 s, and half the time within 25 ms.

    Measured here on 2 busy cores: 1-2 ms at the median, 27-44 ms at worst over ~170 checks (the event
    loop runs ahead of the worker threads, which have a lower priority). The worst of ~170 checks is
    the noisiest figure here: on a CI machine shared with other jobs a rare check waits for the kernel
    to schedule this test's own probe thread or the server's gRPC threads (290 ms once, in a fresh-clone
    run), so its bound only says that no check waits on the flood for good (1 s); the median and
    95th-percentile bounds are the ones that fail at once if the event loop is ever blocked by the
    flood's work: with decoding on the loop, a check would wait for a whole decode, 0.2 to 0.35 s."""
    latencies: list[float] = []
    stop = threading.Event()

    def probe():
        with grpc.insecure_channel(server.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            while not stop.is_set():
                started = time.perf_counter()
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                latencies.append(time.perf_counter() - started)
                assert status == health_pb2.HealthCheckResponse.SERVING
                time.sleep(0.02)

    async def saturate():
        async with AsyncVisionClient(server.target, timeout=60) as client:
            floods = [
                client.classify([images[heavy], images[heavy]], model)
                for model, heavy in (("cbam_classifier", "heavier"), ("eca_classifier", "heavy"))
                for _ in range(4)
            ]
            bursts = [client.classify([images["heavy"]], "vit_classifier") for _ in range(60)]
            return await asyncio.wait_for(asyncio.gather(*floods, *bursts, return_exceptions=True), 60)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        time.sleep(0.2)
        replies = asyncio.run(saturate())
    finally:
        stop.set()
        thread.join(10)
    assert any(not isinstance(r, Exception) for r in replies)
    assert len(latencies) >= 20, "probed throughout"
    latencies.sort()
    median, p95, worst = statistics.median(latencies), latencies[int(0.95 * len(latencies))], latencies[-1]
    seen = f"median {median * 1e3:.1f} ms, 95th percentile {p95 * 1e3:.1f} ms, worst {worst * 1e3:.1f} ms"
    assert median < 0.025 and p95 < 0.1 and worst < 1.0, seen
    wait_until_idle(server)


def test_work_running_when_its_caller_leaves_keeps_the_request_counted_until_it_ends():
    """In process: a cancelled request's decode already under way holds its ticket until it ends; one
    still waiting for a thread is dropped without running."""
    admission = Admission(max_in_flight_mb=1, metrics=Metrics())
    lane = Lane(1, "test-lane")
    release = threading.Event()
    ran = []

    async def run():
        running = admission.admit("m", 1, 3, 1000, max_images=4)
        waiting = admission.admit("m", 1, 1, 10, max_images=4)
        with pytest.raises(ServiceError) as refused:
            admission.admit("m", 1, 1, 10, max_images=4)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        first = asyncio.create_task(lane.run(running, release.wait))
        await asyncio.sleep(0.05)  # on the thread now
        second = asyncio.create_task(lane.run(waiting, ran.append, "ran"))
        await asyncio.sleep(0.05)
        for task, ticket in ((first, running), (second, waiting)):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            ticket.release()
        assert admission.images[("m", "1")] == 3 and admission.bytes == 1000, "the running one still counts"
        release.set()
        for _ in range(100):
            if admission.idle():
                break
            await asyncio.sleep(0.01)
        assert admission.idle()
        admission.admit("m", 1, 4, 10, max_images=4).release()  # the whole limit again

    try:
        asyncio.run(run())
    finally:
        lane.pool.shutdown()
    assert not ran
