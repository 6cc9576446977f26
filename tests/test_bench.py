"""The benchmark harness itself, on a tiny run: the load generator counts requests, checks every reply,
and stops by itself (by request count or by time); servers run on the cores they are given. No timing is
asserted."""

import argparse
import asyncio
import os
import re
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from attnserve.client import AsyncVisionClient
from attnserve.manifest import MANIFEST_FILE, MODEL_FILE, Manifest
from bench.__main__ import cpu_list, on_cores
from bench.harness import _tree, start_server
from bench.limits import bound_run
from bench.loadgen import run_load, run_stream
from bench.profile import main as profile_main
from bench.report import document, measured_line, section_title
from bench.workloads import TensorCalls, VisionCalls, image_set


def test_load_generator_stops_by_count_and_by_time():
    calls = []

    async def call(i):
        calls.append(i)
        await asyncio.sleep(0.001)
        return i

    result = asyncio.run(run_load(call, concurrency=4, max_requests=25, max_seconds=60))
    assert result.requests == 25 and sorted(calls) == list(range(25)) and result.errors == 0
    timed = asyncio.run(run_load(call, concurrency=2, max_requests=10**9, max_seconds=0.3))
    assert 0.3 <= timed.seconds < 5 and timed.requests > 0


def test_a_stream_load_keeps_its_requests_in_flight_and_stops_by_itself():
    outstanding, most = 0, 0

    async def echo(indices):
        nonlocal outstanding, most
        sent = asyncio.Queue()

        async def send():
            nonlocal outstanding, most
            async for i in indices:
                outstanding += 1
                most = max(most, outstanding)
                sent.put_nowait(i)
            sent.put_nowait(None)

        sender = asyncio.ensure_future(send())
        while (i := await sent.get()) is not None:
            await asyncio.sleep(0.001)
            outstanding -= 1
            yield i
        await sender

    result = asyncio.run(run_stream(echo, 3, 20, 60, check=lambda i: None))
    assert (result.requests, result.errors) == (20, 0) and most == 3
    timed = asyncio.run(run_stream(echo, 2, 10**9, 0.3))
    assert 0.3 <= timed.seconds < 5 and timed.requests > 0


def test_a_wrong_answer_counts_as_an_error():
    def check(reply):
        if reply % 3 == 0:
            raise AssertionError("wrong")

    async def call(i):
        return i

    result = asyncio.run(run_load(call, concurrency=2, max_requests=9, max_seconds=10, check=check))
    assert result.requests == 6 and result.errors == 3


def test_workloads_against_a_real_server(server, demo_repository):
    images = image_set(demo_repository / "cbam_classifier" / "1", 4)

    async def go():
        async with AsyncVisionClient(server.target) as client:
            vision = VisionCalls(client, "cbam_classifier", images, ["all"])
            with_maps = await run_load(vision, 2, 8, 30, check=vision.check)
            several = VisionCalls(client, "cbam_classifier", images, per_request=3)
            grouped = await run_load(several, 2, 4, 30, check=several.check, images_per_request=3)
            streamed = await run_stream(vision.stream, 3, 10, 30, check=vision.check)
        async with grpc.aio.insecure_channel(server.target) as channel:
            tensors = TensorCalls(channel, "cbam_classifier", images)
            v2 = await run_load(tensors, 2, 8, 30, check=tensors.check)
        return with_maps, grouped, streamed, v2, vision.stage_ms()

    with_maps, grouped, streamed, v2, stages = asyncio.run(go())
    assert (streamed.requests, streamed.errors) == (10, 0), streamed.error_examples
    assert (with_maps.requests, with_maps.errors) == (8, 0), with_maps.error_examples
    # three images a request, each answer checked against its own image
    assert (grouped.requests, grouped.errors) == (4, 0), grouped.error_examples
    assert grouped.throughput == 12 / grouped.seconds
    # the replies' own stage timings: inference took time, and the total holds every stage
    assert 0 < stages["inference"] < stages["total"], stages
    assert stages["decode"] + stages["queue"] + stages["inference"] <= stages["total"], stages
    assert (v2.requests, v2.errors) == (8, 0), v2.error_examples
    wrong = image_set(demo_repository / "cbam_classifier" / "1", 4, seed=1)  # other images' answers
    wrong.jpegs = images.jpegs

    async def mismatched():
        async with AsyncVisionClient(server.target) as client:
            calls = VisionCalls(client, "cbam_classifier", wrong)
            one = await run_load(calls, 1, 4, 30, check=calls.check)
            calls = VisionCalls(client, "cbam_classifier", wrong, per_request=2)
            several = await run_load(calls, 1, 4, 30, check=calls.check, images_per_request=2)
            calls = VisionCalls(client, "cbam_classifier", wrong)
            return one, several, await run_stream(calls.stream, 2, 4, 30, check=calls.check)

    one, several, streamed = asyncio.run(mismatched())
    assert min(one.errors, several.errors, streamed.errors) > 0, "checks catch answers to the wrong images"


def test_regenerating_the_docs_keeps_the_analysis_and_the_models_not_run():
    results = {
        "command": "python -m bench --models b",
        "machine": {"cpu": "cpu", "cores": 2},
        "threads": 2,
        "provider": "cpu",
        "versions": {"attnserve": "0.1.0"},
        "seconds": 1.0,
    }
    previous = (
        "# Benchmarks\n\nold header\n\n### a\n\nMeasured with `make bench`\n\n| a | old |\n\n"
        "### b\n\n| b | old |\n\n## Where the time goes\n\nprofiles and reasons\n"
    )
    page = document(results, "### b\n\n" + measured_line(results) + "\n\n| b | new |\n", previous)
    assert "| b | new |" in page and "| b | old |" not in page and "old header" not in page
    assert page.index("| a | old |") < page.index("| b | new |")  # kept in its place
    assert "Measured with `make bench`" in page and "Measured with `python -m bench --models b`" in page
    assert page.endswith("## Where the time goes\n\nprofiles and reasons\n")


def test_the_io_bound_limit_computes_what_session_run_does(demo_repository):
    """The limit's IO-binding variant, bound to the CPU: the bench binds it to the GPU, where no test can
    run, so its binding and reruns are checked here on the same code."""
    version = demo_repository / "cbam_classifier" / "1"
    manifest = Manifest.read(version / MANIFEST_FILE)
    session = ort.InferenceSession(str(version / MODEL_FILE), providers=["CPUExecutionProvider"])
    x = image_set(version, 3).tensors
    run = bound_run(session, list(manifest.predictions), "cpu")(x)
    for _ in range(2):  # a binding is run again and again by the timing loop
        got = run().copy_outputs_to_cpu()
        want = session.run(list(manifest.predictions), {"images": x})
        assert len(got) == len(want) and all(g.shape == w.shape for g, w in zip(got, want, strict=True))
        assert all(np.allclose(g, w, atol=1e-5) for g, w in zip(got, want, strict=True))


def test_cores_are_named_as_taskset_names_them():
    ours = sorted(os.sched_getaffinity(0))
    assert cpu_list(f"{ours[0]}") == {ours[0]}
    assert cpu_list(f"{ours[0]}-{ours[0]},{ours[-1]}") == {ours[0], ours[-1]}
    with pytest.raises(argparse.ArgumentTypeError, match="not ours"):
        cpu_list(f"{ours[-1] + 1000}")


def _allowed_cpus(pid: int) -> set[str]:
    """The cores each thread of ``pid`` may run on, as the kernel lists them."""
    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text().splitlines()
        lists.add(next(line.split(":")[1].strip() for line in status if line.startswith("Cpus_allowed_list")))
    return lists


def test_a_server_given_cores_runs_there_with_its_workers_and_threads(demo_repository, tmp_path):
    """--cpus keeps the server (its supervisor, both workers and all their threads: ONNX Runtime's,
    decoding, gRPC's) off the load generator's cores; the bench process itself moves and comes back."""
    core = max(os.sched_getaffinity(0))
    server = start_server(demo_repository, tmp_path / "server.log", "--workers", "2", cpus={core})
    try:
        processes = _tree(server.process.pid)
        assert len(processes) >= 3, processes  # the supervisor, two workers (and multiprocessing's helper)
        for pid in processes:
            assert _allowed_cpus(pid) == {str(core)}, pid
    finally:
        assert server.stop() == 0
    before = os.sched_getaffinity(0)
    with on_cores({core}):
        assert os.sched_getaffinity(0) == {core}
    assert os.sched_getaffinity(0) == before


def test_each_provider_and_core_setting_keeps_its_own_section():
    base = {"machine": {"cpu": "cpu", "cores": 16}, "provider": "cpu", "cpus": 16}
    assert section_title("m", base) == "m"
    pinned = {**base, "cpus": 8}
    assert section_title("m", pinned) == "m, server on 8 of 16 cores"
    assert section_title("m", {**pinned, "provider": "cuda"}) == "m, cuda, server on 8 of 16 cores"
    previous = "# Benchmarks\n\n### m\n\n| shared |\n\n## Where the time goes\n"
    page = document(base, "### m, server on 8 of 16 cores\n\n| pinned |\n", previous)
    assert "| shared |" in page and "| pinned |" in page


def test_the_profile_reports_the_load_the_stages_and_the_bare_call_floor(demo_repository, tmp_path, capsys):
    """python -m bench.profile end to end on a real server, briefly and without py-spy: every figure it
    prints is measured (no timing is asserted, only that each was taken)."""
    (tmp_path / "repository").symlink_to(demo_repository)
    argv = ["cbam_classifier", "--work", str(tmp_path), "--seconds", "1", "--concurrency", "4", "--no-py-spy"]
    assert profile_main(argv) == 0
    out = capsys.readouterr().out
    throughput = re.search(r"concurrency 4, [\d.]+ s: ([\d.]+) images/s", out)
    floor = re.search(r"health Check\): ([\d.]+) ms median .*, ([\d.]+) ms of server CPU per call", out)
    assert throughput and float(throughput[1]) > 0, out
    assert floor and float(floor[1]) > 0 and float(floor[2]) > 0, out
    assert re.search(r"server stages, median ms: decode [\d.]+, preprocess", out), out
