"""Several worker processes behind one port (``--workers``, service/supervisor.py): calls reach every
worker, /metrics sums them, health is SERVING only while every worker is, a killed worker is started
again, SIGTERM drains all of them with no failed call, and no worker outlives its supervisor. Real
servers on loopback, real processes killed with real signals."""

import asyncio
import io
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client.mmap_dict import MmapedDict
from prometheus_server import scraping

from attnserve.client import AsyncVisionClient, VisionClient
from attnserve.cpu import usable_cores
from attnserve.models.scenes import classification_scene
from attnserve.service.settings import Settings
from attnserve.service.supervisor import worker_count, worker_settings
from bench.harness import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
# The kernel hands each connection to one worker, by a hash of its addresses: over 16 connections the
# chance that both of two workers are not reached is 2 / 2**16.
CONNECTIONS = 16


def jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(classification_scene(4100, index).image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def metric(server, name: str, match: str = "") -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
        if match in line
    )


def worker_pids(server) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def probe(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def probe_port(server) -> int:
    line = next(line for line in server.log().splitlines() if "health alone, in plaintext" in line)
    return int(line.rsplit(":", 1)[1])


def requests_by_process(directory: Path) -> dict[int, float]:
    """attnserve_requests_total per process, read from prometheus-client's own files."""
    counts: dict[int, float] = {}
    for file in directory.glob("counter_*.db"):
        pid = int(file.stem.split("_")[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(file)):
            if '"attnserve_requests"' in key:
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not {what} within {seconds} s")


@pytest.fixture
def workers(demo_repository, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # an earlier run's: emptied at start
    server = start_server(
        demo_repository,
        tmp_path / "log",
        "--workers",
        "2",
        "--health-port",
        "0",
        "--grace-period-s",
        "20",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    server.metrics_dir = metrics_dir
    yield server
    if server.process.poll() is None:
        assert server.stop() == 0, server.log()


def test_calls_reach_every_worker_and_metrics_sum_them(workers, tmp_path):
    pids = worker_pids(workers)
    assert len(pids) == 2
    with VisionClient(workers.target, connections=CONNECTIONS) as client:
        for i in range(3 * CONNECTIONS):  # each connection's turn comes three times
            reply = client.classify([jpeg(i)], "cbam_classifier", top_k=1)
            assert reply.results[0].labels
    by_process = requests_by_process(workers.metrics_dir)
    assert set(by_process) == set(pids), by_process  # the stale file is gone; both workers answered
    assert all(count > 0 for count in by_process.values())
    assert metric(workers, "attnserve_requests_total", 'model="cbam_classifier"') == 3 * CONNECTIONS
    assert metric(workers, "attnserve_workers") == 2
    # live gauges are combined as each says: a model is ready in every worker (min), not counted twice
    assert metric(workers, "attnserve_model_ready", 'model="cbam_classifier"') == 1
    assert metric(workers, "attnserve_in_flight_images") == 0
    text = urllib.request.urlopen(workers.metrics_url, timeout=5).read()
    check = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # and a real Prometheus scraping the supervisor sees one server
    with scraping(f"127.0.0.1:{workers.metrics_port}", tmp_path) as query:
        total = query('sum(attnserve_requests_total{model="cbam_classifier"})')
        histogram = query('sum(attnserve_request_duration_seconds_count{model="cbam_classifier"})')
    assert float(total[0]["value"][1]) == float(histogram[0]["value"][1]) == 3 * CONNECTIONS


def test_the_http_port_is_shared_by_every_worker(workers):
    """The supervisor holds the HTTP port as it holds the gRPC one; each request on a new connection
    goes to a worker the kernel picks, and both answer."""
    before = requests_by_process(workers.metrics_dir)
    url = f"http://127.0.0.1:{workers.http_port}/v2/models/cbam_classifier"
    for _ in range(4 * CONNECTIONS):  # a connection each (urllib does not keep them)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
    after = requests_by_process(workers.metrics_dir)
    answered = {pid for pid in after if after[pid] > before.get(pid, 0)}
    assert answered == set(worker_pids(workers)), (before, after)


def test_a_killed_worker_is_started_again_and_health_waits_for_it(workers):
    port = probe_port(workers)
    assert probe(port) == SERVING
    victim = worker_pids(workers)[0]
    os.kill(victim, signal.SIGKILL)
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # NOT_SERVING while a worker is missing, then SERVING again
        status = probe(port)
        seen.add(status)
        if status == SERVING and len(seen) > 1:
            break
        time.sleep(0.02)
    assert seen == {SERVING, health_pb2.HealthCheckResponse.NOT_SERVING}
    assert workers.health() == SERVING  # the API port's health says the same
    pids = worker_pids(workers)
    assert len(pids) == 2 and victim not in pids
    assert f"exited with -{signal.SIGKILL}; starting it again" in workers.log()
    assert metric(workers, "attnserve_worker_restarts_total") == 1
    assert metric(workers, "attnserve_workers") == 2
    # the dead worker's live gauges are dropped: not a third process's ready 1, nor a stale in-flight
    assert metric(workers, "attnserve_model_ready", 'model="cbam_classifier"') == 1
    with VisionClient(workers.target, connections=CONNECTIONS) as client:
        for i in range(CONNECTIONS):
            assert client.classify([jpeg(i)], "cbam_classifier", top_k=1).results[0].labels


def test_sigterm_drains_every_worker_without_a_failed_call(workers):
    async def load() -> list[object]:
        async with AsyncVisionClient(workers.target, timeout=60, connections=CONNECTIONS) as client:
            # 24 calls of 4 images: under one worker's max_in_flight_images (128) even if all reach one
            images = [jpeg(i) for i in range(4)]

            async def caller(k: int) -> object:
                await asyncio.sleep(0.01 * k)
                return await client.classify(images, "cbam_classifier", top_k=1)

            calls = [asyncio.create_task(caller(k)) for k in range(24)]
            await asyncio.sleep(0.1)  # calls in flight on both workers
            workers.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*calls, return_exceptions=True)

    pids = worker_pids(workers)
    replies = asyncio.run(load())
    failed = [r for r in replies if isinstance(r, Exception)]
    assert not failed, failed[:3]
    assert all(len(r.results) == 4 for r in replies)
    assert workers.process.wait(60) == 0, workers.log()
    assert not any(alive(pid) for pid in pids)
    assert workers.log().count("]: stopped") == 2  # each worker's own drain finished


def test_workers_stop_when_their_supervisor_is_killed(workers):
    pids = worker_pids(workers)
    workers.process.kill()
    workers.process.wait(10)
    # each sees its pipe close and drains as on SIGTERM (no calls: it stops at once)
    wait_for(lambda: not any(alive(pid) for pid in pids), 30, "every worker gone")


def test_a_worker_that_cannot_start_stops_the_server_with_its_status(tmp_path):
    log = tmp_path / "log"
    with pytest.raises(RuntimeError, match="server exited with 2"):  # rather than restarting forever
        start_server(tmp_path / "no-such-repository", log, "--workers", "2", timeout=60)
    assert "does not exist" in log.read_text()
    assert "before it was ready; stopping" in log.read_text()


def test_the_worker_count_is_two_cores_each_unless_set():
    assert worker_count(Settings(workers=3)) == 3
    assert worker_count(Settings(provider="cuda")) == 1  # a CUDA context and every model per worker
    assert worker_count(Settings(provider="cpu")) == max(1, min(len(os.sched_getaffinity(0)) // 2, 8))


def test_each_worker_gets_its_share_of_the_cores_and_the_byte_budget():
    one = worker_settings(Settings(intra_op_threads=0, max_in_flight_mb=1000), 2)
    assert one.workers == 1 and one.max_in_flight_mb == 500
    assert one.intra_op_threads >= 1
    # explicit threads are kept: the operator chose them per worker
    assert worker_settings(Settings(intra_op_threads=3), 4).intra_op_threads == 3


def test_usable_cores_follow_the_container_cpu_limit(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")  # no limit
    assert usable_cores(v2) == affinity
    (v2 / "cpu.max").write_text("50000 100000\n")  # half a CPU: one worker, not zero
    assert usable_cores(v2) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(v1) == affinity
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text(f"{100000 * affinity + 1}\n")  # more than the machine
    assert usable_cores(v1) == affinity
