"""The Open Inference Protocol front-end, driven by tritonclient (a client this project did not write),
against the real server; results compared with running the exported model directly."""

import io
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from attnserve.imaging import fit, to_input
from attnserve.manifest import MODEL_FILE
from attnserve.models.scenes import CLASS_NAMES, classification_scene


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server.target)
    yield c
    c.close()


def images(count: int, seed: int = 8000) -> np.ndarray:
    return to_input(np.stack([classification_scene(seed, i, size=96).image for i in range(count)]))


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def direct(repo, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repo / name / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": x}), strict=True))


def tensor_input(x: np.ndarray, name: str = "images", datatype: str = "FP32") -> triton.InferInput:
    inp = triton.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def test_liveness_readiness_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cbam_classifier") and client.is_model_ready("harnet_detector", "1")
    assert not client.is_model_ready("no_such_model") and not client.is_model_ready("cbam_classifier", "9")
    server = client.get_server_metadata()
    assert server.name == "attnserve" and "classification" in server.extensions
    meta = client.get_model_metadata("cbam_classifier")
    assert meta.platform == "onnxruntime_onnx" and list(meta.versions) == ["1"]
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("images", "FP32", [-1, 3, 96, 96])]
    outputs = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
    assert outputs["probabilities"] == ("FP32", [-1, 6]) and outputs["stage3_block0_spatial"] == (
        "FP32",
        [-1, 1, 12, 12],
    )
    detector = {o.name: o.datatype for o in client.get_model_metadata("harnet_detector").outputs}
    assert detector["classes"] == "INT64" and "level4_spatial" in detector


def test_infer_raw_tensors_returns_only_the_requested_outputs(client, demo_repository):
    x = images(3)
    wanted = ["probabilities", "stage3_block0_spatial"]
    result = client.infer(
        "cbam_classifier", [tensor_input(x)], outputs=[triton.InferRequestedOutput(n) for n in wanted]
    )
    expected = direct(demo_repository, "cbam_classifier", x)
    for name in wanted:
        np.testing.assert_allclose(result.as_numpy(name), expected[name], atol=1e-6)
    assert result.as_numpy("logits") is None and result.as_numpy("cam") is None
    assert [o.name for o in result.get_response().outputs] == wanted


def test_infer_without_requested_outputs_returns_them_all(client, demo_repository):
    x = images(1, seed=8001)
    result = client.infer("harnet_detector", [tensor_input(np.resize(x, (1, 3, 128, 128)))])
    names = [o.name for o in result.get_response().outputs]
    assert names == [
        "boxes",
        "scores",
        "classes",
        "level4_spatial",
        "level8_spatial",
        "level16_spatial",
        "cross_level_channel",
    ]
    assert result.as_numpy("classes").dtype == np.int64 and result.as_numpy("boxes").shape == (1, 50, 4)


def test_typed_contents_are_accepted_too(server, demo_repository):
    """fp32_contents instead of raw_input_contents, sent with tritonclient's own stub and messages."""
    x = images(1, seed=8002)
    request = service_pb2.ModelInferRequest(model_name="eca_classifier")
    request.inputs.add(name="images", datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(
        x.ravel()
    )
    request.outputs.add(name="logits")
    with grpc.insecure_channel(server.target) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    logits = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(list(reply.outputs[0].shape))
    np.testing.assert_allclose(logits, direct(demo_repository, "eca_classifier", x)["logits"], atol=1e-5)


def test_classification_extension_gives_scored_labels(client, demo_repository):
    x = images(2, seed=8003)
    out = triton.InferRequestedOutput("probabilities", class_count=3)
    result = client.infer("cbam_classifier", [tensor_input(x)], outputs=[out]).as_numpy("probabilities")
    expected = direct(demo_repository, "cbam_classifier", x)["probabilities"]
    assert result.shape == (2, 3)
    for row, probs in zip(result, expected, strict=True):
        score, index, label = row[0].decode().split(":")
        assert int(index) == probs.argmax() and label == CLASS_NAMES[int(index)]
        assert float(score) == pytest.approx(probs.max(), abs=1e-5)


def test_encoded_images_as_bytes_are_decoded_with_the_models_manifest(client, demo_repository):
    scenes = [classification_scene(8004, i, size=160) for i in range(2)]
    encoded = np.array([jpeg(s.image) for s in scenes], dtype=np.object_)
    result = client.infer(
        "cbam_classifier",
        [tensor_input(encoded, datatype="BYTES")],
        outputs=[triton.InferRequestedOutput("probabilities")],
    )
    fitted = [fit(Image.open(io.BytesIO(e)).convert("RGB"), 96, 96, "resize")[0] for e in encoded]
    expected = direct(demo_repository, "cbam_classifier", to_input(fitted))["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)


def test_concurrent_async_infer_is_batched(client, server):
    def batches() -> tuple[float, float]:
        text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
        values = {}
        for line in text.splitlines():
            if 'model="eca_classifier"' in line and line.startswith(
                ("attnserve_batch_size_count", "attnserve_batch_size_sum")
            ):
                values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
        return values.get("attnserve_batch_size_count", 0.0), values.get("attnserve_batch_size_sum", 0.0)

    count_before, images_before = batches()
    x = images(32, seed=8005)
    done, results, lock = threading.Event(), [], threading.Lock()

    def callback(result, error):
        with lock:
            results.append(error or result)
            if len(results) == len(x):
                done.set()

    for i in range(len(x)):
        client.async_infer(
            "eca_classifier",
            [tensor_input(x[i : i + 1])],
            callback,
            outputs=[triton.InferRequestedOutput("logits")],
        )
    assert done.wait(60)
    assert not [r for r in results if isinstance(r, InferenceServerException)]
    count_after, images_after = batches()
    assert images_after - images_before == 32
    assert count_after - count_before < 32, "some inferences carried more than one request"


def test_stream_infer_answers_each_request_and_reports_errors_in_band(client):
    x = images(3, seed=8006)
    replies, done = [], threading.Event()

    def callback(result, error):
        replies.append(error or result)
        if len(replies) == 4:
            done.set()

    client.start_stream(callback)
    try:
        client.async_stream_infer("eca_classifier", [tensor_input(x[0:1])], request_id="a")
        client.async_stream_infer("eca_classifier", [tensor_input(x[0:1, :, :64])], request_id="bad")
        client.async_stream_infer("eca_classifier", [tensor_input(x[1:2])], request_id="b")
        client.async_stream_infer("eca_classifier", [tensor_input(x[2:3])], request_id="c")
        assert done.wait(30)
    finally:
        client.stop_stream()
    errors = [r for r in replies if isinstance(r, InferenceServerException)]
    assert len(errors) == 1 and "must be [N, 3, 96, 96]" in errors[0].message()
    assert [r.get_response().id for r in replies if not isinstance(r, InferenceServerException)] == [
        "a",
        "b",
        "c",
    ]


def test_repository_index_and_no_loading_in_static_mode(client):
    index = client.get_model_repository_index()
    assert {(m.name, m.version, m.state) for m in index.models} >= {("cbam_classifier", "1", "READY")}
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as err:
            call("cbam_classifier")
        assert "FAILED_PRECONDITION" in err.value.status()
        assert "model_control is static" in err.value.message()
    assert client.is_model_ready("cbam_classifier")


def _bad(kind: str) -> tuple[str, list]:
    x = images(1, seed=8007)
    if kind == "unknown model":
        return "resnet9000", [tensor_input(x)]
    if kind == "wrong shape":
        return "cbam_classifier", [tensor_input(x[:, :, :50])]
    if kind == "wrong datatype":
        return "cbam_classifier", [tensor_input(x.astype(np.float64), datatype="FP64")]
    if kind == "wrong input name":
        return "cbam_classifier", [tensor_input(x, name="input_1")]
    if kind == "undecodable bytes":
        return "cbam_classifier", [
            tensor_input(np.array([b"not a jpeg"], dtype=np.object_), datatype="BYTES")
        ]
    if kind == "too large":
        big = io.BytesIO()
        Image.new("L", (2100, 2000)).save(big, "PNG")
        return "cbam_classifier", [
            tensor_input(np.array([big.getvalue()], dtype=np.object_), datatype="BYTES")
        ]
    raise ValueError(kind)


@pytest.mark.parametrize(
    ("kind", "status", "message"),
    [
        ("unknown model", "NOT_FOUND", "model 'resnet9000' is not served"),
        ("wrong shape", "INVALID_ARGUMENT", "must be [N, 3, 96, 96]"),
        ("wrong datatype", "INVALID_ARGUMENT", "has datatype FP64"),
        ("wrong input name", "INVALID_ARGUMENT", "has the input 'images', not 'input_1'"),
        ("undecodable bytes", "INVALID_ARGUMENT", "is not an image"),
        ("too large", "INVALID_ARGUMENT", "over the server's limit"),
    ],
)
def test_bad_requests_get_the_same_errors_as_the_vision_api(client, kind, status, message):
    model, inputs = _bad(kind)
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs)
    assert status in err.value.status() and message in err.value.message()
    good = client.infer(
        "eca_classifier", [tensor_input(images(1))], outputs=[triton.InferRequestedOutput("logits")]
    )
    assert good.as_numpy("logits").shape == (1, 6)


def test_unknown_output_name(client):
    with pytest.raises(InferenceServerException) as err:
        client.infer(
            "eca_classifier", [tensor_input(images(1))], outputs=[triton.InferRequestedOutput("nope")]
        )
    assert "INVALID_ARGUMENT" in err.value.status() and "has no output 'nope'" in err.value.message()


MALFORMED = Path(__file__).parent / "data" / "malformed"


def raw_request(shape, datatype="FP32", raw=b"", version="", model="cbam_classifier"):
    return service_pb2.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="images", datatype=datatype, shape=shape)
        ],
        raw_input_contents=[raw],
    )


def bytes_raw(elements: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (raw_request([]), "has no shape"),
        (raw_request([-1, 3, 96, 96]), "dimensions cannot be negative"),
        (raw_request([2**62, 2**62, 3, 96]), "of FP32 needs"),  # the count overflows int64: not here
        (raw_request([100_000], "BYTES", bytes_raw([b""] * 100_000)), "at most 64 here"),
        (raw_request([1], "BYTES", bytes_raw([b"x", b"y"])), "more than the 1 images its shape says"),
        (raw_request([1, 3, 96, 96], version="²"), "is not a whole number of at most 9 digits"),
        (raw_request([1, 3, 96, 96], version="9" * 5000), "is not a whole number"),
        *[
            (raw_request([1], "BYTES", bytes_raw([f.read_bytes()])), "could not be decoded")
            for f in sorted(MALFORMED.glob("*.jpg"))
        ],
    ],
    ids=[
        "empty shape",
        "negative",
        "overflow",
        "bytes flood",
        "extra bytes",
        "superscript",
        "long version",
        *[f.stem for f in sorted(MALFORMED.glob("*.jpg"))],
    ],
)
def test_malformed_wire_fields_are_invalid_argument_naming_the_field(server, request_, message):
    """Raw protobuf (tritonclient's own validation bypassed), as a hostile client sends it: each is
    INVALID_ARGUMENT with the reason, quickly, and the server answers the next call."""
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request_, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert message in err.value.details()
        assert (
            stub.ModelReady(service_pb2.ModelReadyRequest(name="cbam_classifier", version="²")).ready is False
        )
        assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
