"""Where a served request's time goes: runs attnserve under load (concurrency 16, JPEGs at the model's
size) and reports how the cores split between the server and the load generator, the server's CPU per
image, the replies' own stage timings against the latency the client saw, and a py-spy profile of the
server summarised by thread and by innermost Python function.

    python -m bench.profile cbam_classifier       # after python -m bench has exported the models
    python -m bench.profile cbam_classifier --concurrency 1 --cpus 0   # batch-1 latency, server on core 0
"""

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.__main__ import cpu_list, load_generator_cores, on_cores, vision
from bench.harness import ServerProcess, start_server
from bench.workloads import image_set


def summarise(raw: Path, top: int = 6) -> list[str]:
    """py-spy's raw (collapsed) stacks → share of samples per thread, and per innermost function."""
    threads, leaves = collections.Counter(), collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        threads[thread] += int(count)
        leaves[thread][frames[-1].split(" (")[0]] += int(count)
    total = sum(threads.values()) or 1
    lines = [f"{total} samples"]
    for thread, n in threads.most_common(top):
        inner = ", ".join(f"{f} {c / n:.0%}" for f, c in leaves[thread].most_common(3))
        lines.append(f"  {thread}: {n / total:.0%} of samples ({inner})")
    return lines


def bare_calls(server: ServerProcess, concurrency: int, calls: int = 2000) -> tuple[float, float]:
    """Calls that do nothing (grpc.health.v1 Check) from this process's asyncio client: the median round
    trip one at a time, the floor under any served request's latency; and the server's CPU per call
    with ``concurrency`` in flight, the floor under its CPU per request (gRPC's own work)."""

    async def go() -> tuple[float, float]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest()
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                await stub.Check(check, timeout=5)
                times.append(time.perf_counter() - started)

            async def in_turn(n: int) -> None:
                for _ in range(n):
                    await stub.Check(check, timeout=5)

            cpu = server.cpu_seconds()
            await asyncio.gather(*(in_turn(calls // concurrency) for _ in range(concurrency)))
            cpu_per_call = (server.cpu_seconds() - cpu) / (calls // concurrency * concurrency)
        # the first tenth warms the channel up
        return float(np.median(times[calls // 10 :])) * 1e3, cpu_per_call * 1e3

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--work", type=Path, default=Path(".bench"))
    parser.add_argument(
        "--cpus", type=cpu_list, help="the server's cores, e.g. 0 (default: all, shared with the load)"
    )
    parser.add_argument("--threads", type=int, help="the server's threads (default: one per core)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--maps", nargs="*", default=[], help="the maps each request asks for (e.g. all)")
    parser.add_argument(
        "--no-py-spy",
        action="store_true",
        help="the load and its CPU figures alone, nothing sampling the server",
    )
    args = parser.parse_args(argv)
    args.cpus = args.cpus or os.sched_getaffinity(0)
    repository = args.work / "repository"
    images = image_set(repository / args.model / "1", 32)
    threads = str(args.threads or len(args.cpus))
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    settings = ["--intra-op-threads", threads, "--decode-threads", threads, "--max-batch-size", "16"]
    server = start_server(
        repository, args.work / "logs" / "profile.log", *settings, "--max-queue-size", "4096", cpus=args.cpus
    )
    raw = args.work / "logs" / "profile.txt"
    py_spy = Path(sys.executable).with_name("py-spy")
    record = [
        "record",
        "--pid",
        str(server.process.pid),
        "--duration",
        str(int(args.seconds)),
        "--rate",
        "200",
    ]
    options = ["--format", "raw", "--threads", "--nonblocking", "--output", str(raw)]
    spy = None
    if not args.no_py_spy:
        spy = subprocess.Popen(
            [str(py_spy), *record, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    try:
        budget = dict(max_requests=10**6, max_seconds=args.seconds)
        with on_cores(load_generator_cores(args.cpus)):
            floor_ms, floor_cpu_ms = bare_calls(server, args.concurrency)
            load = vision(server, args.model, images, args.maps, args.concurrency, budget)
        if spy is not None:
            spy.wait(60)
    finally:
        server.stop()
    print(
        f"{args.model}, concurrency {args.concurrency}, {load['seconds']:.1f} s: "
        f"{load['throughput_images_per_s']} images/s, p50 {load['p50_ms']} ms"
    )
    stages = load["server_stages_ms"]
    print("server stages, median ms: " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print(
        f"a bare gRPC call to the same server (health Check): {floor_ms:.3f} ms median round trip one at a "
        f"time, {floor_cpu_ms:.3f} ms of server CPU per call at concurrency {args.concurrency}"
    )
    print(f"server: {load['server_cores']:.2f} cores, {load['server_cpu_ms_per_image']:.2f} ms CPU per image")
    print(
        f"load generator: {load['client_cores']:.2f} cores, {load['client_cpu_ms_per_image']:.2f} ms CPU "
        "per request"
    )
    if spy is not None:
        print("\n".join(summarise(raw)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
