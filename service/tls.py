"""TLS and mutual TLS for the gRPC and HTTP ports, with certificates rotated without a restart.

gRPC Python's dynamic server credentials ask ``fetch`` for the configuration at every new handshake;
it compares the files' identities (inode, size, mtime: a Kubernetes Secret volume swaps a symlink, a
cert-manager renewal rewrites the files) and, when they changed, reads and checks the new pair before
handing it over. A pair that does not load (half written, key not matching) is logged and the
previous one kept, so a bad rotation never takes the port down; connections already open keep theirs.
"""

import logging
import os
import ssl
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class CertificateFiles:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = [p for p in (cert, key, client_ca) if p is not None]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._seen = self._identity()
        self.configuration = self._read()  # raises ValueError at start-up: the server does not start

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.configuration, self.fetch, require_client_authentication=self.client_ca is not None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed since the last one, else None (keep it)."""
        try:
            identity = self._identity()
            if identity == self._seen:
                return None
            self._seen = identity
            self.configuration = self._read()
        except (OSError, ValueError) as exc:
            log.error("TLS certificate not reloaded, the previous one is kept: %s", exc)
            return None
        log.info("TLS certificate reloaded from %s", self.cert)
        return self.configuration

    def ssl_context(self) -> ssl.SSLContext:
        """For an HTTP server: the pair as now, and at each handshake (OpenSSL's server-name callback,
        called whether or not the client names a server) the files' pair if they changed since."""
        first = server_context(self.cert, self.key, self.client_ca)
        state = {"seen": self._identity(), "context": first}

        def pick(connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            try:
                identity = self._identity()
                if identity != state["seen"]:
                    state["seen"] = identity
                    state["context"] = server_context(self.cert, self.key, self.client_ca)
                    log.info("TLS certificate reloaded from %s for HTTP", self.cert)
            except (OSError, ValueError) as exc:
                log.error("TLS certificate not reloaded for HTTP, the previous one is kept: %s", exc)
            if state["context"] is not first:
                connection.context = state["context"]

        first.sni_callback = pick
        return first

    def _identity(self) -> list[tuple[int, int, int]]:
        stats = [os.stat(p) for p in self.paths]
        return [(s.st_ino, s.st_size, s.st_mtime_ns) for s in stats]

    def _read(self) -> grpc.ServerCertificateConfiguration:
        server_context(self.cert, self.key, self.client_ca)  # OpenSSL's checks, naming the file
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())], root_certificates=ca
        )


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server-side SSLContext for the pair (asking for client certificates from ``client_ca`` when
    given); ValueError naming the file when the chain and key do not load together, or the CA bundle
    does not load (OpenSSL's checks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"certificate {cert} with key {key} does not load: {exc}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"client CA bundle {client_ca} does not load: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
