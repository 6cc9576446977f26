"""The /metrics HTTP server: prometheus-client's WSGI app, on a fixed pool of threads.

prometheus-client's own ``start_http_server`` starts a thread per connection and handshakes TLS on its
accepting thread, so idle or slow connections (a port scan, a scraper that never closes) add threads
without bound and one slow TLS client stalls every scrape. Here a few threads serve every connection,
each connection waits ``IDLE_S`` at most between requests, one over ``QUEUED`` pending ones is closed
at once, and TLS is handshaken on the pool's threads.
"""

import contextlib
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from attnserve.service.tls import server_context

THREADS = 4
QUEUED = 64  # connections accepted and waiting for a thread; beyond that, closed at once
IDLE_S = 2.0  # a connection that sends no request this long is closed (a scraper sends one at once)


class _Quiet(WSGIRequestHandler):
    timeout = IDLE_S

    def log_message(self, format: str, *args: object) -> None:  # scrapes are not worth a log line
        pass


class MetricsServer(WSGIServer):
    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        super().__init__(address, _Quiet)
        self._tls = tls
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="metrics")
        self._slots = threading.BoundedSemaphore(THREADS + QUEUED)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        self._pool.submit(self._serve, request, client_address)

    def _serve(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        try:
            if self._tls is not None:
                request.settimeout(IDLE_S)
                request = self._tls.wrap_socket(request, server_side=True)
            self.finish_request(request, client_address)
        except (OSError, ssl.SSLError):
            pass  # a client that went away or failed its handshake: nothing to answer
        finally:
            with contextlib.suppress(OSError):
                self.shutdown_request(request)
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def start(
    registry: CollectorRegistry, host: str, port: int, cert: str = "", key: str = "", client_ca: str = ""
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (HTTPS with ``cert`` and ``key``; only to clients with a
    certificate from ``client_ca`` when given), on a thread of its own; ``.server_port`` is the port."""
    tls = server_context(Path(cert), Path(key), Path(client_ca) if client_ca else None) if cert else None
    server = MetricsServer((host, port), tls)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics-accept", daemon=True).start()
    return server
