"""TLS, mutual TLS, certificate and token rotation, bearer tokens with scopes, the plaintext health port
and HTTPS metrics: real servers on loopback, certificates made by openssl, our client and tritonclient."""

import hashlib
import io
import json
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from tritonclient.utils import InferenceServerException

from attnserve.client import ChannelSecurity, VisionClient
from attnserve.models.scenes import classification_scene
from attnserve.service.auth import ADMIN, INFER, read_tokens, scope_of
from bench.certs import issue, make_ca
from bench.harness import start_server

INFER_TOKEN = "infer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA with a server certificate, a second server certificate (for rotation), a client
    certificate; and a rogue CA with a client certificate of its own."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue_ca")
    issue(d, "server", "ca", "serverAuth")
    issue(d, "server2", "ca", "serverAuth")
    issue(d, "client", "ca", "clientAuth")
    issue(d, "rogue", "rogue_ca", "clientAuth")
    (d / "tokens").write_text(f"# the test's tokens\n{INFER_TOKEN} infer\n{ADMIN_TOKEN} admin,infer\n")
    return d


@pytest.fixture(scope="module")
def repository(demo_repository, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("one_model")
    shutil.copytree(demo_repository / "cbam_classifier", repo / "cbam_classifier")
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(classification_scene(9100, 0, size=96).image).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tls_server(pki, repository, tmp_path_factory):
    """TLS, tokens, HTTPS metrics, and health alone in plaintext on its own port."""
    health_port = free_port()
    server = start_server(
        repository,
        tmp_path_factory.mktemp("tls") / "log",
        *secured_settings(pki, health_port),
        security=ChannelSecurity(ca=pki / "ca.pem"),
    )
    server.health_port = health_port
    yield server
    assert server.stop() == 0, server.log()


def secured_settings(pki: Path, health_port: int) -> list[str]:
    """TLS, tokens, HTTPS metrics, and health alone in plaintext on ``health_port``."""
    return [
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--auth-tokens",
        str(pki / "tokens"),
        "--metrics-tls",
        "true",
        "--health-port",
        str(health_port),
    ]


def secured(pki: Path, token: str | None = INFER_TOKEN, **files: Path) -> ChannelSecurity:
    return ChannelSecurity(ca=pki / "ca.pem", token=token, **files)


def test_tls_serves_a_client_that_trusts_the_ca_and_no_other(tls_server, pki):
    with VisionClient(tls_server.target, timeout=10, security=secured(pki)) as client:
        assert client.classify([scene()], "cbam_classifier").results[0].labels
    for security in (ChannelSecurity(), ChannelSecurity(ca=pki / "rogue_ca.pem", token=INFER_TOKEN)):
        with VisionClient(tls_server.target, timeout=5, security=security) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.list_models()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # no handshake: nothing served


def test_calls_without_a_valid_token_are_refused_and_say_nothing_more(tls_server, pki):
    for token in (None, "wrong-token-0123456789abcdef", INFER_TOKEN[:-1]):
        with VisionClient(tls_server.target, timeout=5, security=secured(pki, token)) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.classify([scene()], "cbam_classifier")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert err.value.details() == "a valid bearer token is required"
    log = tls_server.log()
    assert INFER_TOKEN not in log and ADMIN_TOKEN not in log and "wrong-token" not in log


def test_scopes_separate_inference_from_administration(tls_server, pki):
    ca = (pki / "ca.pem").read_bytes()
    triton = tritonclient.grpc.InferenceServerClient(
        tls_server.target, ssl=True, root_certificates=str(pki / "ca.pem")
    )
    infer = {"authorization": f"Bearer {INFER_TOKEN}"}
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    assert triton.is_model_ready("cbam_classifier", headers=infer)
    with pytest.raises(InferenceServerException) as err:
        triton.get_model_repository_index(headers=infer)
    assert (
        "PERMISSION_DENIED" in err.value.status()
        and err.value.message() == "this token may not make this call"
    )
    assert [m.name for m in triton.get_model_repository_index(headers=admin).models] == ["cbam_classifier"]
    with pytest.raises(InferenceServerException) as err:
        triton.unload_model("cbam_classifier", headers=infer)
    assert "PERMISSION_DENIED" in err.value.status()
    with pytest.raises(InferenceServerException) as err:  # let through, and refused by the mode
        triton.unload_model("cbam_classifier", headers=admin)
    assert "FAILED_PRECONDITION" in err.value.status() and "model_control is static" in err.value.message()
    # reflection tells a caller every service: administration
    channel = grpc.secure_channel(tls_server.target, grpc.ssl_channel_credentials(ca))
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ServerReflectionInfo(iter(ask), metadata=tuple(infer.items()), timeout=5))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    replies = list(stub.ServerReflectionInfo(iter(ask), metadata=tuple(admin.items()), timeout=5))
    assert "attnserve.v1.VisionService" in {s.name for s in replies[0].list_services_response.service}
    # health needs no token, on the TLS port and on the plaintext health port
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.health_port}") as plain:
        reply = health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # that port serves health and nothing else
            VisionClient(f"127.0.0.1:{tls_server.health_port}", timeout=5).list_models()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def https(server, pki: Path, path: str, token: str | None = None, body: bytes | None = None) -> int:
    """The status of an HTTPS request to the server's HTTP port, trusting the test's CA."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"https://127.0.0.1:{server.http_port}{path}", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_http_takes_the_same_tls_and_tokens(tls_server, pki):
    """The HTTP port serves TLS with the gRPC port's certificate and checks the same tokens and scopes:
    health open, metadata and inference (both APIs) for infer, the repository for admin."""
    assert https(tls_server, pki, "/v2/health/ready") == 200
    assert https(tls_server, pki, "/v2/models/cbam_classifier") == 401
    assert https(tls_server, pki, "/v2/models/cbam_classifier", "wrong-token-0123456789abcdef") == 401
    assert https(tls_server, pki, "/v2/models/cbam_classifier", INFER_TOKEN) == 200
    assert https(tls_server, pki, "/v2/repository/index", INFER_TOKEN, b"{}") == 403
    assert https(tls_server, pki, "/v2/repository/index", ADMIN_TOKEN, b"{}") == 200
    # the vision API's JSON as its gRPC service; the explorer page and its files hold no data: open
    assert https(tls_server, pki, "/v1/models") == 401
    assert https(tls_server, pki, "/v1/models/cbam_classifier", INFER_TOKEN) == 200
    assert https(tls_server, pki, "/") == 200
    assert https(tls_server, pki, "/explorer/explorer.js") == 200
    assert https(tls_server, pki, "/anything/else") == 401  # unclassified paths need admin
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext is not served
        urllib.request.urlopen(f"http://127.0.0.1:{tls_server.http_port}/v2/health/ready", timeout=10)
    rogue = ssl.create_default_context(cafile=str(pki / "rogue_ca.pem"))
    with pytest.raises(urllib.error.URLError):  # nor to a client that does not trust the certificate
        urllib.request.urlopen(f"https://127.0.0.1:{tls_server.http_port}/v2/health/ready", context=rogue)


def test_metrics_over_https_count_the_refusals(tls_server, pki):
    with (
        VisionClient(tls_server.target, timeout=5, security=secured(pki, None)) as c,
        pytest.raises(grpc.RpcError),
    ):
        c.list_models()  # no token: one refusal counted
    with pytest.raises(OSError):  # plain http: the connection is reset, nothing is answered
        urllib.request.urlopen(tls_server.metrics_url, timeout=5)
    context = ssl.create_default_context(cafile=pki / "ca.pem")
    url = tls_server.metrics_url.replace("http://", "https://")
    text = urllib.request.urlopen(url, timeout=5, context=context).read().decode()
    assert 'attnserve_auth_refused_total{reason="unauthenticated"}' in text


def test_the_predict_command_reaches_a_secured_server(tls_server, pki, tmp_path):
    image = tmp_path / "scene.png"
    image.write_bytes(scene())
    token = tmp_path / "token"
    token.write_text(INFER_TOKEN + "\n")
    command = [
        sys.executable,
        "-m",
        "attnserve.cli",
        "predict",
        str(image),
        "--model",
        "cbam_classifier",
        "--server",
        tls_server.target,
        "--tls-ca",
        str(pki / "ca.pem"),
        "--json",
    ]
    out = subprocess.run([*command, "--token-file", str(token)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"][0]["labels"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)  # no token
    assert out.returncode == 1 and "UNAUTHENTICATED: a valid bearer token is required" in out.stderr


@pytest.fixture(scope="module")
def mtls_server(pki, repository, tmp_path_factory):
    server = start_server(
        repository,
        tmp_path_factory.mktemp("mtls") / "log",
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--tls-client-ca",
        str(pki / "ca.pem"),
        security=ChannelSecurity(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key"),
    )
    yield server
    assert server.stop() == 0, server.log()


def test_mutual_tls_serves_only_clients_with_a_certificate_from_its_ca(mtls_server, pki):
    good = secured(pki, None, cert=pki / "client.pem", key=pki / "client.key")
    with VisionClient(mtls_server.target, timeout=10, security=good) as client:
        assert client.classify([scene()], "cbam_classifier").results[0].labels
    rogue = secured(pki, None, cert=pki / "rogue.pem", key=pki / "rogue.key")
    for security in (secured(pki, None), rogue):
        with VisionClient(mtls_server.target, timeout=5, security=security) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.list_models()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    triton = tritonclient.grpc.InferenceServerClient(
        mtls_server.target,
        ssl=True,
        root_certificates=str(pki / "ca.pem"),
        private_key=str(pki / "client.key"),
        certificate_chain=str(pki / "client.pem"),
    )
    assert triton.is_server_ready() and triton.get_model_metadata("cbam_classifier").name == "cbam_classifier"


def served_certificate(port: int) -> str:
    """The SHA-256 of the certificate a new TLS connection is shown (offering ALPN h2, as gRPC clients
    do; the HTTP port picks none)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def fingerprint(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


def test_certificates_and_tokens_rotate_without_a_restart(pki, repository, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key", "tokens"):
        shutil.copy(pki / name, live / name)
    server = start_server(
        repository,
        tmp_path / "log",
        "--tls-cert",
        str(live / "server.pem"),
        "--tls-key",
        str(live / "server.key"),
        "--auth-tokens",
        str(live / "tokens"),
        security=ChannelSecurity(ca=pki / "ca.pem"),
    )
    ports = (server.port, server.http_port)  # gRPC, and HTTP with the same files
    try:
        assert [served_certificate(p) for p in ports] == [fingerprint(pki / "server.pem")] * 2
        # a broken rotation (a key that does not match) keeps the old pair, logged
        shutil.copy(pki / "client.key", live / "server.key")
        assert [served_certificate(p) for p in ports] == [fingerprint(pki / "server.pem")] * 2
        assert "TLS certificate not reloaded, the previous one is kept" in server.log()
        assert "TLS certificate not reloaded for HTTP, the previous one is kept" in server.log()
        # the new pair, written as cert-manager would: served to the next connection
        shutil.copy(pki / "server2.pem", live / "server.pem")
        shutil.copy(pki / "server2.key", live / "server.key")
        assert [served_certificate(p) for p in ports] == [fingerprint(pki / "server2.pem")] * 2
        with VisionClient(server.target, timeout=10, security=secured(pki)) as client:
            assert client.list_models().models
            new_token = "rotated-token-0123456789abcdef"
            (live / "tokens").write_text(f"{new_token} infer\n")
            with pytest.raises(grpc.RpcError) as err:
                client.list_models()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with VisionClient(server.target, timeout=10, security=secured(pki, new_token)) as client:
            assert client.list_models().models
            (live / "tokens").write_text("short infer\n")  # invalid: the previous tokens stay
            assert client.list_models().models
        assert "tokens not reloaded, the previous ones are kept" in server.log()
        assert new_token not in server.log()
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "server.pem"], "tls_cert and tls_key go together"),
        (["--tls-client-ca", "ca.pem"], "tls_client_ca and metrics_tls need tls_cert and tls_key"),
        (["--tls-cert", "server.pem", "--tls-key", "client.key"], "does not load"),
        (["--auth-tokens", "nowhere"], "auth_tokens nowhere is not a file"),
        (["--auth-tokens", "server.ext"], "server.ext line 1: expected 'TOKEN SCOPE[,SCOPE]'"),
        (["--auth-tokens", "ca.pem"], "ca.pem line 1: the token is shorter than 16 characters"),
    ],
)
def test_security_settings_that_do_not_add_up_stop_the_server_at_start(pki, repository, args, message):
    command = [
        sys.executable,
        "-m",
        "attnserve.cli",
        "serve",
        "--repository",
        str(repository),
        "--port",
        "0",
        "--metrics-port",
        "0",
        *args,
    ]
    out = subprocess.run(command, capture_output=True, text=True, cwd=pki, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{INFER_TOKEN} infer,write\n", "line 1: scopes are infer, admin, not infer, write"),
        (f"{INFER_TOKEN} infer\n{INFER_TOKEN} admin\n", "line 2: the same token is on an earlier line"),
        ("# nothing but a comment\n", "no tokens (every call would be refused)"),
    ],
)
def test_a_tokens_file_that_does_not_parse_names_the_line_and_never_the_token(tmp_path, text, message):
    (tmp_path / "tokens").write_text(text)
    with pytest.raises(ValueError) as err:
        read_tokens(tmp_path / "tokens")
    assert message in str(err.value) and INFER_TOKEN not in str(err.value)


def test_every_method_has_a_scope_and_unknown_ones_need_administration():
    assert scope_of("/grpc.health.v1.Health/Check") is None
    assert (
        scope_of("/attnserve.v1.VisionService/Classify")
        == scope_of("/inference.GRPCInferenceService/ModelInfer")
        == INFER
    )
    assert scope_of("/inference.GRPCInferenceService/RepositoryModelLoad") == ADMIN
    assert scope_of("/attnserve.v1.VisionService/LoadModel") == ADMIN
    assert scope_of("/attnserve.v1.VisionService/UnloadModel") == ADMIN
    assert scope_of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") == ADMIN
    assert scope_of("/some.NewService/Method") == ADMIN


def test_only_models_in_the_digest_list_load(demo_repository, tmp_path):
    """A writable repository cannot swap a model unnoticed: eca_classifier's files are replaced by
    harnet_detector's (its manifest and model agree, so the manifest's own digest passes), and
    fcos_detector is not listed at all."""
    repo = tmp_path / "repository"
    for name in ("cbam_classifier", "eca_classifier", "fcos_detector"):
        shutil.copytree(demo_repository / name, repo / name)
    lines = [
        f"{hashlib.sha256((repo / n / '1' / 'model.onnx').read_bytes()).hexdigest()}  {n}/1/model.onnx"
        for n in ("cbam_classifier", "eca_classifier")
    ]
    (tmp_path / "digests").write_text("\n".join(lines) + "\n")
    for file in ("model.onnx", "manifest.json"):  # the swap, after the list was made
        shutil.copy(demo_repository / "harnet_detector" / "1" / file, repo / "eca_classifier" / "1" / file)
    server = start_server(repo, tmp_path / "log", "--model-digests", str(tmp_path / "digests"))
    try:
        with VisionClient(server.target, timeout=10) as client:
            assert [m.name for m in client.list_models().models] == ["cbam_classifier"]
        triton = tritonclient.grpc.InferenceServerClient(server.target)
        reasons = {m.name: m.reason for m in triton.get_model_repository_index().models if m.reason}
        assert "does not match its sha256 in model_digests" in reasons["eca_classifier"]
        assert "fcos_detector/1/model.onnx is not in model_digests" in reasons["fcos_detector"]
    finally:
        assert server.stop() == 0, server.log()


def test_a_digest_list_that_does_not_parse_stops_the_server(repository, tmp_path):
    (tmp_path / "digests").write_text("not-a-digest  cbam_classifier/1/model.onnx\n")
    command = [sys.executable, "-m", "attnserve.cli", "serve", "--repository", str(repository), "--port", "0"]
    command += ["--metrics-port", "0", "--model-digests", str(tmp_path / "digests")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "line 1: expected sha256sum's" in out.stderr, out.stderr


def test_tls_tokens_and_https_metrics_hold_with_several_workers(pki, repository, tmp_path):
    """The same settings over two worker processes: each worker's port speaks TLS and checks tokens;
    the supervisor serves /metrics over HTTPS, summing the workers' refusals, and the plaintext probes."""
    health_port = free_port()
    server = start_server(
        repository,
        tmp_path / "log",
        "--workers",
        "2",
        *secured_settings(pki, health_port),
        security=ChannelSecurity(ca=pki / "ca.pem"),
    )
    try:
        # over 16 connections, so over both workers (2 / 2**16 that the kernel gives all to one)
        with VisionClient(server.target, timeout=10, security=secured(pki), connections=16) as client:
            for _ in range(16):
                assert client.classify([scene()], "cbam_classifier").results[0].labels
        refused = 0
        with VisionClient(server.target, timeout=10, security=secured(pki, None), connections=16) as client:
            for _ in range(16):
                with pytest.raises(grpc.RpcError) as err:
                    client.list_models()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                refused += 1
        context = ssl.create_default_context(cafile=pki / "ca.pem")
        url = server.metrics_url.replace("http://", "https://")
        text = urllib.request.urlopen(url, timeout=5, context=context).read().decode()
        assert f'attnserve_auth_refused_total{{reason="unauthenticated"}} {float(refused)}' in text
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.stop() == 0, server.log()
