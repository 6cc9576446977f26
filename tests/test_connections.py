"""Streams and connections are bounded: a client that sends frames and never reads the answers holds a
bounded amount of the server and delays nobody; one connection holds at most max_concurrent_streams
calls. Real servers on loopback."""

import io
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
from PIL import Image

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.api.v1 import vision_pb2_grpc
from attnserve.client import VisionClient
from attnserve.client.clients import detect_request
from attnserve.models.scenes import classification_scene, detection_scene
from attnserve.service import metrics_http
from bench.harness import start_server


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(demo_repository, tmp_path_factory):
    server = start_server(
        demo_repository, tmp_path_factory.mktemp("connections") / "log", "--max-concurrent-streams", "2"
    )
    yield server
    assert server.stop() == 0, server.log()


class Frames:
    """A stream's requests, counted as gRPC takes them: frames with every map, in float16."""

    def __init__(self, count: int) -> None:
        self.taken = 0
        self.frame = detect_request(
            [png(detection_scene(7200, 0, size=512).image)],
            "harnet_detector",
            select=["all"],
            encoding="png_overlay",
            geometry="original_image",
        )
        self.count = count

    def __iter__(self):
        for _ in range(self.count):
            self.taken += 1
            yield self.frame


def test_a_stream_whose_answers_are_never_read_is_held_back_and_delays_no_one(server):
    """HTTP/2 flow control does the bounding: once the unread answers fill the client's buffers, the
    server's write waits, it reads no further frame, and the sender's window fills in turn. Frames of
    150 KiB whose answers (every map as an overlay on the 512 px original) are 700 KiB: here the
    stream stalls after about 55 of the 400 offered, with the server 35 MB larger; 200 frames or 200 MB
    would mean it buffers what nobody reads. (Small answers are absorbed by the client's gRPC library
    instead, and the stream just runs at the server's pace.)"""
    scene = png(classification_scene(7201, 0, size=96).image)
    before = rss_mb(server.process.pid)
    frames = Frames(400)
    # without BDP probing the client's receive window stays at its default rather than growing with the
    # loopback's bandwidth (once, 400 of 400 frames were taken): the test is of the server holding back
    channel = grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
    replies = vision_pb2_grpc.VisionServiceStub(channel).StreamDetect(iter(frames))  # never read
    try:
        deadline = time.monotonic() + 20
        taken = -1
        while frames.taken != taken and time.monotonic() < deadline:  # until the sender is held back
            taken = frames.taken
            time.sleep(1.0)
        assert frames.taken < 200, f"{frames.taken} of 400 frames taken by a stream nobody reads"
        with VisionClient(server.target, timeout=10) as other:  # another connection is served at once
            started = time.monotonic()
            assert other.classify([scene], "cbam_classifier").results[0].labels
            assert time.monotonic() - started < 2.0  # a 96 px classification takes milliseconds
        assert rss_mb(server.process.pid) - before < 200  # bounded: windows, not 400 frames of maps
    finally:
        replies.cancel()
        channel.close()


def test_one_connection_holds_at_most_max_concurrent_streams_calls(server):
    """With max_concurrent_streams 2, two streams left open on one connection make that connection's
    third call wait (on the client: HTTP/2 will not open a third stream), while another connection is
    served."""
    channel = grpc.insecure_channel(server.target)
    stub = vision_pb2_grpc.VisionServiceStub(channel)
    scene = png(classification_scene(7202, 0, size=96).image)
    hold = threading.Event()

    def idle_stream():
        hold.wait(30)
        return
        yield

    open_streams = [stub.StreamClassify(idle_stream()) for _ in range(2)]
    try:
        time.sleep(0.5)
        request = pb.ClassifyRequest(model="cbam_classifier", images=[pb.Image(encoded=scene)])
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(request, timeout=2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with VisionClient(server.target, timeout=10) as other:
            assert other.classify([scene], "cbam_classifier").results[0].labels
        hold.set()
        for stream in open_streams:
            assert list(stream) == []
        assert stub.Classify(request, timeout=10).results[0].labels  # the streams closed: served again
    finally:
        hold.set()
        channel.close()


def threads_of(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_idle_connections_to_the_metrics_port_take_no_thread_each(server):
    """200 connections that never send a request: the server's thread count stays where it was (give or
    take its own workers), they are closed after metrics_http.IDLE_S, and scrapes work after."""
    url = urllib.parse.urlsplit(server.metrics_url)
    before = threads_of(server.process.pid)
    idle = [socket.create_connection((url.hostname, url.port), timeout=5) for _ in range(200)]
    try:
        time.sleep(0.5)
        assert threads_of(server.process.pid) <= before + metrics_http.THREADS
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 30  # the queued ones drain IDLE_S at a time per thread, or close
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
            break
        except OSError:
            time.sleep(0.5)
    assert "attnserve_requests_total" in text or "attnserve_in_flight_requests" in text
