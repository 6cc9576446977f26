"""The server process: gRPC (vision API, health, reflection) and /metrics, models loaded in the
background, graceful shutdown on SIGTERM.

Health (grpc.health.v1) follows the data plane's readiness (service/readiness.py), as the Open
Inference Protocol's ServerReady/ModelReady and ListModels do: each model name is SERVING once it is
loaded and warmed up, the overall service "" (and each API's) once every model that could load has.
On SIGTERM everything goes NOT_SERVING; after ``shutdown_delay_s`` (time for load balancers to notice)
new calls are refused, and calls the server has received get ``grace_period_s`` to finish before the
process exits 0.
"""

import asyncio
import logging
import signal
from importlib.metadata import version
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from attnserve.api.inference.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from attnserve.api.v1 import vision_pb2, vision_pb2_grpc
from attnserve.service import auth, tls
from attnserve.service.dataplane import DataPlane
from attnserve.service.grpc.inference_v2 import InferenceServicer
from attnserve.service.grpc.vision import VisionServicer
from attnserve.service.metrics import Metrics
from attnserve.service.registry import ModelRegistry, ServedModel, load_repository
from attnserve.service.settings import ModelSettings, Settings
from attnserve.service.stages.batch import Batcher
from attnserve.service.stages.run import OnnxModel

log = logging.getLogger("attnserve")
VISION_SERVICE = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name
INFERENCE_SERVICE = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    size = settings.max_message_mb * 1024 * 1024
    options = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]
    if settings.max_connection_age_s > 0:  # clients reconnect, so new pods get traffic behind a ClusterIP
        age_ms = int(settings.max_connection_age_s * 1000)
        options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", age_ms)]
    return options


async def serve(settings: Settings) -> int:
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
    vision_pb2_grpc.add_VisionServiceServicer_to_server(VisionServicer(dataplane, metrics), server)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, metrics, version("attnserve")), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:  # it tells any caller every service and message: off where that matters
        reflection.enable_server_reflection(
            [
                VISION_SERVICE,
                INFERENCE_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
    for name in ("", VISION_SERVICE, INFERENCE_SERVICE):
        await health_servicer.set(name, NOT_SERVING)
    address = f"{settings.host}:{settings.port}"
    if certificates is not None:
        port = server.add_secure_port(address, certificates.credentials())
    else:
        port = server.add_insecure_port(address)
    # Kubernetes' gRPC probes speak neither TLS nor tokens: health alone, in plaintext, on its own port
    probes = None
    if settings.health_port >= 0:
        probes = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probes)
        health_port = probes.add_insecure_port(f"{settings.host}:{settings.health_port}")
        await probes.start()
        log.info("health alone, in plaintext, on %s:%d", settings.host, health_port)
    metrics_tls = (
        (settings.tls_cert, settings.tls_key, settings.tls_client_ca) if settings.metrics_tls else ()
    )
    metrics_server = metrics.serve(settings.metrics_host, settings.metrics_port, *metrics_tls)
    await server.start()
    log.info(
        "gRPC%s on %s:%d, metrics on http%s://%s:%d/metrics; loading models from %s",
        " (TLS)" if certificates else "",
        settings.host,
        port,
        "s" if settings.metrics_tls else "",
        settings.metrics_host,
        metrics_server.server_port,
        settings.repository,
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def to_health(name: str, ready: bool) -> None:  # called on the loop or the loading thread
        for service in (name,) if name else ("", VISION_SERVICE, INFERENCE_SERVICE):
            status = SERVING if ready else NOT_SERVING
            asyncio.run_coroutine_threadsafe(health_servicer.set(service, status), loop)

    readiness = dataplane.readiness
    readiness.watch(to_health)

    def loaded(served: ServedModel) -> None:
        m = served.manifest
        metrics.load_seconds.labels(m.name, str(m.version)).set(served.model.load_seconds)
        metrics.model_info.labels(m.name, str(m.version), m.task, served.model.provider, m.precision).set(1)
        metrics.model_ready.labels(m.name, str(m.version)).set(1)
        readiness.model_loaded(m.name)

    def batcher(model: OnnxModel, model_settings: ModelSettings) -> Batcher:
        return Batcher(
            model,
            model_settings.max_batch_size,
            model_settings.max_queue_delay_ms / 1000,
            model_settings.max_queue_size,
            metrics,
        )

    loading = asyncio.create_task(asyncio.to_thread(load_repository, settings, registry, batcher, loaded))
    await asyncio.wait([loading, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        log.error("could not load the model repository: %s", loading.exception())
        await server.stop(0)
        if probes is not None:
            await probes.stop(0)
        metrics_server.shutdown()
        return 1
    if loading.done() and not stop.is_set():
        for key in registry.failed:  # NAME/VERSION that did not load: alerting sees a 0
            metrics.model_ready.labels(*key.split("/")).set(0)
        readiness.all_loaded()
        failed = f"; not loaded: {registry.failed}" if registry.failed else ""
        log.info("ready: %d model versions (%s)%s", len(registry.all()), ", ".join(registry.names()), failed)
        await stop.wait()

    readiness.drain()
    await health_servicer.enter_graceful_shutdown()
    if settings.shutdown_delay_s:
        log.info(
            "shutting down: NOT_SERVING; serving %.1f s more so clients move away", settings.shutdown_delay_s
        )
        await asyncio.sleep(settings.shutdown_delay_s)
    grace = settings.grace_period_s
    log.info("shutting down: NOT_SERVING, refusing new calls, %.1f s for calls in flight", grace)
    await server.stop(grace)
    if probes is not None:
        await probes.stop(0)
    readiness.stop()
    for served in registry.all():
        await served.batcher.close()
    dataplane.close()
    metrics_server.shutdown()
    log.info("stopped")
    return 0
