"""``attnserve serve`` as a child process on free loopback ports, for tests, benchmarks and tooling:
started, waited for until health says SERVING, and stopped with SIGTERM."""

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from attnserve.client import ChannelSecurity

READY = re.compile(
    r"gRPC(?: \(TLS\))? on [\d.]+:(\d+), metrics on https?://[\d.]+:(\d+)/metrics"
    r"(?:, HTTP(?: \(TLS\))? on [\d.]+:(\d+))?"
)


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path
    security: ChannelSecurity = field(default_factory=ChannelSecurity)  # how to reach it
    http_port: int | None = None  # None: HTTP off

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text()

    def health(self, service: str = "") -> int:
        with self.security.channel(self.target, []) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server and of its live worker processes so far."""
        return sum(_cpu_seconds(pid) for pid in _tree(self.process.pid))

    def rss_mb(self) -> dict[int, float]:
        """Resident memory of the server and of each of its live worker processes, MiB, by pid."""
        return {pid: rss for pid in _tree(self.process.pid) if (rss := _rss_mb(pid)) is not None}

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


def start_server(
    repository: Path,
    log_path: Path,
    *args: str,
    timeout: float = 60,
    until_serving: bool = True,
    security: ChannelSecurity | None = None,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> ServerProcess:
    """``attnserve serve`` on free loopback ports; returns once health says SERVING (or, without
    ``until_serving``, as soon as it answers health checks at all: models may still be loading).
    ``security``: how to reach it, when ``args`` turn on TLS; ``env``: variables added to ours;
    ``cpus``: the cores it and its workers may run on (default: ours)."""
    # one process with one inference thread unless ``args`` say otherwise (a later flag wins)
    command = [
        str(Path(sys.executable).with_name("attnserve")),
        "serve",
        "--repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--intra-op-threads",
        "1",
        "--workers",
        "1",
        *args,
    ]
    log = open(log_path, "w")  # noqa: SIM115 - the process writes it for its whole life
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    if cpus:
        # right after exec, before the interpreter starts a thread or a worker: all of them inherit it
        os.sched_setaffinity(process.pid, cpus)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        match = READY.search(log_path.read_text())
        if match:
            ports = int(match.group(1)), int(match.group(2))
            http_port = int(match.group(3)) if match.group(3) else None
            server = ServerProcess(process, *ports, log_path, security or ChannelSecurity(), http_port)
            try:
                if server.health() == health_pb2.HealthCheckResponse.SERVING or not until_serving:
                    return server
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server not ready in {timeout} s:\n{log_path.read_text()}")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor's workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid, *(p for child in children for p in _tree(int(child)))]


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited since it was listed
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(
        (int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None
    )
