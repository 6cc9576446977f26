"""The server's one readiness state. grpc.health.v1, the Open Inference Protocol's ServerReady and
ModelReady, and the vision API's ListModels all read it, so they agree at every moment of startup, load
failure and shutdown.

starting: the port is open and models load one by one; each is ready once loaded and warm, the
server is not. serving: every model that could load has; the server is ready (a model loaded later is
ready once warm, one whose last version is retired is not). draining (SIGTERM):
nothing is ready, so load balancers move away, but calls are still answered for ``shutdown_delay_s``.
stopped: new calls are refused with UNAVAILABLE while those admitted before finish; the server waits
until no call has been in flight for a moment (``idle``) before closing the port.
"""

import threading
import time
from collections.abc import Callable
from enum import Enum

Listener = Callable[[str, bool], None]  # (model name, or "" for the server; ready or not)


class Phase(Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Readiness:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self._models: set[str] = set()
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()  # models load on a worker thread
        self.calls_in_flight = 0  # RPCs of the APIs between arriving and answering (event loop only)
        self._idle_since = time.monotonic()

    def watch(self, listener: Listener) -> None:
        """``listener`` is told each change, as it happens."""
        self._listeners.append(listener)

    def model_loaded(self, name: str) -> None:
        with self._lock:
            if self.phase not in (Phase.STARTING, Phase.SERVING):
                return
            self._models.add(name)
        self._tell(name, True)

    def model_unloaded(self, name: str) -> None:
        """No version of ``name`` is served any more (service/lifecycle.py retired the last)."""
        with self._lock:
            if name not in self._models:
                return
            self._models.discard(name)
        self._tell(name, False)

    def all_loaded(self) -> None:
        with self._lock:
            if self.phase is not Phase.STARTING:
                return
            self.phase = Phase.SERVING
        self._tell("", True)

    def drain(self) -> None:
        with self._lock:
            self.phase = Phase.DRAINING
            models, self._models = self._models, set()
        for name in ("", *sorted(models)):
            self._tell(name, False)

    def stop(self) -> None:
        with self._lock:
            self.phase = Phase.STOPPED

    def call_started(self) -> None:
        self.calls_in_flight += 1

    def call_ended(self) -> None:
        self.calls_in_flight -= 1
        if self.calls_in_flight == 0:
            self._idle_since = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last call ended, 0 while one is in flight."""
        return time.monotonic() - self._idle_since if self.calls_in_flight == 0 else 0.0

    @property
    def server_ready(self) -> bool:
        return self.phase is Phase.SERVING

    def model_ready(self, name: str) -> bool:
        return name in self._models

    @property
    def accepting_calls(self) -> bool:
        return self.phase is not Phase.STOPPED

    def _tell(self, name: str, ready: bool) -> None:
        for listener in self._listeners:
            listener(name, ready)
