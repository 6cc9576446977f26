"""How a client reaches a server that asks for TLS, mutual TLS or a bearer token (docs/service.md:
Limits and security). The default is what a server with default settings speaks: plaintext, no token."""

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ChannelSecurity:
    tls: bool = False  # TLS, checking the server against the system's root certificates unless ``ca``
    ca: Path | None = None  # PEM bundle the server's certificate must chain to (TLS on)
    cert: Path | None = None  # this client's certificate chain and key, for mutual TLS (TLS on)
    key: Path | None = None
    token: str | None = None  # sent as "authorization: Bearer TOKEN" with every call
    server_name: str | None = None  # the name the certificate must carry, when not the target's host

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca is not None or self.cert is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, target: str, options: list[tuple[str, int | str]]) -> grpc.Channel:
        if not self.uses_tls:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, self._credentials(), options=[*options, *self._tls_options()])

    def aio_channel(self, target: str, options: list[tuple[str, int | str]]) -> grpc.aio.Channel:
        if not self.uses_tls:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, self._credentials(), options=[*options, *self._tls_options()])

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def _tls_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


TOKEN_ENV = "ATTNSERVE_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags a command-line client takes to reach a secured server (read back by ``from_arguments``)."""
    group = parser.add_argument_group("reaching a server with TLS or tokens")
    group.add_argument("--tls", action="store_true", help="TLS, checked against the system's root CAs")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA the server's certificate chains to")
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="the client certificate's key")
    group.add_argument("--tls-server-name", metavar="NAME", help="name to check the certificate for")
    group.add_argument(
        "--token-file", type=Path, metavar="FILE", help=f"bearer token (default: ${TOKEN_ENV}, if set)"
    )


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> ChannelSecurity:
    """ValueError naming the file or flag when they do not add up."""
    token = environ.get(TOKEN_ENV) or None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {args.token_file}: {exc}") from None
    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path} is not a file")
    return ChannelSecurity(args.tls, args.tls_ca, args.tls_cert, args.tls_key, token, args.tls_server_name)
