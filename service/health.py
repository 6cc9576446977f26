"""grpc.health.v1 names and the plaintext health-only port, for the server process and for the
supervisor of several (service/supervisor.py).

The service "" stands for the whole server, and it also sets each API's name; a model's own name is
SERVING once that model is loaded and warm.
"""

from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from attnserve.api.inference.v2 import grpc_predict_v2_pb2
from attnserve.api.v1 import vision_pb2

VISION_SERVICE = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name
INFERENCE_SERVICE = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVER_SERVICES = ("", VISION_SERVICE, INFERENCE_SERVICE)
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def services_of(name: str) -> tuple[str, ...]:
    """The health service names a readiness change of ``name`` ("" for the server) sets."""
    return (name,) if name else SERVER_SERVICES


def status(ready: bool) -> int:
    return SERVING if ready else NOT_SERVING


class ProbePort:
    """Health alone, in plaintext, on a port of its own, for Kubernetes' gRPC probes (which speak neither
    TLS nor tokens). Served by threads of its own rather than the event loop, so that a probe never waits
    in the loop's queue: under overload, measured from the load generator's process, the probe on the
    API's port did no better (docs/service.md)."""

    def __init__(self, host: str, port: int) -> None:
        self.servicer = health.HealthServicer()
        for name in SERVER_SERVICES:
            self.servicer.set(name, NOT_SERVING)
        self._server = grpc.server(ThreadPoolExecutor(2, thread_name_prefix="probes"))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        self._server.start()

    def set(self, name: str, ready: bool) -> None:
        for service in services_of(name):
            self.servicer.set(service, status(ready))

    def stop(self) -> None:
        self._server.stop(0)
