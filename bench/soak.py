"""Overload, soak and drain, each bounded in time: what the server holds when far more callers come than
it can serve, whether its memory grows under a steady load, and how calls in flight end on SIGTERM.

    python -m bench.soak                        # about 2 minutes: 20 s overload, 60 s soak, one drain
    python -m bench.soak --soak-seconds 300     # the 5-minute soak

Phases, each against a fresh server on loopback with the demo classifier (cbam_classifier) and
default settings (``--workers``: that many worker processes; 1 unless given), callers spread over 8
clients:
- capacity: 16 callers of 1080p JPEGs; the accepted rate the others are compared with; and the same
  over TLS (capacity_tls), for what TLS costs;
- overload: 1024 callers of 1080p JPEGs (far over capacity): accepted rate, share refused with
  RESOURCE_EXHAUSTED, p50/p99 of accepted calls, server RSS before, at peak and after;
- soak: 16 callers of model-size JPEGs for ``--soak-seconds``: RSS after the first tenth and at the end;
- drain: 768 callers in flight at SIGTERM (admission limits raised so that none is shed): how each
  call ended.

A refused caller backs off 0.1-0.5 s before its next call, as the refusal advises.

In every phase grpc.health.v1 is checked every 20 ms on the gRPC port and on the health-only port,
each from a process of its own (bench/probe.py).
"""

import argparse
import asyncio
import collections
import functools
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from attnserve.client import AsyncVisionClient, ChannelSecurity
from bench.__main__ import export, machine, versions
from bench.certs import issue, make_ca
from bench.harness import ServerProcess, start_server
from bench.peer import free_port
from bench.workloads import image_set

MODEL = "cbam_classifier"
CHANNELS = 8
# a caller refused with these waits this long (uniform) before its next call, as a client told to
# "retry with backoff" would; without it, 1024 callers retrying at once spend most of the server on
# receiving uploads only to refuse them
RETRY_LATER = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
BACKOFF_S = (0.1, 0.5)


class HealthProbe:
    """bench/probe.py on one port, in a process of its own, until ``summary``."""

    def __init__(self, target: str, ca: Path | None = None) -> None:
        command = [sys.executable, "-m", "bench.probe", target, *(["--tls-ca", str(ca)] if ca else [])]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    def summary(self) -> dict:
        """Stops the probe: the latencies of the checks answered, and how many failed."""
        self._process.send_signal(signal.SIGTERM)
        out, _ = self._process.communicate(timeout=30)
        return json.loads(out)


async def callers(
    server: ServerProcess, images: list[bytes], count: int, seconds: float, on_start: float | None = None
) -> dict:
    """``count`` callers, each calling back to back for ``seconds``; outcomes by status code, latencies
    of the answered calls, RSS (the server's processes together) sampled every 0.25 s. ``on_start``:
    send SIGTERM this long after starting and let every caller make one call only."""
    clients = [
        AsyncVisionClient(server.target, timeout=120, security=server.security) for _ in range(CHANNELS)
    ]
    codes: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    refusals: list[float] = []  # seconds to a RESOURCE_EXHAUSTED answer
    rss = [sum(server.rss_mb().values())]
    end = time.monotonic() + seconds

    async def caller(i: int) -> None:
        client = clients[i % CHANNELS]
        while True:
            started = time.monotonic()
            try:
                await client.classify([random.choice(images)], MODEL)
                codes["OK"] += 1
                latencies.append(time.monotonic() - started)
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refusals.append(time.monotonic() - started)
                if exc.code() in RETRY_LATER and on_start is None:
                    await asyncio.sleep(random.uniform(*BACKOFF_S))  # as the refusal advises
            if on_start is not None or time.monotonic() >= end:
                return

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.25)
            if server.process.poll() is None:
                rss.append(sum(server.rss_mb().values()))

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    tasks = [asyncio.create_task(caller(i)) for i in range(count)]
    if on_start is not None:
        await asyncio.sleep(on_start)
        server.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    sampler.cancel()
    by_process = sorted(server.rss_mb().values(), reverse=True) if server.process.poll() is None else []
    for client in clients:
        await client.close()
    total = sum(codes.values())
    return {
        "callers": count,
        "seconds": round(elapsed, 2),
        "calls": total,
        "codes": dict(codes),
        "answered_per_s": round(codes["OK"] / elapsed, 1),
        "refused_share": round(codes["RESOURCE_EXHAUSTED"] / total, 3) if total else 0.0,
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1) if latencies else None,
        "refused_p50_ms": round(float(np.percentile(refusals, 50)) * 1e3, 1) if refusals else None,
        "refused_p99_ms": round(float(np.percentile(refusals, 99)) * 1e3, 1) if refusals else None,
        "rss_mb": {"start": round(rss[0]), "peak": round(max(rss)), "end": round(rss[-1])},
        "rss_mb_by_process_at_end": [round(r) for r in by_process],
        "rss_samples": [round(r) for r in rss],
    }


def phase(
    repository: Path,
    work: Path,
    name: str,
    images: list[bytes],
    count: int,
    seconds: float,
    sigterm_after: float | None = None,
    server_args: tuple[str, ...] = (),
    security: ChannelSecurity | None = None,
    workers: int = 1,
) -> dict:
    """One phase on a fresh server, health probed on the gRPC port and on the health-only port."""
    health_port = free_port()
    server = start_server(
        repository,
        work / f"{name}.log",
        "--health-port",
        str(health_port),
        "--workers",
        str(workers),
        *server_args,
        security=security,
    )
    probes = {
        "grpc_port": HealthProbe(server.target, server.security.ca),
        "health_port": HealthProbe(f"127.0.0.1:{health_port}"),
    }
    try:
        result = asyncio.run(callers(server, images, count, seconds, sigterm_after))
    finally:
        health = {port: probe.summary() for port, probe in probes.items()}
        exit_code = server.stop(60)
    result.update(health=health, exit_code=exit_code)
    print(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'rss_samples'})}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument(
        "--workers", type=int, default=1, help="server worker processes (the RSS figures sum them)"
    )
    parser.add_argument("--work", type=Path, default=Path(".bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args(argv)
    repository = args.work / "repository"
    export(MODEL, repository)
    version_dir = repository / MODEL / "1"
    photos = image_set(version_dir, 16, size=(1920, 1080)).jpegs
    small = image_set(version_dir, 16).jpegs
    pki = args.work / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    make_ca(pki, "ca")
    issue(pki, "server", "ca", "serverAuth")
    run = functools.partial(phase, repository, args.work, workers=args.workers)
    results = {
        "machine": machine(),
        "versions": versions(),
        "workers": args.workers,
        "capacity": run("capacity", photos, 16, 10.0),
        "capacity_tls": run(
            "capacity_tls",
            photos,
            16,
            10.0,
            server_args=("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")),
            security=ChannelSecurity(ca=pki / "ca.pem"),
        ),
        "overload": run("overload", photos, 1024, args.overload_seconds),
        "soak": run("soak", small, 16, args.soak_seconds),
        # admission limits raised: every call reaches the server, so that the drain alone decides
        "drain": run(
            "drain",
            small,
            768,
            0.0,
            sigterm_after=0.3,
            server_args=("--max-in-flight-images", "4096", "--max-queue-size", "4096"),
        ),
    }
    samples = results["soak"]["rss_samples"]
    results["soak"]["rss_growth_mb"] = round(samples[-1] - samples[len(samples) // 10], 1)
    results["overload"]["held"] = round(
        results["overload"]["answered_per_s"] / max(results["capacity"]["answered_per_s"], 1e-9), 2
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    failed = {k: v for k, v in results["drain"]["codes"].items() if k not in ("OK", "UNAVAILABLE")}
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
