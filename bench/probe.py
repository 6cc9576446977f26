"""grpc.health.v1 Check every 20 ms on one target until SIGTERM, then the latencies as one JSON line.
A process of its own, so that what it measures is the server and not a load generator sharing its
process: a probe thread beside 1024 asyncio callers measured up to 150 ms of its own waiting.

    python -m bench.probe 127.0.0.1:50051 [--tls-ca PEM]
"""

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from attnserve.client import ChannelSecurity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM")
    args = parser.parse_args(argv)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    security = ChannelSecurity(ca=args.tls_ca)
    latencies, failed = [], 0
    with security.channel(args.target, []) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stopping:
            started = time.perf_counter()
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                latencies.append(time.perf_counter() - started)
            except grpc.RpcError:
                failed += 1
            time.sleep(0.02)
    ms = np.array(latencies or [float("nan")]) * 1e3
    summary = {
        "checks": len(latencies),
        "failed": failed,
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
