"""The Open Inference Protocol over HTTP/REST (service/http/rest.py), on the session's real server: with
tritonclient's HTTP client (a client we did not write), and with plain HTTP requests for what a curl
user sends and for every error."""

import io
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc
import tritonclient.http
from PIL import Image
from test_overload import metric
from tritonclient.utils import InferenceServerException

from attnserve.models.scenes import classification_scene, detection_scene


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rest(server):
    client = tritonclient.http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


def call(
    server, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a plain HTTP request; POST when there is a body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}", data=body, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_health_and_metadata(rest, server):
    assert rest.is_server_live() and rest.is_server_ready()
    assert rest.get_server_metadata()["name"] == "attnserve"
    assert rest.is_model_ready("cbam_classifier") and rest.is_model_ready("harnet_detector", "1")
    assert not rest.is_model_ready("no_such_model") and not rest.is_model_ready("cbam_classifier", "9")
    metadata = rest.get_model_metadata("cbam_classifier")
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 96, 96]}]
    assert {"logits", "probabilities", "cam"} <= {o["name"] for o in metadata["outputs"]}
    assert [m["name"] for m in rest.get_model_repository_index()] == sorted(
        m["name"] for m in rest.get_model_repository_index()
    )
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/cbam_classifier/versions/1/ready"):
        assert call(server, path)[0] == 200
    assert call(server, "/v2/models/cbam_classifier/versions/2/ready")[0] == 400


def test_images_as_bytes_answer_as_over_grpc(rest, server):
    """Encoded images in a BYTES tensor (binary data), every output: the same numbers as the gRPC
    front-end gives for the same request, since both run on the one data plane."""
    images = np.array([jpeg(classification_scene(7300, i, size=96).image) for i in range(3)], dtype=object)
    tensor = tritonclient.http.InferInput("images", [3], "BYTES")
    tensor.set_data_from_numpy(images)
    outputs = [tritonclient.http.InferRequestedOutput(n) for n in ("probabilities", "cam")]
    over_http = rest.infer("cbam_classifier", [tensor], outputs=outputs)
    with tritonclient.grpc.InferenceServerClient(server.target) as triton:
        g = tritonclient.grpc.InferInput("images", [3], "BYTES")
        g.set_data_from_numpy(images)
        wanted = [tritonclient.grpc.InferRequestedOutput(n) for n in ("probabilities", "cam")]
        over_grpc = triton.infer("cbam_classifier", [g], outputs=wanted)
    for name in ("probabilities", "cam"):
        np.testing.assert_array_equal(over_http.as_numpy(name), over_grpc.as_numpy(name))
    assert over_http.as_numpy("probabilities").shape == (3, 6)


def test_a_large_json_reply_equals_the_binary_one(rest):
    """Eight images' spatial maps as JSON numbers (8 × 48 × 48 = 18 432 values, over the data plane's
    INLINE_REPLY_VALUES: built on the model's lane, off the event loop) carry the binary reply's values."""
    images = np.array([jpeg(classification_scene(7304, i, size=96).image) for i in range(8)], dtype=object)
    tensor = tritonclient.http.InferInput("images", [8], "BYTES")
    tensor.set_data_from_numpy(images)
    name = "stage1_block0_spatial"
    as_json = rest.infer(
        "cbam_classifier", [tensor], outputs=[tritonclient.http.InferRequestedOutput(name, binary_data=False)]
    )
    as_binary = rest.infer(
        "cbam_classifier", [tensor], outputs=[tritonclient.http.InferRequestedOutput(name)]
    )
    assert as_json.as_numpy(name).shape == (8, 1, 48, 48)
    np.testing.assert_array_equal(as_json.as_numpy(name), as_binary.as_numpy(name))


def test_fp32_pixels_and_the_classification_extension(rest):
    pixels = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    tensor = tritonclient.http.InferInput("images", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=False)  # JSON numbers in, JSON numbers out
    outputs = [
        tritonclient.http.InferRequestedOutput("scores", binary_data=False),
        tritonclient.http.InferRequestedOutput("boxes"),
    ]
    reply = rest.infer("harnet_detector", [tensor], outputs=outputs)
    assert reply.as_numpy("scores").shape[0] == 2 and reply.as_numpy("boxes").shape[-1] == 4
    scene = classification_scene(7301, 0, size=96).image.transpose(2, 0, 1)[None].astype(np.float32) / 255
    tensor = tritonclient.http.InferInput("images", [1, 3, 96, 96], "FP32")
    tensor.set_data_from_numpy(scene)
    top = rest.infer(
        "eca_classifier", [tensor], outputs=[tritonclient.http.InferRequestedOutput("logits", class_count=2)]
    ).as_numpy("logits")
    score, index, label = top[0][0].decode().split(":")
    assert (
        top.shape == (1, 2)
        and float(score) > 0
        and label in ("circle", "square", "triangle", "star", "cross", "ring")
    )


def test_a_curl_request_with_json_tensors(server):
    """What a user writes by hand: JSON in and out, no binary data, no version."""
    pixels = np.full((1, 3, 96, 96), 0.5, np.float32)
    body = {
        "id": "req-1",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 96, 96], "data": pixels.tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    status, headers, data = call(server, "/v2/models/eca_classifier/infer", json.dumps(body).encode())
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    reply = json.loads(data)
    assert reply["id"] == "req-1" and reply["model_version"] == "1"
    (output,) = reply["outputs"]
    assert output["shape"] == [1, 6] and abs(sum(output["data"]) - 1) < 1e-4


BINARY_HEADER = json.dumps(
    {
        "inputs": [
            {"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 99}}
        ]
    }
).encode()
PIXELS = json.dumps(
    {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.5] * 12}]}
).encode()


@pytest.mark.parametrize(
    "path, body, headers, status, message",
    [
        ("/v2/models/no_such_model/infer", PIXELS, {}, 404, "is not served here"),
        ("/v2/models/eca_classifier/infer", b"not json", {}, 400, "not JSON"),
        ("/v2/models/eca_classifier/infer", b'{"inputs": []}', {}, 400, "exactly one input"),
        (
            "/v2/models/eca_classifier/infer",
            b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}',
            {},
            400,
            "as binary data",
        ),
        (
            "/v2/models/eca_classifier/infer",
            b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 96, 96], "data": [1, 2]}]}',
            {},
            400,
            "needs 27648 FP32 values, got 2",
        ),
        (
            "/v2/models/eca_classifier/infer",
            BINARY_HEADER + b"abcd",
            {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
            400,
            "binary_data_size 99 is not the 4 bytes",
        ),
        (
            "/v2/models/eca_classifier/infer",
            b"{}",
            {"Inference-Header-Content-Length": "9999"},
            400,
            "length",
        ),
        ("/v2/models/eca_classifier/versions/x1/infer", b"{}", {}, 400, "is not a whole number"),
        ("/v2/repository/models/eca_classifier/load", b"", {}, 400, "model_control is static"),
    ],
)
def test_errors_name_the_problem(server, path, body, headers, status, message):
    code, response_headers, data = call(server, path, body, headers)
    assert code == status, data
    assert response_headers["Content-Type"].startswith("application/json")
    assert message in json.loads(data)["error"]


def test_a_request_over_max_message_mb_is_refused(server):
    """The body limit is the gRPC side's max_message_mb (64 MiB): aiohttp stops reading past it."""
    code, _, data = call(server, "/v2/models/eca_classifier/infer", b" " * (64 * 2**20 + 1))
    assert code == 413 and "max_message_mb" in json.loads(data)["error"]


def test_http_calls_share_the_metrics(rest, server):
    before = metric(server, "attnserve_requests_total", 'method="http/ModelInfer",model="eca_classifier"')
    image = np.array([jpeg(detection_scene(7302, 0, size=128).image)], dtype=object)
    tensor = tritonclient.http.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(image)
    rest.infer("eca_classifier", [tensor])
    after = metric(server, "attnserve_requests_total", 'method="http/ModelInfer",model="eca_classifier"')
    assert after == before + 1
    not_found = 'code="NOT_FOUND",method="http/ModelInfer"'
    before = metric(server, "attnserve_requests_total", not_found)
    with pytest.raises(InferenceServerException) as err:
        rest.infer("no_such_model", [tensor])
    assert "is not served here" in err.value.message()
    assert metric(server, "attnserve_requests_total", not_found) == before + 1


def run_docs_block(server, tmp_path, heading: str) -> str:
    """The first shell block under ``heading`` in docs/service.md, run as written (the port changed to
    the test server's) beside a generated photo.jpg; its output."""
    doc = (Path(__file__).parents[1] / "docs" / "service.md").read_text()
    block = doc.split(heading, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    script = block.replace("localhost:8000", f"127.0.0.1:{server.http_port}")
    Image.fromarray(classification_scene(5, 0, size=160).image).save(tmp_path / "photo.jpg", quality=90)
    result = subprocess.run(
        ["bash", "-c", f"set -e -o pipefail\n{script}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_curl_example_in_the_docs_works(server, tmp_path):
    """docs/service.md's REST block."""
    output = run_docs_block(server, tmp_path, "### REST with curl")
    lines = output.strip().splitlines()
    reply = json.loads(lines[-1][lines[-1].index('{"model_name"') :])
    assert reply["outputs"][0]["shape"] == [1, 2] and reply["outputs"][0]["datatype"] == "BYTES"
    assert '"ready": true' in output and '"platform": "onnxruntime_onnx"' in output
