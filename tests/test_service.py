"""The vision API against a real server on loopback: real ONNX Runtime, images encoded with Pillow,
results compared with running the exported model directly."""

import asyncio
import io
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.client import AsyncVisionClient, VisionClient, map_array
from attnserve.imaging import fit, to_input
from attnserve.manifest import MODEL_FILE
from attnserve.models.scenes import CLASS_NAMES, classification_scene, detection_scene


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **params) -> bytes:
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def direct(repo, name: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """The exported model run directly in ONNX Runtime."""
    session = ort.InferenceSession(str(repo / name / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images}), strict=True))


@pytest.fixture(scope="module")
def client(server):
    with VisionClient(server.target) as c:
        yield c


def scrape(server) -> str:
    return urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()


def test_health_and_reflection(server):
    for service in ("", "attnserve.v1.VisionService", "cbam_classifier", "harnet_detector"):
        assert server.health(service) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        server.health("no_such_model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
    names = {s.name for s in reply.list_services_response.service}
    assert {"attnserve.v1.VisionService", "grpc.health.v1.Health"} <= names


def test_list_models_and_model_info(client):
    models = {m.name: m for m in client.list_models().models}
    assert set(models) == {
        "cbam_classifier",
        "eca_classifier",
        "fcos_detector",
        "harnet_detector",
        "vit_classifier",
    }
    assert models["harnet_detector"].task == "detection" and list(models["harnet_detector"].versions) == [1]
    info = client.model_info("cbam_classifier")
    assert list(info.labels) == list(CLASS_NAMES) and (info.input_height, info.input_width) == (96, 96)
    assert info.provider == "CPUExecutionProvider" and info.precision == "fp32" and len(info.sha256) == 64
    kinds = {a.name: a.kind for a in info.attention}
    assert kinds["cam"] == "cam" and kinds["stage3_block0_spatial"] == "spatial"


def test_classify_equals_the_exported_model(client, demo_repository):
    scenes = [classification_scene(6000, i, size=96) for i in range(4)]
    reply = client.classify([encode(s.image) for s in scenes], "cbam_classifier", top_k=6, select=["all"])
    expected = direct(demo_repository, "cbam_classifier", to_input(np.stack([s.image for s in scenes])))
    assert reply.model == "cbam_classifier" and reply.version == 1 and len(reply.results) == 4
    for i, result in enumerate(reply.results):
        probabilities = np.zeros(6, np.float32)
        for s in result.labels:
            probabilities[s.class_id] = s.score
            assert s.label == CLASS_NAMES[s.class_id]
        np.testing.assert_allclose(probabilities, expected["probabilities"][i], atol=1e-5)
        assert [s.score for s in result.labels] == sorted((s.score for s in result.labels), reverse=True)
        maps = {m.name: m for m in result.maps}
        assert set(maps) == set(expected) - {"logits", "probabilities"}
        for name, m in maps.items():  # float16 on the model's grid: the graph's own values
            np.testing.assert_allclose(map_array(m), expected[name][i], atol=2e-3, rtol=2e-3, err_msg=name)
    timing = reply.timing
    assert timing.inference_us > 0 and timing.total_us >= timing.inference_us and timing.decode_us > 0


def test_maps_in_the_original_geometry_agree_with_the_grid(client, demo_repository):
    """A 384×288 photo letterboxed into the 128×128 detector: the map on the original image, read back
    at the centres of grid cells, is the grid map."""
    scene = detection_scene(6001, 0, size=384)
    photo = Image.fromarray(scene.image).crop((0, 48, 384, 336))  # 384×288
    reply = client.detect(
        [encode(photo)], "harnet_detector", select=["level8_spatial"], geometry="original_image"
    )
    (m,) = reply.results[0].maps
    assert m.geometry == pb.MAP_GEOMETRY_ORIGINAL_IMAGE and list(m.shape) == [1, 288, 384]
    fitted, placement = fit(photo, 128, 128, "letterbox")
    grid = direct(demo_repository, "harnet_detector", to_input([fitted]))["level8_spatial"][0, 0]  # 16×16
    on_original = map_array(m)[0]
    for gy in range(2, 14):  # rows inside the letterbox band
        for gx in range(16):
            x = ((gx + 0.5) * 8 - placement.offset_x) / placement.scale_x
            y = ((gy + 0.5) * 8 - placement.offset_y) / placement.scale_y
            if 0 <= x < 383 and 0 <= y < 287:
                assert on_original[int(y), int(x)] == pytest.approx(grid[gy, gx], abs=0.02)


def test_detect_finds_the_objects_in_original_pixels(client):
    scene = detection_scene(6002, 1, size=320)
    reply = client.detect([encode(scene.image, "JPEG", quality=95)], "harnet_detector", score_threshold=0.5)
    result = reply.results[0]
    assert (result.image_size.height, result.image_size.width) == (320, 320)
    found = {(d.class_id, round(d.box.x1), round(d.box.y1)) for d in result.detections}
    for box, label in zip(scene.boxes, scene.labels, strict=True):
        best = max(
            (d for d in result.detections if d.class_id == label),
            key=lambda d: _iou(box, (d.box.x1, d.box.y1, d.box.x2, d.box.y2)),
            default=None,
        )
        assert best is not None and _iou(box, (best.box.x1, best.box.y1, best.box.x2, best.box.y2)) > 0.6, (
            found
        )


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _formats(image: np.ndarray) -> dict[str, bytes]:
    rgb = Image.fromarray(image)
    sixteen = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    return {
        "jpeg": encode(rgb, "JPEG", quality=92),
        "png": encode(rgb),
        "webp": encode(rgb, "WEBP", lossless=True),
        "bmp": encode(rgb, "BMP"),
        "tiff": encode(rgb, "TIFF"),
        "gif": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "grayscale": encode(rgb.convert("L")),
        "palette": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE)),
        "rgba": encode(rgb.convert("RGBA")),
        "cmyk": encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "16-bit": encode(sixteen),
    }


def test_every_image_format_and_mode_is_read(client):
    scene = classification_scene(6003, 2, size=96)
    label = CLASS_NAMES[int(scene.labels[0])]
    grey_ok = {"grayscale", "16-bit"}  # colour is lost: the prediction may differ, the request must not
    for name, data in _formats(scene.image).items():
        result = client.classify([data], "eca_classifier").results[0]
        assert (result.image_size.height, result.image_size.width) == (96, 96), name
        if name not in grey_ok:
            assert result.labels[0].label == label, name


def test_raw_pixels_give_the_same_answer_as_png(client):
    scene = classification_scene(6004, 0, size=150)
    from_png = client.classify([encode(scene.image)], "cbam_classifier").results[0]
    from_raw = client.classify([scene.image], "cbam_classifier").results[0]
    assert [(s.class_id, round(s.score, 5)) for s in from_png.labels] == [
        (s.class_id, round(s.score, 5)) for s in from_raw.labels
    ]


@pytest.mark.parametrize(
    "size, fmt",
    [
        ((96, 96), "JPEG"),  # a few KiB, 96² pixels: decoded on the event loop (dataplane.INLINE_DECODE_*)
        ((96, 4000), "JPEG"),  # small, its header read on the loop, but 384 000 pixels: decoded on the lane
        ((1200, 1200), "PNG"),  # under 64 KiB, but Pillow reads a PNG to its end to open it: the lane
        ((400, 400), "BMP"),  # 470 KiB: the lane
    ],
)
def test_where_an_image_is_decoded_does_not_change_the_answer(client, size, fmt):
    """Small requests are decoded on the event loop, others on the model's lane, by the same code: the
    answer is the one the same pixels give sent raw, whichever path it took."""
    scene = classification_scene(6006, 0, size=96).image
    image = Image.fromarray(scene).resize(size, Image.Resampling.NEAREST)
    data = encode(image, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    assert (len(data) < 64 * 1024) == (fmt != "BMP"), len(data)
    from_file = client.classify([data], "cbam_classifier").results[0]
    from_raw = client.classify([np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))], "cbam_classifier")
    assert [(s.class_id, round(s.score, 5)) for s in from_file.labels] == [
        (s.class_id, round(s.score, 5)) for s in from_raw.results[0].labels
    ]


def test_exif_orientation_is_applied(client):
    scene = classification_scene(6005, 0, size=96)
    rotated = Image.fromarray(scene.image).rotate(90, expand=True).resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90° clockwise
    data = encode(rotated, "JPEG", quality=95, exif=exif.tobytes())
    result = client.classify([data], "cbam_classifier").results[0]
    assert (result.image_size.height, result.image_size.width) == (96, 64)  # upright: width and height swap


def test_png_heatmap_and_overlay_encodings(client):
    scene = classification_scene(6006, 0, size=200)
    heat = (
        client.classify(
            [encode(scene.image)], "cbam_classifier", select=["stage3_block0_spatial"], encoding="png_heatmap"
        )
        .results[0]
        .maps[0]
    )
    assert heat.encoding == pb.MAP_ENCODING_PNG_HEATMAP and list(heat.shape) == [12, 12]
    pixels = map_array(heat)
    assert pixels.shape == (12, 12) and pixels.min() == 0 and pixels.max() == 255
    overlay = (
        client.classify(
            [encode(scene.image)],
            "cbam_classifier",
            select=["cam", "channel"],
            encoding="png_overlay",
            geometry="original_image",
        )
        .results[0]
        .maps
    )
    by_kind = {m.kind: m for m in overlay}
    cam = Image.open(io.BytesIO(by_kind["cam"].data))
    assert cam.mode == "RGB" and cam.size == (200, 200)
    assert by_kind["channel"].encoding == pb.MAP_ENCODING_FLOAT16  # channel maps have no geometry


def test_streaming_answers_each_frame_in_order(client):
    frames = [encode(detection_scene(6007, i, size=128).image) for i in range(5)]
    replies = list(client.stream_detect(frames, "harnet_detector"))
    assert len(replies) == 5
    for frame, reply in zip(frames, replies, strict=True):
        single = client.detect([frame], "harnet_detector").results[0]
        assert [d.class_id for d in reply.results[0].detections] == [d.class_id for d in single.detections]


def test_concurrent_requests_are_batched(server):
    scenes = [encode(classification_scene(6008, i, size=96).image) for i in range(32)]

    async def burst():
        async with AsyncVisionClient(server.target) as c:
            return await asyncio.gather(*(c.classify([s], "eca_classifier") for s in scenes))

    replies = asyncio.run(burst())
    assert all(len(r.results[0].labels) == 5 for r in replies)
    metrics = scrape(server)
    buckets = {
        le: float(v)
        for le, v in _series(metrics, "attnserve_batch_size_bucket", 'model="eca_classifier"', "le")
    }
    assert buckets["+Inf"] > buckets["1.0"], "some batches held more than one image"


def _series(text: str, name: str, match: str, label: str):
    for line in text.splitlines():
        if line.startswith(name + "{") and match in line:
            value = line.split(f'{label}="')[1].split('"')[0]
            yield value, line.rsplit(" ", 1)[1]


BAD_REQUESTS = [
    (
        "unknown model",
        dict(model="resnet9000"),
        grpc.StatusCode.NOT_FOUND,
        "model 'resnet9000' is not served",
    ),
    ("unknown version", dict(version=7), grpc.StatusCode.NOT_FOUND, "has no version 7"),
    ("empty image", dict(images=[b""]), grpc.StatusCode.INVALID_ARGUMENT, "image 0 is empty"),
    ("not an image", dict(images=[b"hello world" * 10]), grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
    ("too many pixels", dict(images=["big"]), grpc.StatusCode.INVALID_ARGUMENT, "over the server's limit"),
    ("truncated jpeg", dict(images=["truncated"]), grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded"),
    ("bad raw shape", dict(images=["raw"]), grpc.StatusCode.INVALID_ARGUMENT, "needs 300 bytes, got 299"),
    ("top_k zero", dict(top_k=0), grpc.StatusCode.INVALID_ARGUMENT, "top_k must be positive"),
    (
        "nan threshold",
        dict(score_threshold=float("nan")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "score_threshold",
    ),
    ("unknown map", dict(select=["stage9_spatial"]), grpc.StatusCode.INVALID_ARGUMENT, "no attention map"),
    ("wrong task", dict(model="harnet_detector"), grpc.StatusCode.INVALID_ARGUMENT, "call Detect"),
    ("no images", dict(images=[]), grpc.StatusCode.INVALID_ARGUMENT, "has no images"),
    (  # 30 GIFs of a few KB that decode to 1900² each: 108 MP, over the 100 MP default budget
        "request over the pixel budget",
        dict(images=["gif"] * 30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "over the server's budget of 100000000 per request (max_request_pixels)",
    ),
]


def _image_for(kind, good: bytes):
    if kind == "big":
        return encode(Image.new("L", (2100, 2000)))  # 4.2 MP, over the test server's 4 MP limit
    if kind == "truncated":
        return encode(Image.open(io.BytesIO(good)).convert("RGB"), "JPEG")[:400]
    if kind == "raw":
        return pb.Image(raw=pb.RawImage(rgb=bytes(299), height=10, width=10))
    if kind == "gif":
        return encode(Image.new("P", (1900, 1900)), "GIF")  # 3.6 MP, under the 4 MP per-image limit
    return kind


@pytest.mark.parametrize(
    ("case", "change", "code", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_a_named_error_and_the_server_keeps_serving(client, case, change, code, message):
    good = encode(classification_scene(6009, 0, size=96).image)
    request = {"model": "cbam_classifier", "images": [good], **change}
    images = [_image_for(i, good) for i in request.pop("images")]
    with pytest.raises(grpc.RpcError) as err:
        if any(isinstance(i, pb.Image) for i in images):  # malformed raw pixels: the client would refuse them
            client.stub.Classify(pb.ClassifyRequest(model=request["model"], images=images), timeout=10)
        else:
            client.classify(images, **request)
    assert err.value.code() == code and message in err.value.details()
    assert "Traceback" not in err.value.details()
    assert client.classify([good], "cbam_classifier").results[0].labels, "still serving"


def test_options_threshold_max_detections_and_stream_classify(client):
    scene = detection_scene(6010, 2, size=128)
    two = client.detect([encode(scene.image)], "harnet_detector", score_threshold=0.0, max_detections=2)
    assert len(two.results[0].detections) == 2
    everything = client.detect([encode(scene.image)], "harnet_detector", score_threshold=0.0)
    assert len(everything.results[0].detections) == 50  # the model's fixed top K
    image = encode(classification_scene(6011, 0, size=96).image)
    confident = client.classify([image], "cbam_classifier", score_threshold=0.5).results[0].labels
    assert len(confident) <= 1 and all(s.score >= 0.5 for s in confident)
    frames = [encode(classification_scene(6012, i, size=96).image) for i in range(3)]
    streamed = [r.results[0].labels[0].class_id for r in client.stream_classify(frames, "eca_classifier")]
    assert streamed == [client.classify([f], "eca_classifier").results[0].labels[0].class_id for f in frames]


def wide_jpeg() -> bytes:
    """2400×1200 (2.9 MP, under the test server's 4 MP per-image limit), a scene in the middle."""
    scene = Image.fromarray(classification_scene(6031, 0, size=96).image).resize((1200, 1200))
    canvas = Image.new("RGB", (2400, 1200), (90, 90, 90))
    canvas.paste(scene, (600, 0))
    return encode(canvas, "JPEG", quality=90)


def test_maps_in_original_geometry_are_capped_at_max_map_side(client):
    """The default 2048: a 2400×1200 original gets its maps at 2048×1024, the aspect kept; the result
    still reports the original's size."""
    reply = client.classify([wide_jpeg()], "cbam_classifier", select=["spatial"], geometry="original_image")
    result = reply.results[0]
    assert (result.image_size.width, result.image_size.height) == (2400, 1200)
    assert result.maps and all(tuple(m.shape) == (1, 1024, 2048) for m in result.maps)


def test_maps_that_would_not_fit_the_message_limit_are_refused_before_decoding(client):
    """Every map as float16 on two 2400×1200 originals: each plane 2048×1024×2 bytes = 4 MiB, the CAM
    one per class, about 80 MiB in all against the default 64 MiB message limit. Sized from the
    headers, refused with the reason; the same maps as PNG heatmaps on the model grid are served."""
    images = [wide_jpeg()] * 2
    with pytest.raises(grpc.RpcError) as err:
        client.classify(images, "cbam_classifier", select=["all"], geometry="original_image")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the server's max_message_mb of 64" in err.value.details()
    reply = client.classify(images, "cbam_classifier", select=["all"], encoding="png_heatmap")
    assert len(reply.results) == 2 and reply.results[0].maps
