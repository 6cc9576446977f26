"""Bearer-token authentication with scopes, for every call but health (probes carry no token).

The tokens file (``auth_tokens``; a Kubernetes Secret, typically) holds one token a line with its
scopes, ``TOKEN SCOPE[,SCOPE]``; ``#`` starts a comment. ``infer`` covers predictions and model
metadata; ``admin`` covers the repository (index, load, unload) and reflection, and any method this
table does not know. The file is re-read when it changes (rotation without a restart); a file that
does not parse is logged and the previous tokens kept, never none.

Only each token's SHA-256 is held, and a presented token's digest is compared with every one of them
in constant time. Neither tokens nor digests are logged, and a refused caller learns only that its
token is missing or invalid (UNAUTHENTICATED) or not allowed this call (PERMISSION_DENIED).
"""

import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

INFER, ADMIN = "infer", "admin"
SCOPES = (INFER, ADMIN)
MIN_TOKEN_LENGTH = 16  # shorter ones are guessable; refused when the file is read
OPEN_SERVICES = ("grpc.health.v1.Health",)
# methods that change or list the repository: administration
ADMIN_METHODS = {
    "/inference.GRPCInferenceService/RepositoryIndex",
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/attnserve.v1.VisionService/LoadModel",
    "/attnserve.v1.VisionService/UnloadModel",
}
INFER_SERVICES = ("attnserve.v1.VisionService", "inference.GRPCInferenceService")
EXPLORER_PREFIX = "/explorer/"  # the page's files (service/http/explorer/)


def scope_of(method: str) -> str | None:
    """The scope ``/package.Service/Method`` needs; None for the services open to all."""
    service = method.lstrip("/").split("/")[0]
    if service in OPEN_SERVICES:
        return None
    if method in ADMIN_METHODS or service not in INFER_SERVICES:
        return ADMIN  # reflection, and anything added later until it is classified
    return INFER


def http_scope_of(path: str) -> str | None:
    """The scope an HTTP path needs (service/http/app.py), as for the same calls over gRPC: health none,
    the repository admin, inference and metadata (both APIs) infer; the explorer page none (it holds no
    data: its calls to the API carry the token its user gives); anything else admin."""
    if path.startswith("/v2/health/") or path == "/" or path.startswith(EXPLORER_PREFIX):
        return None
    if path.startswith("/v2/repository/"):
        return ADMIN
    if path in ("/v2", "/v2/", "/v1/models") or path.startswith(("/v2/models/", "/v1/models/")):
        return INFER
    return ADMIN


def read_tokens(path: Path) -> dict[bytes, frozenset[str]]:
    """Token digest → scopes; ValueError naming the line (never the token) when the file is wrong."""
    tokens: dict[bytes, frozenset[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path} line {number}"
        if len(words) != 2:
            raise ValueError(f"{where}: expected 'TOKEN SCOPE[,SCOPE]'")
        token, scopes = words[0], frozenset(words[1].split(","))
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{where}: the token is shorter than {MIN_TOKEN_LENGTH} characters")
        if not scopes <= set(SCOPES):
            raise ValueError(f"{where}: scopes are {', '.join(SCOPES)}, not {', '.join(sorted(scopes))}")
        digest = hashlib.sha256(token.encode()).digest()
        if digest in tokens:
            raise ValueError(f"{where}: the same token is on an earlier line")
        tokens[digest] = scopes
    if not tokens:
        raise ValueError(f"{path}: no tokens (every call would be refused)")
    return tokens


class TokenFile:
    """The tokens, re-read when the file's identity (inode, size, mtime) changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._identity()
        self._tokens = read_tokens(path)  # ValueError at start-up: the server does not start

    def scopes(self, token: str) -> frozenset[str] | None:
        """The token's scopes, or None when it is not one of the file's."""
        self._refresh()
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest, scopes in self._tokens.items():  # every one compared: the time says nothing
            if hmac.compare_digest(presented, digest):
                found = scopes
        return found

    def _refresh(self) -> None:
        try:
            identity = self._identity()
            if identity == self._seen:
                return
            self._seen = identity
            self._tokens = read_tokens(self.path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.error("tokens not reloaded, the previous ones are kept: %s", exc)
            return
        log.info("tokens reloaded from %s (%d)", self.path, len(self._tokens))

    def _identity(self) -> tuple[int, int, int]:
        s = os.stat(self.path)
        return (s.st_ino, s.st_size, s.st_mtime_ns)


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
            return value[7:].strip()
    return None


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenFile, on_refused: Callable[[str], None] = lambda reason: None) -> None:
        self.tokens = tokens
        self.on_refused = on_refused  # a metric: refusals by reason

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        needed = scope_of(details.method)
        handler = await continuation(details)
        if needed is None or handler is None:
            return handler
        refused = refusal(self.tokens, bearer_token(details.invocation_metadata), needed)
        if refused is None:
            return handler
        code, message, reason = refused
        self.on_refused(reason)
        return _refusal(handler, code, message)


def refusal(tokens: TokenFile, token: str | None, needed: str) -> tuple[grpc.StatusCode, str, str] | None:
    """None when ``token`` has the ``needed`` scope; else the status, the message (nothing more is said)
    and the reason the refusal is counted under."""
    scopes = tokens.scopes(token) if token else None
    if scopes is None:
        return grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required", "unauthenticated"
    if needed not in scopes:
        return grpc.StatusCode.PERMISSION_DENIED, "this token may not make this call", "permission_denied"
    return None


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that only refuses; the request's bytes are not parsed."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kind = (
        grpc.stream_stream_rpc_method_handler
        if handler.request_streaming and handler.response_streaming
        else grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return kind(refuse)
