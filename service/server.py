"""The server process: gRPC (vision API, health, reflection) and /metrics, models loaded in the
background, graceful shutdown on SIGTERM.

Health (grpc.health.v1) follows the data plane's readiness (service/readiness.py), as the Open
Inference Protocol's ServerReady/ModelReady and ListModels do: each model name is SERVING once it is
loaded and warmed up, the overall service "" (and each API's) once every model that could load has.
On SIGTERM everything goes NOT_SERVING; after ``shutdown_delay_s`` (time for load balancers to notice)
the calls the server has, gRPC's backlog included, get ``grace_period_s`` to finish (new ones refused
in its last fifth) before the port closes and the process exits 0.

Around the APIs: TLS (service/tls.py), token authentication (service/auth.py), a plaintext health-only
port for probes (service/health.py), /metrics (service/metrics_http.py), and the Open Inference
Protocol, the vision API in JSON and the explorer page over HTTP (service/http/app.py) on its own
port, on the same event loop and data plane.

With ``link`` the process is one of several workers sharing the port (service/supervisor.py): the
supervisor then serves /metrics and the probe port for all of them, and tells each worker what health
says for the whole server.
"""

import asyncio
import contextlib
import gc
import logging
import signal
from importlib.metadata import version
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from attnserve.api.inference.v2 import grpc_predict_v2_pb2_grpc
from attnserve.api.v1 import vision_pb2_grpc
from attnserve.service import auth, tls
from attnserve.service.dataplane import DataPlane
from attnserve.service.grpc.inference_v2 import InferenceServicer
from attnserve.service.grpc.vision import VisionServicer
from attnserve.service.health import (
    HEALTH_SERVICE,
    INFERENCE_SERVICE,
    NOT_SERVING,
    SERVER_SERVICES,
    VISION_SERVICE,
    ProbePort,
    services_of,
    status,
)
from attnserve.service.http.app import application
from attnserve.service.metrics import Metrics
from attnserve.service.metrics_http import MetricsServer
from attnserve.service.readiness import Readiness
from attnserve.service.registry import ModelRegistry
from attnserve.service.settings import Settings, listening
from attnserve.service.worker_link import WorkerLink

log = logging.getLogger("attnserve")
# no call in flight for this long after SIGTERM: gRPC holds no call it has not handed over
DRAIN_IDLE_S = 0.2


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    size = settings.max_message_mb * 1024 * 1024
    options = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        # clients may keep their own connections alive, as often as every 10 s; more often is abuse
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]
    if settings.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", int(settings.max_connection_idle_s * 1000)))
    if settings.max_connection_age_s > 0:  # clients reconnect, so new pods get traffic behind a ClusterIP
        age_ms = int(settings.max_connection_age_s * 1000)
        options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", age_ms)]
    return options


async def _until_idle(readiness: Readiness, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while readiness.idle_for() < DRAIN_IDLE_S and loop.time() < deadline:
        await asyncio.sleep(0.01)


async def serve(settings: Settings, link: WorkerLink | None = None) -> int:
    if not Path(settings.repository).is_dir():
        log.error(
            "model repository %s does not exist; export models into it with attnserve export",
            settings.repository,
        )
        return 2
    metrics = Metrics()
    try:  # files that do not load stop the server here, naming the file
        certificates, tokens = None, None
        if settings.tls_cert:
            client_ca = Path(settings.tls_client_ca) if settings.tls_client_ca else None
            certificates = tls.CertificateFiles(Path(settings.tls_cert), Path(settings.tls_key), client_ca)
        if settings.auth_tokens:
            tokens = auth.TokenFile(Path(settings.auth_tokens))
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    interceptors = []
    if tokens is not None:
        refused = metrics.auth_refused
        interceptors.append(auth.TokenAuthInterceptor(tokens, lambda reason: refused.labels(reason).inc()))
    registry = ModelRegistry()
    dataplane = DataPlane(settings, registry, metrics)
    server = grpc.aio.server(options=grpc_options(settings), interceptors=interceptors)
    vision_pb2_grpc.add_VisionServiceServicer_to_server(
        VisionServicer(dataplane, metrics, settings.stream_window), server
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, metrics, version("attnserve"), settings.stream_window), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:  # it tells any caller every service and message: off where that matters
        reflection.enable_server_reflection(
            [
                VISION_SERVICE,
                INFERENCE_SERVICE,
                HEALTH_SERVICE,
                reflection.SERVICE_NAME,
            ],
            server,
        )
    for name in SERVER_SERVICES:
        await health_servicer.set(name, NOT_SERVING)
    address = f"{settings.host}:{settings.port}"
    if certificates is not None:
        port = server.add_secure_port(address, certificates.credentials())
    else:
        port = server.add_insecure_port(address)
    # a supervisor serves the probe port and /metrics for its workers
    probes = (
        ProbePort(settings.host, settings.health_port) if settings.health_port >= 0 and not link else None
    )
    if probes is not None:
        log.info("health alone, in plaintext, on %s:%d", settings.host, probes.port)
    metrics_server = None
    if link is None:
        metrics_server = metrics.serve(settings)
    await server.start()
    http_runner = None
    if settings.http_port >= 0:
        try:
            http_runner = await _start_http(dataplane, metrics, settings, certificates, tokens, link)
        except OSError as exc:
            log.error("cannot serve HTTP on %s:%d: %s", settings.host, settings.http_port, exc)
            await server.stop(0)
            _close(probes, metrics_server)
            return 2
    if metrics_server is not None:
        log.info(
            "%s; loading models from %s",
            listening(settings, port, metrics_server.server_port, _port_of(http_runner)),
            settings.repository,
        )
    else:
        log.info("serving on the shared port %d; loading models from %s", port, settings.repository)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def to_health(name: str, ready: bool) -> None:  # called on the loop, the loading or the link's thread
        for service in services_of(name):
            asyncio.run_coroutine_threadsafe(health_servicer.set(service, status(ready)), loop)
        if probes is not None:
            probes.set(name, ready)

    readiness = dataplane.readiness
    if link is None:
        readiness.watch(to_health)
    else:  # health says what the supervisor says for all workers; it hears this one's readiness
        readiness.watch(lambda name, ready: link.send("ready", name, ready))
        link.listen(to_health, lambda: loop.call_soon_threadsafe(stop.set))
        link.send("listening")

    lifecycle = dataplane.lifecycle
    loading = asyncio.create_task(lifecycle.start())
    await asyncio.wait([loading, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        log.error("could not load the model repository: %s", loading.exception())
        await server.stop(0)
        if http_runner is not None:
            await http_runner.cleanup()
        _close(probes, metrics_server)
        return 1
    if loading.done() and not stop.is_set():
        # what loading made lives as long as the server: out of the collector's sight, so that full
        # collections under load (80-107 ms pauses of every call, health included) have less to walk
        gc.freeze()
        readiness.all_loaded()
        failed = lifecycle.failures
        failed_text = f"; not loaded: {failed}" if failed else ""
        log.info(
            "ready: %d model versions (%s)%s; model_control %s",
            len(registry.all()),
            ", ".join(registry.names()),
            failed_text,
            settings.model_control,
        )
        await stop.wait()
    loading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loading

    readiness.drain()
    await health_servicer.enter_graceful_shutdown()
    if probes is not None:
        probes.servicer.enter_graceful_shutdown()
    if settings.shutdown_delay_s:
        log.info(
            "shutting down: NOT_SERVING; serving %.1f s more so clients move away", settings.shutdown_delay_s
        )
        await asyncio.sleep(settings.shutdown_delay_s)
    grace = settings.grace_period_s
    log.info("shutting down: NOT_SERVING, %.1f s for the calls in flight to finish", grace)
    # Closing the port kills the calls gRPC has received but not yet handed to us (CANCELLED, which
    # clients do not retry). So calls are still served until none has arrived for a moment (gRPC's
    # backlog is then empty too), for most of the grace period; in its last fifth new calls are refused
    # with UNAVAILABLE (retried elsewhere) while those admitted finish; then the port closes.
    drained_at = loop.time() + grace
    await _until_idle(readiness, loop.time() + grace * 0.8)
    readiness.stop()
    await _until_idle(readiness, drained_at)
    if readiness.calls_in_flight:
        log.warning(
            "%d calls still in flight after %.1f s; cancelling them", readiness.calls_in_flight, grace
        )
    await server.stop(max(0.0, drained_at - loop.time()))
    if http_runner is not None:
        await http_runner.cleanup()
    await lifecycle.stop()
    for served in registry.all():
        await served.batcher.close()
    dataplane.close()
    _close(probes, metrics_server)
    log.info("stopped")
    return 0


async def _start_http(
    dataplane: DataPlane,
    metrics: Metrics,
    settings: Settings,
    certificates: tls.CertificateFiles | None,
    tokens: auth.TokenFile | None,
    link: WorkerLink | None,
) -> web.AppRunner:
    """The HTTP port (service/http/app.py) on the gRPC server's loop, with its TLS and tokens; a worker
    shares the port its supervisor holds."""
    runner = web.AppRunner(application(dataplane, metrics, version("attnserve"), tokens), access_log=None)
    await runner.setup()
    ssl_context = certificates.ssl_context() if certificates is not None else None
    site = web.TCPSite(
        runner, settings.host, settings.http_port, ssl_context=ssl_context, reuse_port=link is not None
    )
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


def _port_of(runner: web.AppRunner | None) -> int | None:
    return runner.addresses[0][1] if runner is not None else None


def _close(probes: ProbePort | None, metrics_server: MetricsServer | None) -> None:
    if probes is not None:
        probes.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
