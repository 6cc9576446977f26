"""``attnserve serve`` with several workers: N server processes sharing one port, so the Python work of
each request (protobuf, asyncio, decoding) runs on every core instead of under one interpreter's lock.

The supervisor holds the port (bound with SO_REUSEPORT, never listening, so the kernel hands connections
only to workers, and a restarted worker binds the same port even when it was 0), starts each worker with
``spawn`` (a fresh interpreter: nothing of ONNX Runtime or gRPC is inherited across fork), and:

- serves /metrics for all of them: prometheus-client's multiprocess mode, its directory
  (``$PROMETHEUS_MULTIPROC_DIR``, or a temporary one) emptied at start, a dead worker's live gauges
  dropped (``mark_process_dead``);
- serves the plaintext probe port, and tells every worker what health says for the whole server: a
  name is SERVING only while it is in every worker;
- forwards SIGTERM (and SIGINT) to every worker, each draining as a single server does, and exits 0 once
  all have stopped cleanly;
- starts again a worker that exits after it was ready (logged, counted in
  ``attnserve_worker_restarts_total``); one that exits before it was ever ready stops the server with
  its status, as a single process would, rather than restarting a broken configuration forever.

The kernel balances connections, not calls: a client with one connection reaches one worker. Clients
should open several (our clients do: ``connections``), or spread calls with client-side round-robin.
"""

import contextlib
import dataclasses
import importlib.util
import logging
import math
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from importlib.metadata import PackageNotFoundError, distribution
from multiprocessing.connection import Connection, wait
from pathlib import Path

from attnserve.cpu import usable_cores
from attnserve.service.settings import Settings, listening
from attnserve.service.worker_link import run_worker

log = logging.getLogger("attnserve")
MAX_AUTO_WORKERS = 8  # each worker holds every model: past this, memory grows faster than throughput
# Cores per worker when the count is chosen: with one, a worker's inference runs on one ONNX Runtime
# thread, which on 2 cores cost the demo classifier 0.9-1.8 ms of batch-1 latency against one process
# with both (and gained 1.6-1.7x on 1080p JPEGs: docs/benchmarks.md, Where the time goes)
CORES_PER_WORKER = 2
STOP_MARGIN_S = 5.0  # beyond a worker's own shutdown_delay_s + grace_period_s, before it is killed
TICK_S = 0.2  # how often the supervisor's loop looks at its signal flag


def worker_count(settings: Settings) -> int:
    """``settings.workers``, or when 0: one per two usable cores (at least 1, at most 8); 1 where
    inference runs on a GPU, where each worker would hold its own CUDA context and copy of every
    model."""
    if settings.workers:
        return settings.workers
    gpu = settings.provider == "cuda" or (settings.provider == "auto" and _has_gpu_build())
    return 1 if gpu else max(1, min(usable_cores() // CORES_PER_WORKER, MAX_AUTO_WORKERS))


def _has_gpu_build() -> bool:
    """Whether ONNX Runtime's CUDA build is installed (the gpu extra), without importing it here."""
    try:
        distribution("onnxruntime-gpu")
    except PackageNotFoundError:
        return False
    return True


def worker_settings(settings: Settings, workers: int) -> Settings:
    """One worker's settings: the cores split between workers (intra_op_threads 0), and the server-wide
    byte budget too, since it bounds the pod's memory (per-model limits stay each worker's own)."""
    threads = settings.intra_op_threads or max(1, usable_cores() // workers)
    return dataclasses.replace(
        settings,
        workers=1,
        intra_op_threads=threads,
        max_in_flight_mb=max(1, math.ceil(settings.max_in_flight_mb / workers)),
    )


@dataclasses.dataclass
class Worker:
    index: int
    process: multiprocessing.Process
    connection: Connection
    listening: bool = False
    ever_ready: bool = False
    ready: dict[str, bool] = dataclasses.field(default_factory=dict)  # name ("" the worker) → ready


class Supervisor:
    def __init__(self, settings: Settings, count: int, metrics_dir: str) -> None:
        # Imported here, not with the module: prometheus-client picks its storage when first imported, so
        # only once supervise() has set PROMETHEUS_MULTIPROC_DIR; and the probe port's generated API
        # (both gRPC APIs' descriptors) only where a supervisor runs, not wherever worker_count is read
        from attnserve.service.health import ProbePort
        from attnserve.service.metrics import SupervisorMetrics

        self.settings, self.count = settings, count
        self.metrics_dir = metrics_dir
        self.metrics = SupervisorMetrics(metrics_dir)
        self._context = multiprocessing.get_context("spawn")
        self._reserved = [_reserve_port(settings.host, settings.port)]  # and the HTTP port, held alike
        self.port = self._reserved[0].getsockname()[1]
        self.http_port = None
        if settings.http_port >= 0:
            self._reserved.append(_reserve_port(settings.host, settings.http_port))
            self.http_port = self._reserved[-1].getsockname()[1]
        self._worker_settings = dataclasses.replace(
            worker_settings(settings, count),
            port=self.port,
            http_port=self.http_port if self.http_port is not None else -1,
            health_port=-1,
        )
        self.probes = ProbePort(settings.host, settings.health_port) if settings.health_port >= 0 else None
        self.health: dict[str, bool] = {}  # the whole server's, as told to the workers
        self._logged_ready = False
        self.workers: list[Worker] = []
        self.stopping = False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "stopping", True))
        metrics_server = self.metrics.serve(self.settings)
        if self.probes is not None:
            log.info("health alone, in plaintext, on %s:%d", self.settings.host, self.probes.port)
        self.workers = [self._start(i) for i in range(self.count)]
        announced = False
        status = 0
        try:
            while not self.stopping:
                if not announced and all(w.listening for w in self.workers):
                    announced = True
                    log.info(
                        "%s; %d workers loading models from %s",
                        listening(self.settings, self.port, metrics_server.server_port, self.http_port),
                        self.count,
                        self.settings.repository,
                    )
                failed = self._tick()
                if failed is not None:
                    status = failed
                    break
            stopped = self._stop_all()
            status = status or stopped  # the first failure's status, else the drain's
        finally:
            if self.probes is not None:
                self.probes.stop()
            metrics_server.shutdown()
            metrics_server.server_close()
            for reserved in self._reserved:
                reserved.close()
        log.info("stopped")
        return status

    def _start(self, index: int) -> Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=run_worker,
            args=(self._worker_settings, index, theirs),
            name=f"attnserve-worker-{index}",
            daemon=False,
        )
        process.start()
        theirs.close()
        self.metrics.workers.inc()
        log.info("worker %d started (pid %d)", index, process.pid)
        return Worker(index, process, ours)

    def _tick(self) -> int | None:
        """Handle what the workers said and which exited; a status when the server must stop."""
        by_channel = {w.connection: w for w in self.workers}
        for ready in wait([*by_channel, *(w.process.sentinel for w in self.workers)], timeout=TICK_S):
            if ready in by_channel:
                worker = by_channel[ready]
                try:
                    message = ready.recv()
                except (EOFError, OSError):  # exited; its sentinel says so next
                    continue
                self._heard(worker, message)
        for worker in list(self.workers):
            if worker.process.exitcode is None:
                continue
            code = worker.process.exitcode
            self._forget(worker)
            if not worker.ever_ready:
                log.error("worker %d exited with %s before it was ready; stopping", worker.index, code)
                return code or 1
            log.error(
                "worker %d (pid %d) exited with %s; starting it again", worker.index, worker.process.pid, code
            )
            self.metrics.restarts.inc()
            self.workers.append(self._start(worker.index))
            self._update_health()
        return None

    def _heard(self, worker: Worker, message: tuple) -> None:
        if message[0] == "listening":
            worker.listening = True
        elif message[0] == "ready":
            _, name, ready = message
            worker.ready[name] = ready
            if name == "" and ready:
                worker.ever_ready = True
            self._update_health()

    def _update_health(self) -> None:
        """Each name is ready while every one of ``count`` workers says so; changes go to every worker
        and the probe port."""
        names = {name for w in self.workers for name in w.ready} | set(self.health)
        for name in sorted(names):
            ready = len(self.workers) == self.count and all(w.ready.get(name, False) for w in self.workers)
            if self.health.get(name) == ready:
                continue
            self.health[name] = ready
            for worker in self.workers:
                with contextlib.suppress(OSError):  # exiting; its sentinel says so
                    worker.connection.send(("health", name, ready))
            if self.probes is not None:
                self.probes.set(name, ready)
        if self.health.get("") and not self._logged_ready:
            self._logged_ready = True
            log.info("ready: %d workers", self.count)

    def _forget(self, worker: Worker) -> None:
        from prometheus_client import multiprocess

        self.workers.remove(worker)
        worker.connection.close()
        multiprocess.mark_process_dead(worker.process.pid, self.metrics_dir)
        self.metrics.workers.dec()

    def _stop_all(self) -> int:
        """SIGTERM to every worker; each drains as a single server does. 0 when all exit 0."""
        if self.probes is not None:
            self.probes.servicer.enter_graceful_shutdown()
        for worker in self.workers:
            if worker.process.exitcode is None:
                os.kill(worker.process.pid, signal.SIGTERM)
        log.info("shutting down: %d workers draining", len(self.workers))
        deadline = (
            time.monotonic() + self.settings.shutdown_delay_s + self.settings.grace_period_s + STOP_MARGIN_S
        )
        status = 0
        for worker in list(self.workers):
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                worker.process.join()
            status = status or (worker.process.exitcode != 0)
            self._forget(worker)
        return int(status)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to the port the workers share, never listening: it holds the port (and picks it,
    for port 0) while workers come and go."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind(address)
    return reserved


def supervise(settings: Settings, count: int) -> int:
    """Run ``count`` workers until SIGTERM; the process's exit status."""
    if importlib.util.find_spec("onnxruntime") is None:  # only workers import it: say so here, once
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned = directory is None
    if owned:
        directory = tempfile.mkdtemp(prefix="attnserve-metrics-")
        # before prometheus-client is imported, here or in a worker: it picks its storage on import
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:  # prometheus-client writes into it but does not make it
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("PROMETHEUS_MULTIPROC_DIR %s: %s", directory, exc)
        return 2
    for stale in Path(directory).glob("*.db"):  # an earlier run's values would be summed in
        stale.unlink()
    try:
        try:
            supervisor = Supervisor(settings, count, directory)
        except OSError as exc:  # the port is taken (by a process that did not set SO_REUSEPORT)
            log.error("cannot bind %s:%d: %s", settings.host, settings.port, exc)
            return 2
        return supervisor.run()
    finally:
        if owned:
            for file in Path(directory).glob("*.db"):
                file.unlink()
            Path(directory).rmdir()
