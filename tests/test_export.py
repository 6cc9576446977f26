"""The export stage end to end: real exports into a temporary repository, checked with ONNX Runtime
against PyTorch on fresh images."""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import user_models
from PIL import Image

from attnserve.demo import demo_checkpoint
from attnserve.demo.evaluate import to_tensor
from attnserve.export.cli import main
from attnserve.manifest import MANIFEST_FILE, METADATA_KEY, MODEL_FILE, Manifest
from attnserve.models.scenes import generate
from attnserve.models.zoo import DEMO_MODELS, load_checkpoint

TESTS = Path(__file__).parent


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path / MODEL_FILE), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def demo_repo(demo_repository) -> Path:
    return demo_repository


def test_demo_export_writes_each_model_with_a_manifest(demo_repo):
    for name in DEMO_MODELS:
        version = demo_repo / name / "1"
        assert sorted(p.name for p in version.iterdir()) == [MANIFEST_FILE, MODEL_FILE]  # no .onnx.data
        manifest = Manifest.read(version / MANIFEST_FILE)
        data = (version / MODEL_FILE).read_bytes()
        assert manifest.sha256 == hashlib.sha256(data).hexdigest()
        proto = onnx.load_from_string(data)
        embedded = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
        assert embedded == {**json.loads(manifest.to_json()), "sha256": ""}
        assert manifest.verification["parity_fp32_vs_pytorch"]["passed"]
        assert manifest.attention, "demo models declare their maps"
        outputs = [o.name for o in session(version).get_outputs()]
        assert outputs == manifest.output_names()
        batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")
        assert not any(demo_repo.glob(f"{name}/.*")), "no staging folders left behind"
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(version.stat().st_mode) == 0o777 & ~umask, "readable by a server of another uid"


@pytest.mark.parametrize("name", ["cbam_classifier", "eca_classifier"])
def test_exported_classifier_computes_what_pytorch_computes(demo_repo, name):
    """Round trip on scenes the export never saw: same logits and the same maps, every one."""
    model, config = load_checkpoint(demo_checkpoint(name))
    scenes = generate("classification", 9001, 12, config["input_size"])
    images = to_tensor(np.stack([s.image for s in scenes]))
    with torch.no_grad():
        expected = model(images)
    sess = session(demo_repo / name / "1")
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {"images": images.numpy()}), strict=True))
    assert set(names) == set(expected), "every declared output is a graph output"
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value.numpy(), atol=1e-4, rtol=0, err_msg=key)


def test_exported_detector_finds_the_same_objects(demo_repo):
    model, config = load_checkpoint(demo_checkpoint("harnet_detector"))
    scenes = generate("detection", 9002, 6, config["input_size"])
    images = to_tensor(np.stack([s.image for s in scenes]))
    with torch.no_grad():
        expected = {k: v.numpy() for k, v in model(images).items()}
    sess = session(demo_repo / "harnet_detector" / "1")
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {"images": images.numpy()}), strict=True))
    for i in range(len(scenes)):
        confident = expected["scores"][i] > 0.3
        assert confident.sum() >= 1
        for box, cls, score in zip(
            expected["boxes"][i][confident],
            expected["classes"][i][confident],
            expected["scores"][i][confident],
            strict=True,
        ):  # as a set: a near-tie may swap ranks
            same = (got["classes"][i] == cls) & (np.abs(got["boxes"][i] - box).max(axis=1) < 1e-3)
            assert same.any() and np.abs(got["scores"][i][same] - score).min() < 1e-4
    for key in ("level4_spatial", "cross_level_channel"):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-4, rtol=0)


def test_fp16_keeps_float32_inputs_and_outputs(tmp_path):
    args = [
        "--arch",
        "cbam_classifier",
        "--precision",
        "fp16",
        "--repository",
        str(tmp_path),
        "--name",
        "half",
    ]
    assert main(args) == 0
    version = tmp_path / "half" / "1"
    proto = onnx.load(version / MODEL_FILE)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in proto.graph.output)
    figures = Manifest.read(version / MANIFEST_FILE).verification["fp16_vs_fp32"]
    assert figures["top1_agreement"] >= 0.99


def test_attention_none_exports_predictions_only_and_versions_count_up(tmp_path):
    for _ in range(2):
        assert main(["--arch", "eca_classifier", "--attention", "none", "--repository", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "eca_classifier").iterdir()) == ["1", "2"]
    manifest = Manifest.read(tmp_path / "eca_classifier" / "2" / MANIFEST_FILE)
    assert manifest.attention == [] and manifest.output_names() == ["logits", "probabilities"]


def test_overwrite_replaces_a_version_in_place(tmp_path):
    base = [
        "--arch",
        "eca_classifier",
        "--attention",
        "none",
        "--repository",
        str(tmp_path),
        "--version",
        "3",
    ]
    assert main(base) == 0
    first = (tmp_path / "eca_classifier" / "3" / MANIFEST_FILE).read_text()
    assert main(base) == 2, "an existing version is never replaced silently"
    assert main([*base, "--overwrite", "--resize", "center_crop"]) == 0
    manifest = Manifest.read(tmp_path / "eca_classifier" / "3" / MANIFEST_FILE)
    assert manifest.input.resize == "center_crop" and first != manifest.to_json()
    assert [p.name for p in (tmp_path / "eca_classifier").iterdir()] == ["3"]


def test_console_script_imports_the_factory_from_the_current_directory(tmp_path):
    """``attnserve export --factory`` from the folder that holds the user's module, as a user runs it."""
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"kind {i}" for i in range(5)) + "\n")
    repo = tmp_path / "repo"
    result = subprocess.run(
        [
            Path(sys.executable).with_name("attnserve"),
            "export",
            "--factory",
            "user_models:build",
            "--factory-kwargs",
            '{"attention": "cbam"}',
            "--task",
            "classification",
            "--input-size",
            "32",
            "32",
            "--labels",
            labels,
            "--name",
            "user_cbam",
            "--repository",
            repo,
        ],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    manifest = Manifest.read(repo / "user_cbam" / "1" / MANIFEST_FILE)
    assert manifest.labels == [f"kind {i}" for i in range(5)]
    assert {a.name for a in manifest.attention} == {
        "layer1.attention.ChannelGate.channel",
        "layer1.attention.SpatialGate.spatial",
        "layer2.attention.ChannelGate.channel",
        "layer2.attention.SpatialGate.spatial",
    }
    assert "user_cbam/1" in result.stdout


def test_falls_back_to_torchscript_and_records_why(tmp_path):
    """A Python branch on a tensor's value defeats torch.export; TorchScript traces it."""
    args = ["--factory", "user_models:build_data_dependent", "--task", "classification"]
    assert main([*args, "--input-size", "32", "32", "--name", "branchy", "--repository", str(tmp_path)]) == 0
    manifest = Manifest.read(tmp_path / "branchy" / "1" / MANIFEST_FILE)
    assert manifest.exporter == "torchscript"
    assert "torch.export" in manifest.source["exporter_failures"][0]
    assert {a.name for a in manifest.attention} == {
        "net.layer1.attention.channel",
        "net.layer2.attention.channel",
    }


def test_user_normalisation_is_applied_inside_the_graph(tmp_path):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    args = ["--factory", "user_models:build", "--task", "classification", "--input-size", "32", "32"]
    norm = ["--image-mean", *map(str, mean), "--image-std", *map(str, std)]
    assert main([*args, *norm, "--name", "normed", "--repository", str(tmp_path), "--attention", "none"]) == 0
    manifest = Manifest.read(tmp_path / "normed" / "1" / MANIFEST_FILE)
    assert manifest.input.mean == mean and manifest.input.std == std
    images = torch.rand(2, 3, 32, 32)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = user_models.build("se")(normalised).numpy()
    (logits,) = session(tmp_path / "normed" / "1").run(["logits"], {"images": images.numpy()})
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_int8_calibrates_on_a_folder_of_images_and_enforces_agreement(tmp_path, capsys):
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, scene in enumerate(generate("classification", 555, 20, 40)):
        Image.fromarray(scene.image).save(folder / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    (folder / "notes.txt").write_text("not an image")
    args = ["--factory", "user_models:build", "--task", "classification", "--input-size", "32", "32"]
    int8 = [*args, "--precision", "int8", "--calibration", str(folder), "--repository", str(tmp_path / "r")]
    assert main([*int8, "--name", "q", "--min-agreement", "0", "--no-progress"]) == 0
    figures = Manifest.read(tmp_path / "r" / "q" / "1" / MANIFEST_FILE).verification["int8_vs_fp32"]
    assert figures["calibration_images"] == 16
    assert figures["measured_on"] == "4 --calibration images held out from calibration"
    assert main([*int8, "--name", "strict", "--min-agreement", "1.01", "--no-progress"]) == 2
    assert "agrees with fp32 on only" in capsys.readouterr().err
    assert not (tmp_path / "r" / "strict").exists()
