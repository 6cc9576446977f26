"""Per-model settings: NAME/config.toml beside a model's versions, over the server-wide settings, read
and validated when the model loads; checked on a real server on loopback."""

import asyncio
import dataclasses
import io
import shutil
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc
from PIL import Image

from attnserve.client import AsyncVisionClient, VisionClient
from attnserve.manifest import CLASSIFICATION, DETECTION, MODEL_CONFIG_FILE
from attnserve.models.scenes import classification_scene, detection_scene
from attnserve.service.settings import ModelSettings, Settings
from bench.harness import start_server


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def write_config(model_dir, text: str):
    (model_dir / MODEL_CONFIG_FILE).write_text(text)
    return model_dir


def test_no_file_means_the_server_wide_settings(tmp_path):
    server = Settings(
        max_batch_size=4, max_queue_delay_ms=7.0, default_top_k=3, default_detection_threshold=0.4
    )
    classifier = ModelSettings.load(server, tmp_path, CLASSIFICATION)
    assert (classifier.max_batch_size, classifier.max_queue_delay_ms, classifier.default_top_k) == (4, 7.0, 3)
    assert classifier.default_score_threshold == 0.0  # a classification keeps every label by default
    assert ModelSettings.load(server, tmp_path, DETECTION).default_score_threshold == 0.4


def test_the_file_overrides_only_what_it_sets(tmp_path):
    write_config(tmp_path, "max_batch_size = 16\ndefault_score_threshold = 0.25\n")
    settings = ModelSettings.load(Settings(max_queue_delay_ms=3.0), tmp_path, DETECTION)
    assert (settings.max_batch_size, settings.default_score_threshold, settings.max_queue_delay_ms) == (
        16,
        0.25,
        3.0,
    )
    write_config(tmp_path, "max_queue_delay_ms = 1\n")  # a TOML integer where a float is asked for
    assert ModelSettings.load(Settings(), tmp_path, DETECTION).max_queue_delay_ms == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch = 4\n", "unknown settings max_batch (known: max_batch_size,"),
        ("max_batch_size = 0\n", "max_batch_size must be at least 1, not 0"),
        ("max_batch_size = 2.5\n", "max_batch_size must be a number, not 2.5"),  # an int, not a float
        ('default_top_k = "5"\n', "default_top_k must be a number, not '5'"),
        ("default_top_k = true\n", "default_top_k must be a number, not True"),
        ("default_score_threshold = 1.5\n", "default_score_threshold must be in [0, 1], not 1.5"),
        ("default_score_threshold = nan\n", "default_score_threshold must be in [0, 1], not nan"),
        ("max_queue_delay_ms = -1.0\n", "max_queue_delay_ms must be 0 or more"),
        ("default_max_detections = 0\n", "default_max_detections must be at least 1"),
        ("max_batch_size = \n", "Invalid value"),  # not TOML
    ],
)
def test_an_invalid_file_names_itself_and_the_problem(tmp_path, text, message):
    write_config(tmp_path, text)
    with pytest.raises(ValueError) as err:
        ModelSettings.load(Settings(), tmp_path, CLASSIFICATION)
    assert str(err.value).startswith(f"{tmp_path / MODEL_CONFIG_FILE}: ") and message in str(err.value)


@pytest.fixture(scope="module")
def configured(demo_repository, tmp_path_factory):
    """The demo classifiers and detector, each with a config.toml (eca_classifier's invalid), served with
    the server-wide defaults the test server uses elsewhere."""
    repo = tmp_path_factory.mktemp("configured")
    for name in ("cbam_classifier", "eca_classifier", "harnet_detector"):
        shutil.copytree(demo_repository / name, repo / name)
    write_config(repo / "cbam_classifier", "default_top_k = 2\nmax_batch_size = 1\n")
    write_config(repo / "harnet_detector", "default_score_threshold = 0.0\ndefault_max_detections = 1\n")
    write_config(repo / "eca_classifier", "max_batch = 4\n")
    server = start_server(
        repo, repo.parent / "server.log", "--max-batch-size", "8", "--max-queue-delay-ms", "20"
    )
    yield server
    assert server.stop() == 0, server.log()


def test_a_served_model_uses_its_defaults_and_a_request_still_overrides_them(configured):
    scene = png(classification_scene(7001, 0, size=96).image)
    with VisionClient(configured.target) as client:
        assert len(client.classify([scene], "cbam_classifier").results[0].labels) == 2
        assert len(client.classify([scene], "cbam_classifier", top_k=4).results[0].labels) == 4
        image = png(detection_scene(7002, 0, size=128).image)
        # threshold 0: every box the graph returns (its NMS keeps up to 100), cut to the model's 1
        assert len(client.detect([image], "harnet_detector").results[0].detections) == 1
        assert len(client.detect([image], "harnet_detector", max_detections=3).results[0].detections) == 3


def test_a_models_batch_size_bounds_its_batches(configured):
    """cbam_classifier's max_batch_size = 1 under the server's 8: 16 concurrent requests never share a
    batch (with 8 they would: the test server's 20 ms queue delay gathers them)."""
    scene = png(classification_scene(7003, 0, size=96).image)

    async def burst():
        async with AsyncVisionClient(configured.target) as client:
            await asyncio.gather(*(client.classify([scene], "cbam_classifier") for _ in range(16)))

    asyncio.run(burst())
    metrics = urllib.request.urlopen(configured.metrics_url, timeout=5).read().decode()
    buckets = {}
    for line in metrics.splitlines():
        if line.startswith("attnserve_batch_size_bucket{") and 'model="cbam_classifier"' in line:
            buckets[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    assert buckets["+Inf"] >= 16 and buckets["1.0"] == buckets["+Inf"]


def test_a_model_with_an_invalid_file_is_not_served_and_says_why(configured):
    with VisionClient(configured.target) as client:
        assert {m.name for m in client.list_models().models} == {"cbam_classifier", "harnet_detector"}
    triton = tritonclient.grpc.InferenceServerClient(configured.target)
    (entry,) = [m for m in triton.get_model_repository_index().models if m.name == "eca_classifier"]
    assert entry.state == "UNAVAILABLE" and "config.toml: unknown settings max_batch" in entry.reason
    assert (
        "eca_classifier/1 not loaded" in configured.log() and "unknown settings max_batch" in configured.log()
    )


def test_every_model_setting_is_documented():
    doc = (Path(__file__).parents[1] / "docs" / "service.md").read_text()
    for f in dataclasses.fields(ModelSettings):
        assert f"| `{f.name}` |" in doc and f"\n{f.name} = " in doc.replace("    ", ""), f.name
