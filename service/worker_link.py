"""A worker process's side of its pipe to the supervisor (service/supervisor.py), and the function a
worker process starts in.

Messages, each a tuple:
- worker → supervisor: ``("listening",)`` once its gRPC server is bound to the shared port;
  ``("ready", name, ready)`` for each readiness change (``name`` "" for the whole worker).
- supervisor → worker: ``("health", name, ready)``, what the whole server's health says (every worker
  ready), which the worker's own grpc.health.v1 then answers.

A worker whose supervisor has gone (its pipe closed) stops as on SIGTERM, so none is left orphaned.
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from attnserve.service.settings import Settings

log = logging.getLogger("attnserve")


class WorkerLink:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()  # readiness changes come from the loop and the loading thread

    def send(self, *message: object) -> None:
        # OSError: the supervisor has gone; listen() stops the worker
        with self._lock, contextlib.suppress(OSError):
            self._connection.send(message)

    def listen(self, on_health: Callable[[str, bool], None], on_gone: Callable[[], None]) -> None:
        """Call ``on_health`` for each of the supervisor's health messages, from a thread of its own,
        and ``on_gone`` once the supervisor has closed the pipe."""

        def receive() -> None:
            while True:
                try:
                    kind, name, ready = self._connection.recv()
                except (EOFError, OSError):
                    on_gone()
                    return
                if kind == "health":
                    on_health(name, ready)

        threading.Thread(target=receive, name="supervisor-link", daemon=True).start()


def run_worker(settings: Settings, index: int, connection: Connection) -> None:
    """A worker process: the server, on the port the supervisor holds; exits with its status."""
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
    )
    from attnserve.service.server import serve  # the server's imports, in the worker only

    raise SystemExit(asyncio.run(serve(settings, WorkerLink(connection))))
