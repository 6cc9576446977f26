"""Server lifecycle and operations: draining on SIGTERM, a full queue, deadlines, metrics scraped by a
real Prometheus, settings precedence, the generated code, and the predict command."""

import argparse
import asyncio
import collections
import dataclasses
import io
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_server import scraping, wait_for

from attnserve.api.v1 import vision_pb2, vision_pb2_grpc
from attnserve.client import AsyncVisionClient, VisionClient
from attnserve.models.scenes import classification_scene, detection_scene
from attnserve.service.errors import ServiceError
from attnserve.service.metrics import Metrics
from attnserve.service.settings import Settings, add_arguments, load
from attnserve.service.stages.batch import Batcher
from attnserve.service.stages.run import OnnxModel
from bench.harness import start_server

ROOT = Path(__file__).parent.parent


def jpeg(array: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    im = Image.fromarray(array)
    if size:
        im = im.resize(size)
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def metric(server, name: str, match: str = "") -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and match in line
    )


def test_sigterm_drains_calls_in_flight_and_exits_0(demo_repository, tmp_path):
    server = start_server(
        demo_repository, tmp_path / "log", "--max-batch-size", "1", "--grace-period-s", "30"
    )
    photos = [jpeg(detection_scene(7000, i, size=256).image, (1920, 1080)) for i in range(4)]

    async def calls_then_sigterm():
        async with AsyncVisionClient(server.target, timeout=60) as client:
            calls = [
                asyncio.create_task(client.detect(photos, "harnet_detector", select=["all"]))
                for _ in range(12)
            ]
            # SIGTERM once the server has received every call (a call still uploading when the server
            # stops is refused: that is what shutdown_delay_s is for)
            while metric(server, "attnserve_in_flight_requests", 'method="Detect"') < len(calls):
                await asyncio.sleep(0.005)
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*calls, return_exceptions=True)

    replies = asyncio.run(calls_then_sigterm())
    assert server.process.wait(60) == 0
    failures = [r for r in replies if isinstance(r, Exception)]
    assert not failures, failures
    assert all(len(r.results) == 4 and r.results[0].maps for r in replies)
    assert "shutting down: NOT_SERVING, 30.0 s for the calls in flight" in server.log()
    assert "stopped" in server.log()


def test_sigterm_under_high_concurrency_fails_no_call(demo_repository, tmp_path):
    """768 calls over 8 channels, most of them still in gRPC's backlog when SIGTERM comes (the server
    answers a few hundred a second on 2 cores): each completes, or at worst is refused UNAVAILABLE, which
    clients retry elsewhere; none is CANCELLED (closing the port while gRPC holds calls it has not
    handed over would cancel them). The admission limits are raised so that none is shed either."""
    server = start_server(
        demo_repository, tmp_path / "log", "--max-queue-size", "4096", "--max-in-flight-images", "4096"
    )
    image = jpeg(classification_scene(7100, 0, size=96).image)

    async def calls_then_sigterm():
        clients = [AsyncVisionClient(server.target, timeout=60) for _ in range(8)]
        calls = [asyncio.create_task(clients[i % 8].classify([image], "cbam_classifier")) for i in range(768)]
        await asyncio.sleep(0.3)  # sent, mostly not answered yet
        server.process.send_signal(signal.SIGTERM)
        replies = await asyncio.gather(*calls, return_exceptions=True)
        for client in clients:
            await client.close()
        return replies

    replies = asyncio.run(calls_then_sigterm())
    assert server.process.wait(60) == 0
    codes = [r.code() for r in replies if isinstance(r, grpc.aio.AioRpcError)]
    assert not [r for r in replies if isinstance(r, Exception) and not isinstance(r, grpc.aio.AioRpcError)]
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}, collections.Counter(codes)
    answered = len(replies) - len(codes)
    assert answered > len(replies) // 2, f"only {answered} of {len(replies)} answered"


def test_a_full_queue_answers_resource_exhausted_and_recovers(demo_repository, tmp_path):
    server = start_server(
        demo_repository,
        tmp_path / "log",
        "--max-queue-size",
        "2",
        "--max-batch-size",
        "1",
        "--max-queue-delay-ms",
        "0",
    )
    image = jpeg(classification_scene(7001, 0, size=96).image)

    async def burst():
        async with AsyncVisionClient(server.target) as client:
            calls = (client.classify([image, image], "cbam_classifier") for _ in range(40))
            return await asyncio.gather(*calls, return_exceptions=True)

    try:
        replies = asyncio.run(burst())
        refused = [r for r in replies if isinstance(r, grpc.RpcError)]
        assert refused and all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
        assert "the queue for model cbam_classifier/1 is full" in refused[0].details()
        assert len(refused) < len(replies), "the ones that fit were answered"
        with VisionClient(server.target) as client:
            assert client.classify([image], "cbam_classifier").results[0].labels
        assert metric(server, "attnserve_requests_total", 'code="RESOURCE_EXHAUSTED"') == len(refused)
    finally:
        assert server.stop() == 0


def test_a_request_past_its_deadline_is_dropped_before_inference(demo_repository):
    model = OnnxModel(demo_repository / "eca_classifier" / "1", "cpu", 1, 1)
    metrics = Metrics()
    batcher = Batcher(model, max_batch_size=4, max_queue_delay_s=0.0, max_queue_images=8, metrics=metrics)
    images = np.zeros((1, 3, 96, 96), np.float32)

    async def run():
        batcher.announce()
        with pytest.raises(ServiceError) as err:
            await batcher.submit(images, ["logits"], deadline=time.monotonic() - 0.001)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        batcher.announce()
        ok = await batcher.submit(images, ["logits"], deadline=time.monotonic() + 10)
        await batcher.close()
        return ok

    assert asyncio.run(run()).outputs["logits"].shape == (1, 6)
    assert metrics.batch_size.labels("eca_classifier", "1")._sum.get() == 1, "only the live request ran"


@pytest.mark.parametrize("instances", [1, 2])
def test_instance_count_runs_that_many_batches_at_once(demo_repository, instances):
    """Two full batches submitted together: with one instance the second waits out the first's
    inference in the queue; with two it starts at once (its wait is the batcher's own bookkeeping,
    microseconds, against the milliseconds of eight images' inference)."""
    model = OnnxModel(demo_repository / "cbam_classifier" / "1", "cpu", 1, 1)
    batcher = Batcher(model, 8, 0.0, 64, Metrics(), instances)
    images = np.zeros((8, 3, 96, 96), np.float32)

    async def run():
        batcher.announce()
        batcher.announce()
        results = await asyncio.gather(*(batcher.submit(images, ["logits"], None) for _ in range(2)))
        await batcher.close()
        return results

    first, second = sorted(asyncio.run(run()), key=lambda r: r.queue_seconds)
    if instances == 1:
        assert second.queue_seconds >= first.inference_seconds
    else:
        assert second.queue_seconds < first.inference_seconds / 4, (second, first)


def test_metrics_pass_promtool_and_a_real_prometheus_answers_quantiles(server, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "make test installs Debian's prometheus package (promtool, prometheus)"
    with VisionClient(server.target) as client:
        client.classify(
            [jpeg(classification_scene(7002, 0, size=96).image)], "cbam_classifier", select=["cam"]
        )
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in (
        "requests_total",
        "request_duration_seconds_bucket",
        "stage_duration_seconds_bucket",
        "batch_size_bucket",
        "queue_depth",
        "in_flight_requests",
        "model_load_duration_seconds",
        "model_info",
    ):
        assert f"attnserve_{name}".encode() in text, name

    with scraping(f"127.0.0.1:{server.metrics_port}", tmp_path) as query:
        buckets = 'attnserve_stage_duration_seconds_bucket{model="cbam_classifier"}'

        def answered() -> dict:
            with VisionClient(server.target) as client:  # traffic between scrapes, so rates are not zero
                client.classify([jpeg(classification_scene(7003, 0, size=96).image)], "cbam_classifier")
            result = query(f"histogram_quantile(0.95, sum by (le, stage) (rate({buckets}[30s])))")
            return {r["metric"]["stage"]: float(r["value"][1]) for r in result if r["value"][1] != "NaN"}

        stages = wait_for(lambda: (s := answered()) and "inference" in s and s, 40)
        assert set(stages) >= {"decode", "preprocess", "queue", "inference", "postprocess"}
        assert 0 < stages["inference"] < 10


def test_settings_precedence_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "attnserve.toml"
    config.write_text('port = 6000\nmetrics_port = 7000\nmax_batch_size = 4\nrepository = "/models"\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--port", "6002"])
    settings = load(args, environ={"ATTNSERVE_PORT": "6001", "ATTNSERVE_METRICS_PORT": "7001"})
    assert settings.port == 6002  # flag over environment over file
    assert settings.metrics_port == 7001  # environment over file
    assert settings.max_batch_size == 4 and settings.repository == Path("/models")  # file over default
    assert settings.grace_period_s == Settings().grace_period_s
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="unknown settings in .*: prot"):
        load(parser.parse_args(["--config", str(config)]), environ={})
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        load(parser.parse_args(["--max-batch-size", "0"]), environ={})


def test_boolean_settings_read_toml_flags_and_environment(tmp_path):
    config = tmp_path / "attnserve.toml"
    config.write_text("reflection = false\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert load(parser.parse_args(["--config", str(config)]), environ={}).reflection is False
    assert load(parser.parse_args([]), environ={"ATTNSERVE_REFLECTION": "on"}).reflection is True
    assert load(parser.parse_args(["--reflection", "no"]), environ={}).reflection is False
    with pytest.raises(SystemExit):  # argparse: "invalid _boolean value: 'maybe'"
        parser.parse_args(["--reflection", "maybe"])
    with pytest.raises(ValueError, match="'maybe' is not true or false"):
        load(parser.parse_args([]), environ={"ATTNSERVE_REFLECTION": "maybe"})


def test_reflection_and_the_explorer_can_be_turned_off_and_the_apis_stay(demo_repository, tmp_path):
    server = start_server(demo_repository, tmp_path / "log", "--reflection", "false", "--explorer", "false")
    try:
        assert server.health() == health_pb2.HealthCheckResponse.SERVING
        http = f"http://127.0.0.1:{server.http_port}"
        with urllib.request.urlopen(f"{http}/v1/models", timeout=10) as reply:
            assert reply.status == 200
        for page in ("/", "/explorer/explorer.js"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(http + page, timeout=10)
            assert missing.value.code == 404
        with grpc.insecure_channel(server.target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as err:
                next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert server.stop() == 0


GENERATED = {
    "protos/attnserve/api/v1/vision.proto": "attnserve/api/v1/vision",
    "protos/attnserve/api/inference/v2/grpc_predict_v2.proto": "attnserve/api/inference/v2/grpc_predict_v2",
}


@pytest.mark.parametrize("proto", GENERATED)
def test_generated_grpc_code_is_fresh(proto):
    with tempfile.TemporaryDirectory() as out:
        protoc = [sys.executable, "-m", "grpc_tools.protoc", "-I", "protos"]
        outputs = [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
        subprocess.run([*protoc, *outputs, proto], cwd=ROOT, check=True)
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            generated = GENERATED[proto] + suffix
            fresh = (Path(out) / generated).read_text()
            assert fresh == (ROOT / generated).read_text(), f"{generated} is stale: run make protos"


def test_predict_prints_the_class_and_writes_overlays(server, tmp_path):
    """Five generated scenes in one call; each printed label is the one the server gives that file."""
    paths = []
    for i in range(5):
        scene = classification_scene(7004, i, size=96)
        paths.append(tmp_path / f"scene{i}.jpg")
        paths[-1].write_bytes(jpeg(scene.image, (240, 240)))
    with VisionClient(server.target) as client:
        served = [
            r.labels[0].label
            for r in client.classify([p.read_bytes() for p in paths], "cbam_classifier").results
        ]
    attnserve = str(Path(sys.executable).with_name("attnserve"))
    result = subprocess.run(
        [
            attnserve,
            "predict",
            *map(str, paths),
            "--model",
            "cbam_classifier",
            "--server",
            server.target,
            "--overlay",
            str(tmp_path / "overlays"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    printed = [line.split(": ", 1)[1].split(" ")[0] for line in lines[:5]]
    assert [line.split(": ")[0] for line in lines[:5]] == list(map(str, paths))
    assert printed == served
    overlay = Image.open(tmp_path / "overlays" / "scene0.cam.png")
    assert overlay.mode == "RGB" and overlay.size == (240, 240)
    assert f"wrote {tmp_path / 'overlays' / 'scene4.cam.png'}" in result.stderr
    unknown = [attnserve, "predict", str(paths[0]), "--model", "nope", "--server", server.target]
    missing = subprocess.run(unknown, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "NOT_FOUND: model 'nope' is not served" in missing.stderr


def test_predict_json_is_one_document_with_every_field(server, tmp_path):
    """`attnserve predict --json | jq` works: one document on stdout, defaults and 64-bit ints included."""
    paths = [tmp_path / "a.jpg", tmp_path / "b.png"]
    paths[0].write_bytes(jpeg(classification_scene(7006, 0, size=96).image))
    Image.fromarray(classification_scene(7006, 1, size=96).image).save(paths[1])
    attnserve = str(Path(sys.executable).with_name("attnserve"))
    command = [
        attnserve,
        "predict",
        *map(str, paths),
        "--model",
        "cbam_classifier",
        "--top-k",
        "6",
        "--server",
        server.target,
        "--json",
        "--overlay",
        str(tmp_path / "overlays"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # the whole of stdout
    labels = [label for r in data["results"] for label in r["labels"]]
    assert len(labels) == 12 and all("classId" in label for label in labels)
    assert sorted(label["classId"] for label in data["results"][0]["labels"]) == list(range(6))  # 0 too
    maps = [m for r in data["results"] for m in r["maps"]]
    assert maps and all(type(d) is int for m in maps for d in m["shape"])
    assert type(data["version"]) is int and type(data["timing"]["totalUs"]) is int
    assert f"wrote {tmp_path / 'overlays' / 'b.cam.png'}" in result.stderr
    assert (tmp_path / "overlays" / "b.cam.png").is_file()


def test_predict_into_a_pipe_closed_early_ends_quietly(server, tmp_path):
    """`attnserve predict ... | head`: the reader is gone before the output, and no traceback follows."""
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg(classification_scene(7007, 0, size=96).image))
    attnserve = str(Path(sys.executable).with_name("attnserve"))
    command = [attnserve, "predict", str(path), "--model", "cbam_classifier", "--json"]
    command += ["--server", server.target]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the reply comes back: its first write meets a closed pipe
    _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert process.returncode == 141  # 128 + SIGPIPE, as `yes | head` leaves it


def test_health_goes_not_serving_on_sigterm_while_the_delay_still_serves(demo_repository, tmp_path):
    server = start_server(demo_repository, tmp_path / "log", "--shutdown-delay-s", "3")
    image = jpeg(classification_scene(7005, 0, size=96).image)
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="cbam_classifier")
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        with VisionClient(server.target) as client:  # still answering during the delay
            assert client.classify([image], "cbam_classifier").results[0].labels
    assert server.process.wait(30) == 0
    assert "serving 3.0 s more" in server.log()


def test_every_setting_is_documented():
    doc = (ROOT / "docs" / "service.md").read_text()
    for f in dataclasses.fields(Settings):
        row = f"| `{f.name}` | `--{f.name.replace('_', '-')}` | `ATTNSERVE_{f.name.upper()}` |"
        assert row in doc, f.name


def test_a_model_that_fails_to_load_is_left_out_and_reported(demo_repository, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(demo_repository / "eca_classifier", repository / "eca_classifier")
    broken = repository / "broken" / "1"
    shutil.copytree(demo_repository / "eca_classifier" / "1", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    server = start_server(repository, tmp_path / "log")
    try:
        assert metric(server, "attnserve_model_ready", 'model="broken"') == 0
        assert metric(server, "attnserve_model_ready", 'model="eca_classifier"') == 1
        with VisionClient(server.target) as client:
            assert [m.name for m in client.list_models().models] == ["eca_classifier"]
            assert client.classify(
                [jpeg(classification_scene(7006, 0, size=96).image)], "eca_classifier"
            ).results
        assert "model broken/1 not loaded" in server.log()
    finally:
        assert server.stop() == 0


def readiness_views(server, models: list[str]) -> tuple[dict, dict, dict]:
    """For the server ("") and each model, ready or not: by grpc.health.v1, by the Open Inference
    Protocol (ServerReady, ModelReady) and by the vision API's ListModels (the server: every model in
    it ready)."""

    def healthy(name: str) -> bool:
        try:
            return server.health(name) == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError as exc:  # a name health never heard of: a model that did not load
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return False

    health = {name: healthy(name) for name in ["", *models]}
    v2 = tritonclient.grpc.InferenceServerClient(server.target)  # the protocol's client, not ours
    oip = {"": v2.is_server_ready(), **{n: v2.is_model_ready(n) for n in models}}
    v2.close()
    with grpc.insecure_channel(server.target) as channel:
        listing = vision_pb2_grpc.VisionServiceStub(channel).ListModels(vision_pb2.ListModelsRequest())
    listed = {n: False for n in models} | {m.name: m.ready for m in listing.models}
    return health, oip, {"": health[""], **listed}


def test_health_and_both_apis_agree_on_readiness_from_start_to_exit(demo_repository, tmp_path):
    """Polled from the moment the port answers until SIGTERM's delay ends: health, ServerReady /
    ModelReady and ListModels agree while models load (each ready once warm, the server once all
    are), for a model that fails to load (never ready) and while draining (nothing ready, calls still
    answered). Each reading is health, the APIs, health again: states only move one way per phase,
    so when both health readings agree nothing changed in between and the APIs must say the same."""
    repository = tmp_path / "repository"
    for name in ("cbam_classifier", "eca_classifier", "harnet_detector"):
        shutil.copytree(demo_repository / name, repository / name)
    shutil.copytree(demo_repository / "eca_classifier" / "1", repository / "broken" / "1")
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    models = ["broken", "cbam_classifier", "eca_classifier", "harnet_detector"]
    server = start_server(repository, tmp_path / "log", "--shutdown-delay-s", "2", until_serving=False)
    compared = []

    def settled() -> dict:
        """The next reading whose health did not change while the APIs were asked."""
        while True:
            before, oip, listed = readiness_views(server, models)
            if readiness_views(server, models)[0] == before:
                assert oip == before and listed == before, (before, oip, listed)
                compared.append(before)
                return before

    try:
        while not settled()[""]:
            pass
        assert compared[-1] == {"": True, "broken": False, **{m: True for m in models[1:]}}
        server.process.send_signal(signal.SIGTERM)
        while any(settled().values()):
            pass
        with VisionClient(server.target) as client:  # the delay still answers calls
            image = jpeg(classification_scene(7007, 0, size=96).image)
            assert client.classify([image], "cbam_classifier").results[0].labels
    finally:
        assert server.stop() == 0
    assert len(compared) >= 3
