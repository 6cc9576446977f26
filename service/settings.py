"""Settings, in one typed place: the server's (``Settings``), each from (lowest to highest precedence)
its default, a TOML file (``--config``), an environment variable ``ATTNSERVE_<NAME>``, or a flag
``--<name>``; and each model's (``ModelSettings``), the server's overridden by the model's config.toml."""

import argparse
import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from attnserve.manifest import DETECTION, MODEL_CONFIG_FILE

ENV_PREFIX = "ATTNSERVE_"
PROVIDERS = ("auto", "cpu", "cuda")
# what changes the models served (service/lifecycle.py): nothing after start-up, the repository as
# watched every poll_interval_s, or only the load and unload calls
STATIC, POLL, EXPLICIT = "static", "poll", "explicit"
MODEL_CONTROL_MODES = (STATIC, POLL, EXPLICIT)


@dataclass
class Settings:
    repository: Path = field(default=Path("model_repository"), metadata={"help": "model repository folder"})
    model_control: str = field(
        default=STATIC,
        metadata={
            "help": "what changes the models served: static (the repository as found at start-up), poll "
            "(the repository, re-read every poll_interval_s) or explicit (only the load and unload calls)"
        },
    )
    poll_interval_s: float = field(
        default=10.0, metadata={"help": "with model_control poll, seconds between reads of the repository"}
    )
    version_policy: str = field(
        default="all",
        metadata={
            "help": "which versions of each model are served (a model's config.toml may override it): all, "
            "latest:N (the N newest that load) or specific:V[,V...]"
        },
    )
    unauthenticated_admin: bool = field(
        default=False,
        metadata={
            "help": "let any caller load and unload models when auth_tokens is not set (else those calls "
            "need a token with the admin scope); for a trusted network only"
        },
    )
    host: str = field(default="0.0.0.0", metadata={"help": "address the gRPC server binds"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0: any free port)"})
    http_port: int = field(
        default=8000,
        metadata={
            "help": "HTTP: the Open Inference Protocol's REST API, the vision API in JSON and the explorer "
            "page, on the gRPC host (0: any free port); -1: off"
        },
    )
    explorer: bool = field(
        default=True,
        metadata={"help": "serve the explorer page at / on the HTTP port (false: the APIs only)"},
    )
    metrics_host: str = field(default="0.0.0.0", metadata={"help": "address the metrics server binds"})
    metrics_port: int = field(default=9464, metadata={"help": "Prometheus metrics port (0: any free port)"})
    provider: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu or cuda"})
    intra_op_threads: int = field(
        default=0, metadata={"help": "ONNX Runtime threads per inference; 0: cores"}
    )
    inter_op_threads: int = field(default=1, metadata={"help": "ONNX Runtime inter-op threads"})
    workers: int = field(
        default=0,
        metadata={
            "help": "server processes sharing the port, each with its own models, batcher and ONNX Runtime "
            "threads (intra_op_threads 0: cores / workers), so request handling runs on every core; 0: one "
            "per two usable cores, at most 8, or 1 for CUDA"
        },
    )
    decode_threads: int = field(
        default=2, metadata={"help": "threads decoding, fitting and encoding images, per model version"}
    )
    max_batch_size: int = field(
        default=8, metadata={"help": "images per inference batch; 1 turns batching off"}
    )
    instance_count: int = field(
        default=1,
        metadata={
            "help": "inference batches run at once per model version, on its one session; more than 1 "
            "helps when intra_op_threads leaves cores idle"
        },
    )
    max_queue_delay_ms: float = field(
        default=2.0, metadata={"help": "longest a batch waits for requests still being decoded to join it"}
    )
    max_queue_size: int = field(
        default=256, metadata={"help": "images waiting per model before RESOURCE_EXHAUSTED"}
    )
    max_in_flight_images: int = field(
        default=128,
        metadata={
            "help": "images per model version from arrival to answer (decoding or waiting to, queued, "
            "running, encoding) before RESOURCE_EXHAUSTED"
        },
    )
    max_in_flight_mb: int = field(
        default=128,
        metadata={"help": "MiB of request images the whole server holds in flight before RESOURCE_EXHAUSTED"},
    )
    max_message_mb: int = field(default=64, metadata={"help": "largest request or response, MiB"})
    max_image_pixels: int = field(default=40_000_000, metadata={"help": "decompression-bomb guard"})
    max_images_per_request: int = field(default=64, metadata={"help": "images in one request"})
    max_request_pixels: int = field(
        default=100_000_000,
        metadata={
            "help": "pixels all of a request's images decode to, from their headers, before any is decoded"
        },
    )
    max_map_side: int = field(
        default=2048,
        metadata={
            "help": "longest side of a map in original-image geometry; larger originals get smaller maps"
        },
    )
    shutdown_delay_s: float = field(
        default=0.0,
        metadata={
            "help": "after SIGTERM, report NOT_SERVING but keep serving this long, so that load "
            "balancers stop sending first"
        },
    )
    grace_period_s: float = field(
        default=10.0, metadata={"help": "then refuse new calls; calls in flight get this long to finish"}
    )
    max_connection_age_s: float = field(
        default=0.0, metadata={"help": "close connections after this long so clients rebalance; 0: never"}
    )
    max_concurrent_streams: int = field(
        default=1024,
        metadata={
            "help": "calls at once on one connection (HTTP/2); a client's further calls wait on its side"
        },
    )
    stream_window: int = field(
        default=16,
        metadata={
            "help": "requests of one stream (StreamClassify, StreamDetect, ModelStreamInfer) run at once, "
            "answered in order; 1: one at a time"
        },
    )
    keepalive_time_s: float = field(
        default=60.0, metadata={"help": "ping a connection idle this long, to find peers that vanished"}
    )
    keepalive_timeout_s: float = field(
        default=20.0, metadata={"help": "close a connection whose ping is not answered within this"}
    )
    max_connection_idle_s: float = field(
        default=600.0,
        metadata={"help": "close a connection without calls for this long (clients reconnect); 0: never"},
    )
    tls_cert: str = field(
        default="",
        metadata={
            "help": "PEM certificate chain for the gRPC port: with tls_key, TLS on; re-read when it changes"
        },
    )
    tls_key: str = field(default="", metadata={"help": "PEM private key of tls_cert"})
    tls_client_ca: str = field(
        default="",
        metadata={"help": "PEM CA bundle client certificates must chain to: mutual TLS (needs tls_cert)"},
    )
    auth_tokens: str = field(
        default="",
        metadata={
            "help": "file of bearer tokens, 'TOKEN SCOPE[,SCOPE]' a line (scopes infer, admin): every "
            "call but health then needs one; re-read when it changes"
        },
    )
    health_port: int = field(
        default=-1,
        metadata={
            "help": "a plaintext port serving only grpc.health.v1, for probes that cannot speak TLS "
            "(Kubernetes'); -1: none, 0: any free port"
        },
    )
    model_digests: str = field(
        default="",
        metadata={
            "help": "sha256sum list of the repository's model files, kept apart from it: only versions "
            "listed with the matching digest load"
        },
    )
    metrics_tls: bool = field(
        default=False,
        metadata={
            "help": "serve /metrics over HTTPS with tls_cert and tls_key (and, with tls_client_ca, only "
            "to scrapers with a client certificate)"
        },
    )
    reflection: bool = field(
        default=True,
        metadata={"help": "gRPC server reflection (service discovery for tools); false turns it off"},
    )
    default_top_k: int = field(
        default=5, metadata={"help": "labels a classification returns when the request sets no top_k"}
    )
    default_detection_threshold: float = field(
        default=0.3,
        metadata={"help": "score below which detections are left out when the request sets none"},
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})

    def validate(self) -> "Settings":
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        for name in (
            "max_batch_size",
            "instance_count",
            "max_queue_size",
            "max_in_flight_images",
            "max_in_flight_mb",
            "max_message_mb",
            "max_image_pixels",
            "decode_threads",
            "max_images_per_request",
            "max_request_pixels",
            "max_map_side",
            "default_top_k",
            "stream_window",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 (chosen from the cores) or more, not {self.workers}")
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"model_control {self.model_control!r} is not one of {', '.join(MODEL_CONTROL_MODES)}"
            )
        if self.model_control == EXPLICIT and self.workers > 1:
            # a load or unload call reaches the one worker its connection went to
            raise ValueError(
                "model_control explicit needs one worker (a load or unload call reaches only one); "
                "with several workers use model_control poll"
            )
        if not (math.isfinite(self.poll_interval_s) and self.poll_interval_s > 0):
            raise ValueError(f"poll_interval_s must be positive, not {self.poll_interval_s}")
        VersionPolicy.parse(self.version_policy)
        if min(self.max_queue_delay_ms, self.grace_period_s, self.shutdown_delay_s) < 0:
            raise ValueError("max_queue_delay_ms, shutdown_delay_s and grace_period_s cannot be negative")
        if min(self.max_connection_idle_s, self.max_connection_age_s) < 0:
            raise ValueError("max_connection_idle_s and max_connection_age_s cannot be negative")
        if self.max_concurrent_streams < 1 or min(self.keepalive_time_s, self.keepalive_timeout_s) <= 0:
            raise ValueError(
                "max_concurrent_streams, keepalive_time_s and keepalive_timeout_s must be positive"
            )
        _check_threshold("default_detection_threshold", self.default_detection_threshold)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both for TLS, or neither")
        if (self.tls_client_ca or self.metrics_tls) and not self.tls_cert:
            raise ValueError("tls_client_ca and metrics_tls need tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens", "model_digests"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name} {getattr(self, name)} is not a file")
        if self.http_port < -1:
            raise ValueError(f"http_port must be -1 (off), 0 (any free port) or a port, not {self.http_port}")
        if self.health_port < -1:
            raise ValueError(
                f"health_port must be -1 (none), 0 (any free port) or a port, not {self.health_port}"
            )
        return self


@dataclass(frozen=True)
class ModelSettings:
    """One model's serving settings: the server-wide ones of the same names, overridden by the model's
    own NAME/config.toml (beside its version folders) where it sets them. Read when the model loads;
    an invalid file keeps the model from loading, with the reason, rather than serving it otherwise."""

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    max_in_flight_images: int
    default_top_k: int  # classification
    default_score_threshold: float  # classification: labels below it left out; detection: boxes
    default_max_detections: int | None = None  # detection; None: every box above the threshold
    version_policy: str = "all"  # VersionPolicy's text
    instance_count: int = 1

    @classmethod
    def load(cls, server: Settings, model_dir: Path, task: str) -> "ModelSettings":
        """``model_dir``'s settings over ``server``'s; ``task`` (the manifest's) picks the threshold."""
        settings = cls(
            server.max_batch_size,
            server.max_queue_delay_ms,
            server.max_queue_size,
            server.max_in_flight_images,
            server.default_top_k,
            server.default_detection_threshold if task == DETECTION else 0.0,
            version_policy=server.version_policy,
            instance_count=server.instance_count,
        )
        path = model_dir / MODEL_CONFIG_FILE
        if not path.is_file():
            return settings
        try:
            with path.open("rb") as f:
                values = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown settings {', '.join(unknown)} (known: {', '.join(known)})")
        for name, value in values.items():
            if known[name].type is str:
                if not isinstance(value, str):
                    raise ValueError(f"{path}: {name} must be a string, not {value!r}")
                continue
            wanted = (float, int) if known[name].type is float else (int,)
            if isinstance(value, bool) or not isinstance(value, wanted):
                raise ValueError(f"{path}: {name} must be a number, not {value!r}")
        settings = dataclasses.replace(settings, **values)
        try:
            return settings.validate()
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def validate(self) -> "ModelSettings":
        names = (
            "max_batch_size",
            "instance_count",
            "max_queue_size",
            "max_in_flight_images",
            "default_top_k",
            "default_max_detections",
        )
        for name in names:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if not (math.isfinite(self.max_queue_delay_ms) and self.max_queue_delay_ms >= 0):
            raise ValueError(f"max_queue_delay_ms must be 0 or more, not {self.max_queue_delay_ms}")
        _check_threshold("default_score_threshold", self.default_score_threshold)
        VersionPolicy.parse(self.version_policy)
        return self

    @property
    def versions(self) -> "VersionPolicy":
        return VersionPolicy.parse(self.version_policy)


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served (Triton's three policies): ``all``, ``latest:N`` (the N
    newest that load; a newer one that fails leaves an older one serving) or ``specific:V,...``."""

    latest: int | None = None  # None: not a latest policy
    specific: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        kind, _, values = text.strip().partition(":")
        try:
            if kind == "all" and not values:
                return cls()
            if kind == "latest":
                count = int(values) if values else 1
                if count >= 1:
                    return cls(latest=count)
            if kind == "specific":
                versions = tuple(sorted({int(v) for v in values.split(",")}))
                if versions and versions[0] >= 1:
                    return cls(specific=versions)
        except ValueError:
            pass
        raise ValueError(
            f"version_policy {text!r} is not all, latest:N (N ≥ 1) or specific:V[,V...] (versions ≥ 1)"
        )

    def candidates(self, versions: list[int]) -> list[int]:
        """The versions on disk this policy may serve, the most wanted first."""
        newest_first = sorted(versions, reverse=True)
        if self.specific:
            return [v for v in newest_first if v in self.specific]
        return newest_first

    @property
    def count(self) -> int | None:
        """How many of the candidates to serve; None: every one that loads."""
        return self.latest

    def __str__(self) -> str:
        if self.latest is not None:
            return f"latest:{self.latest}"
        return f"specific:{','.join(map(str, self.specific))}" if self.specific else "all"


def listening(settings: Settings, port: int, metrics_port: int, http_port: int | None) -> str:
    """What the server logs once its ports are open (bench/harness.py waits for it), from one process
    or from the supervisor of several; ``http_port`` None: HTTP off."""
    tls, metrics_tls = " (TLS)" if settings.tls_cert else "", "s" if settings.metrics_tls else ""
    http = f", HTTP{tls} on {settings.host}:{http_port}" if http_port is not None else ""
    return (
        f"gRPC{tls} on {settings.host}:{port}, "
        f"metrics on http{metrics_tls}://{settings.metrics_host}:{metrics_port}/metrics{http}"
    )


def _check_threshold(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1], not {value}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file of settings (keys as below, with underscores)")
    for f in fields(Settings):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=_type_of(f),
            default=None,
            help=f"{f.metadata['help']} (env {ENV_PREFIX}{f.name.upper()}; default {f.default})",
        )


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file, then the environment, then flags: the later wins."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    config = getattr(args, "config", None) or environ.get(f"{ENV_PREFIX}CONFIG")
    if config:
        with open(config, "rb") as f:
            from_file = tomllib.load(f)
        unknown = set(from_file) - {f.name for f in fields(Settings)}
        if unknown:
            raise ValueError(f"unknown settings in {config}: {', '.join(sorted(unknown))}")
        values.update(from_file)
    for f in fields(Settings):
        if f"{ENV_PREFIX}{f.name.upper()}" in environ:
            values[f.name] = environ[f"{ENV_PREFIX}{f.name.upper()}"]
        flag = getattr(args, f.name, None) if args is not None else None
        if flag is not None:
            values[f.name] = flag
    converted = {
        name: _type_of(next(f for f in fields(Settings) if f.name == name))(v) for name, v in values.items()
    }
    return dataclasses.replace(Settings(), **converted).validate()


def _boolean(value: bool | str) -> bool:
    """A TOML boolean, or a flag's or environment variable's text: true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _type_of(f: dataclasses.Field):
    return {"Path": Path, "int": int, "float": float, "str": str, "bool": _boolean}[
        f.type if isinstance(f.type, str) else f.type.__name__
    ]
