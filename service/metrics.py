"""Prometheus metrics, on their own HTTP port. Histograms (not summaries) so latency aggregates across
replicas; buckets fit millisecond-scale inference.

With several worker processes (service/supervisor.py) prometheus-client's multiprocess mode keeps each
worker's values in files the supervisor's scrape sums: every gauge says how (``multiprocess_mode``:
in-flight counts add up, a model is ready only if it is in every worker)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from attnserve.service import metrics_http
from attnserve.service.metrics_http import MetricsServer
from attnserve.service.settings import Settings

# seconds: 0.25 ms to 10 s
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "attnserve_requests",
            "Requests answered, by model, method and gRPC status code.",
            ["model", "method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "attnserve_request_duration_seconds",
            "Time from receiving a request to answering it.",
            ["model", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "attnserve_stage_duration_seconds",
            "Time per request in each stage: decode, preprocess, queue, inference, postprocess, encode.",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "attnserve_batch_size",
            "Images per inference batch.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "attnserve_queue_depth",
            "Images waiting for inference.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_capacity = Gauge(
            "attnserve_queue_capacity",
            "Images that may wait for inference before requests are refused.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_ready = Gauge(
            "attnserve_model_ready",
            "1 for a model version serving; 0 for one that failed to load or was retired.",
            ["model", "version"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.in_flight = Gauge(
            "attnserve_in_flight_requests",
            "Requests being handled now.",
            ["method"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.in_flight_images = Gauge(
            "attnserve_in_flight_images",
            "Images admitted to the data plane and not answered yet: decoding or waiting to, queued, in "
            "inference or being encoded (max_in_flight_images).",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.in_flight_bytes = Gauge(
            "attnserve_in_flight_bytes",
            "Request image bytes (encoded, raw or tensor) held by admitted requests (max_in_flight_mb).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.shed = Counter(
            "attnserve_shed_requests",
            "Requests refused on admission with RESOURCE_EXHAUSTED, by model and the limit they hit.",
            ["model", "limit"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "attnserve_model_load_duration_seconds",
            "Time to load and warm up a model version.",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.loads = Counter(
            "attnserve_model_loads",
            "Model versions loaded and warmed up, at start-up or while serving.",
            ["model"],
            registry=r,
        )
        self.load_failures = Counter(
            "attnserve_model_load_failures",
            "Attempts to load a model version that failed, by reason: incomplete (a file missing or "
            "unreadable), digest (model.onnx is not the manifest's sha256), untrusted (model_digests), "
            "config (config.toml invalid) or invalid (ONNX Runtime cannot run it).",
            ["model", "reason"],
            registry=r,
        )
        self.load_failed = Gauge(
            "attnserve_model_load_failed",
            "1 while a model version in the repository failed to load (tried again when its files "
            "change), else 0.",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.unloads = Counter(
            "attnserve_model_unloads",
            "Model versions retired and released: replaced, left out by the version policy, removed "
            "from the repository or unloaded.",
            ["model"],
            registry=r,
        )
        self.unload_seconds = Histogram(
            "attnserve_model_unload_duration_seconds",
            "Time from retiring a model version (no new requests reach it) to releasing it: the calls it "
            "had, answered.",
            ["model"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.version_served = Gauge(
            "attnserve_model_version_served",
            "The newest version of each model served (what a request without a version gets); 0: none.",
            ["model"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.auth_refused = Counter(
            "attnserve_auth_refused",
            "Calls refused by token authentication: unauthenticated or permission_denied.",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "attnserve_model_info",
            "Each model version served (value 1; 0 once retired), with its provider and precision.",
            ["model", "version", "task", "provider", "precision"],
            multiprocess_mode="livemax",
            registry=r,
        )

    def serve(self, settings: Settings) -> MetricsServer:
        return serve(self.registry, settings)


class SupervisorMetrics:
    """The supervisor's own metrics (written to the multiprocess files like the workers'), and the
    registry its /metrics serves: every process's values, combined."""

    def __init__(self, directory: str) -> None:
        r = CollectorRegistry()  # values live in the files; this registry is never served
        self.workers = Gauge(
            "attnserve_workers", "Worker processes running.", multiprocess_mode="livesum", registry=r
        )
        self.restarts = Counter(
            "attnserve_worker_restarts",
            "Worker processes that exited unexpectedly and were started again.",
            registry=r,
        )
        self.registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry, path=directory)

    def serve(self, settings: Settings) -> MetricsServer:
        return serve(self.registry, settings)


def serve(registry: CollectorRegistry, settings: Settings) -> MetricsServer:
    """Start the /metrics HTTP server (service/metrics_http.py) on the settings' address, over TLS
    with ``metrics_tls``; ``.server_port`` is its port."""
    tls = (settings.tls_cert, settings.tls_key, settings.tls_client_ca) if settings.metrics_tls else ()
    return metrics_http.start(registry, settings.metrics_host, settings.metrics_port, *tls)
