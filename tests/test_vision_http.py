"""The vision API over HTTP in proto3 JSON (service/http/vision.py) on the session's real server: the
same answers as its gRPC service for the same images, and errors that name the problem."""

import base64
import io
import json

import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image
from test_overload import metric
from test_rest import call, jpeg, run_docs_block

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.client import VisionClient, map_array
from attnserve.models.scenes import classification_scene, detection_scene


def post(server, path: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    code, _, reply = call(server, path, data, {"Content-Type": "application/json", **(headers or {})})
    return code, json.loads(reply)


@pytest.fixture(scope="module")
def client(server):
    with VisionClient(server.target) as c:
        yield c


def test_list_models_and_model_info_match_grpc(server, client):
    code, _, body = call(server, "/v1/models")
    assert code == 200
    listed = json_format.Parse(body, pb.ListModelsResponse())
    assert listed == client.stub.ListModels(pb.ListModelsRequest())
    for path in ("/v1/models/vit_classifier", "/v1/models/vit_classifier/versions/1"):
        code, _, body = call(server, path)
        assert code == 200
        info = json.loads(body)
        assert info["inputWidth"] == 96 and info["version"] == "1"  # proto3 JSON: int64 as a string
        assert json_format.Parse(body, pb.ModelInfo()) == client.model_info("vit_classifier")


def test_classify_with_maps_equals_grpc(server, client):
    image = jpeg(classification_scene(8101, 3, size=160).image)
    request = {
        "images": [{"encoded": base64.b64encode(image).decode()}],
        "topK": 3,
        "maps": {
            "select": ["all"],
            "encoding": "MAP_ENCODING_PNG_HEATMAP",
            "geometry": "MAP_GEOMETRY_ORIGINAL_IMAGE",
        },
    }
    code, reply = post(server, "/v1/models/cbam_classifier/classify", request)
    assert code == 200, reply
    over_http = json_format.ParseDict(reply, pb.ClassifyResponse())
    over_grpc = client.classify(
        [image], "cbam_classifier", top_k=3, select=["all"], encoding="png_heatmap", geometry="original_image"
    )
    (http_result,), (grpc_result,) = over_http.results, over_grpc.results
    assert [(s.label, s.score) for s in http_result.labels] == [
        (s.label, s.score) for s in grpc_result.labels
    ]
    assert len(http_result.labels) == 3
    assert [(m.name, m.encoding, m.data) for m in http_result.maps] == [
        (m.name, m.encoding, m.data) for m in grpc_result.maps
    ]
    assert http_result.image_size.width == 160
    # every field is there, defaults too: a JavaScript client reads each without checking it exists
    assert set(reply["timing"]) == {f"{s}Us" for s in ("decode", "preprocess", "queue", "inference")} | {
        "postprocessUs",
        "encodeUs",
        "totalUs",
    }


def test_detect_with_float16_maps_equals_grpc(server, client):
    image = jpeg(detection_scene(8102, 1, size=256).image)
    body = {
        "images": [{"encoded": base64.b64encode(image).decode()}],
        "scoreThreshold": 0.2,
        "maps": {"select": ["spatial"]},
    }
    code, reply = post(server, "/v1/models/harnet_detector/versions/1/detect", body)
    assert code == 200, reply
    (result,) = json_format.ParseDict(reply, pb.DetectResponse()).results
    (expected,) = client.detect([image], "harnet_detector", score_threshold=0.2, select=["spatial"]).results
    assert result.detections and [(d.label, d.box) for d in result.detections] == [
        (d.label, d.box) for d in expected.detections
    ]
    for got, want in zip(result.maps, expected.maps, strict=True):
        np.testing.assert_array_equal(map_array(got), map_array(want))


def test_a_large_body_answers_as_grpc(server, client):
    """A body over http/calls.py's INLINE_PARSE_BYTES (256 KiB) is parsed on a thread: same answer."""
    image = Image.fromarray(classification_scene(8105, 0, size=96).image).resize((700, 700))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    png = buffer.getvalue()
    assert len(base64.b64encode(png)) > 256 * 1024
    code, reply = post(
        server,
        "/v1/models/eca_classifier/classify",
        {"images": [{"encoded": base64.b64encode(png).decode()}]},
    )
    assert code == 200, reply
    (got,) = json_format.ParseDict(reply, pb.ClassifyResponse()).results
    (want,) = client.classify([png], "eca_classifier").results
    assert [(s.label, s.score) for s in got.labels] == [(s.label, s.score) for s in want.labels]


def test_http_vision_calls_are_counted(server):
    labels = 'method="http/Classify",model="eca_classifier"'
    before = metric(server, "attnserve_requests_total", labels)
    image = base64.b64encode(jpeg(classification_scene(8103, 0).image)).decode()
    assert post(server, "/v1/models/eca_classifier/classify", {"images": [{"encoded": image}]})[0] == 200
    assert metric(server, "attnserve_requests_total", labels) == before + 1


IMAGE = {"images": [{"encoded": base64.b64encode(jpeg(classification_scene(8104, 0).image)).decode()}]}


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/models/cbam_classifier/classify", b"{not json", 400, "is not a ClassifyRequest in JSON"),
        ("/v1/models/cbam_classifier/classify", {"imagez": []}, 400, 'no field named "imagez"'),
        ("/v1/models/cbam_classifier/classify", b"\xff\xfe", 400, "not UTF-8 JSON"),
        ("/v1/models/cbam_classifier/classify", {**IMAGE, "model": "vit_classifier"}, 400, "the path names"),
        ("/v1/models/cbam_classifier/classify", {"images": []}, 400, "no images"),
        (
            "/v1/models/cbam_classifier/classify",
            {"images": [{"encoded": "bm90IGFuIGltYWdl"}]},
            400,
            "image 0",
        ),
        ("/v1/models/cbam_classifier/detect", IMAGE, 400, "classification model"),
        ("/v1/models/no_such_model/classify", IMAGE, 404, "is not served here"),
        ("/v1/models/cbam_classifier/versions/7/classify", IMAGE, 404, "version 7"),
        ("/v1/models/cbam_classifier/versions/x/classify", IMAGE, 400, "is not a whole number"),
        (
            "/v1/models/cbam_classifier/classify",
            {**IMAGE, "maps": {"select": ["nope"]}},
            400,
            "no attention map",
        ),
        (
            "/v1/models/cbam_classifier/classify",
            {**IMAGE, "maps": {"encoding": "MAP_ENCODING_JPEG"}},
            400,
            "MAP_ENCODING_JPEG",
        ),
    ],
)
def test_errors_name_the_problem(server, path, body, status, message):
    code, reply = post(server, path, body)
    assert code == status, reply
    assert message in reply["error"], reply


def test_a_body_over_max_message_mb_is_refused(server):
    code, _, data = call(server, "/v1/models/cbam_classifier/classify", b" " * (64 * 2**20 + 1))
    assert code == 413 and "max_message_mb" in json.loads(data)["error"]


def test_the_curl_example_in_the_docs_works(server, tmp_path):
    """docs/service.md's vision JSON block."""
    output = run_docs_block(server, tmp_path, "## The vision API over HTTP, in JSON")
    print(output)
    reply = json.loads(output)
    assert reply["model"] == "cbam_classifier" and len(reply["results"][0]["labels"]) == 2
    assert reply["results"][0]["imageSize"] == {"height": 160, "width": 160}
