"""TLS and mutual TLS for the gRPC port, with certificates rotated without a restart.

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

    def _identity(self) -> list[tuple[int, int, int]]:
        stats = [os.stat(p) for p in self.paths]
        return [(s.st_ino, s.st_size, s.st_mtime_ns) for s in stats]

    def _read(self) -> grpc.ServerCertificateConfiguration:
        check_pair(self.cert, self.key, self.client_ca)
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())], root_certificates=ca
        )


def check_pair(cert: Path, key: Path, ca: Path | None = None) -> None:
    """ValueError naming the file when the certificate chain and key do not load together, or the CA
    bundle does not load (OpenSSL's checks, through Python's ssl)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"certificate {cert} with key {key} does not load: {exc}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"client CA bundle {ca} does not load: {exc}") from None
