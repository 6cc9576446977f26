"""Streams run several requests at once and answer in order (stream_window): one stream fills a batch,
a client that waits for each answer before sending the next frame is answered at once, and the first
failed frame ends the stream after the answers before it. A real server on loopback."""

import asyncio
import queue
import urllib.request

import grpc
import pytest

from attnserve.api.v1 import vision_pb2_grpc
from attnserve.client import AsyncVisionClient, VisionClient
from attnserve.client.clients import classify_request
from attnserve.models.scenes import classification_scene
from attnserve.service.settings import Settings
from bench.harness import start_server
from tests.test_service import encode

WINDOW = 4


@pytest.fixture(scope="module")
def server(demo_repository, tmp_path_factory):
    """Batches of up to 16 images that wait up to 50 ms for requests being decoded: a stream's frames
    batch together as far as its window lets them."""
    log = tmp_path_factory.mktemp("streams") / "log"
    settings = ["--stream-window", str(WINDOW), "--max-batch-size", "16", "--max-queue-delay-ms", "50"]
    server = start_server(demo_repository, log, *settings)
    yield server
    assert server.stop() == 0, server.log()
    # frames cancelled in the window (a failed frame's successors) leave no error behind
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return [encode(classification_scene(6100 + i, i % 6, size=96).image) for i in range(24)]


def batch_sizes(server, model: str) -> dict[str, float]:
    """attnserve_batch_size's cumulative buckets for ``model``: upper bound → batches."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("attnserve_batch_size_bucket{") and f'model="{model}"' in line:
            buckets[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return buckets


def test_one_stream_runs_its_window_of_frames_together_and_answers_in_order(server, frames):
    with VisionClient(server.target) as client:
        singles = [client.classify([f], "eca_classifier").results[0].labels[0] for f in frames]
        before = batch_sizes(server, "eca_classifier")
        streamed = [r.results[0].labels[0] for r in client.stream_classify(frames, "eca_classifier")]
    after = batch_sizes(server, "eca_classifier")
    # in order: each answer is its own frame's (the scenes cycle through six classes; a batch's scores
    # differ from a single image's in the last bits only)
    assert [s.class_id for s in streamed] == [s.class_id for s in singles]
    assert all(abs(a.score - b.score) < 1e-3 for a, b in zip(streamed, singles, strict=True))
    batches = after["+Inf"] - before["+Inf"]
    # frames ran together (one at a time would be 24 batches of 1), never more than the window at once
    assert batches < len(frames), f"{batches} batches for {len(frames)} frames of one stream"
    assert after[f"{WINDOW}.0"] - before[f"{WINDOW}.0"] == batches, "a batch held more than the window"


def test_a_client_that_waits_for_each_answer_is_answered_at_once(server, frames):
    """The server reads ahead only while it has room, and answers what is done without waiting for
    more frames: a client that sends the next frame only after the last answer is not stuck."""
    answered: queue.Queue = queue.Queue()

    def one_by_one():
        for frame in frames[:6]:
            yield classify_request([frame], "eca_classifier")
            answered.get(timeout=10)  # the answer to this frame, before the next is sent

    count = 0
    with grpc.insecure_channel(server.target) as channel:
        replies = vision_pb2_grpc.VisionServiceStub(channel).StreamClassify(one_by_one(), timeout=30)
        for reply in replies:
            assert reply.results[0].labels
            count += 1
            answered.put(True)
    assert count == 6


def test_the_first_failed_frame_ends_the_stream_after_the_answers_before_it(server, frames):
    """The frames after it may have started (the window): they are cancelled, not answered."""
    broken = frames[:3] + [b"not an image"] + frames[3:10]
    got = []
    with VisionClient(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            for reply in client.stream_classify(broken, "eca_classifier"):
                got.append(reply)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not an image" in err.value.details()
        assert len(got) == 3
        assert client.classify(frames[:1], "eca_classifier").results[0].labels, "still serving"


def test_stream_window_must_be_positive():
    with pytest.raises(ValueError, match="stream_window must be at least 1, not 0"):
        Settings(stream_window=0).validate()


def test_the_async_client_streams_frames_as_they_come(server, frames):
    """Frames from an async iterable (a camera) are sent as they come and answered in order."""

    async def camera():
        for frame in frames[:5]:
            await asyncio.sleep(0.01)
            yield frame

    async def go():
        async with AsyncVisionClient(server.target) as client:
            singles = [await client.classify([f], "eca_classifier") for f in frames[:5]]
            streamed = [r async for r in client.stream_classify(camera(), "eca_classifier")]
            return [r.results[0].labels[0] for r in singles], [r.results[0].labels[0] for r in streamed]

    singles, streamed = asyncio.run(go())
    assert [s.class_id for s in streamed] == [s.class_id for s in singles]
    assert all(abs(a.score - b.score) < 1e-3 for a, b in zip(streamed, singles, strict=True))
