"""ONNX files made without our exporter import with their gates as maps and serve: one built node by node
with onnx.helper as a Keras model would come out of tf2onnx (NHWC, batch fixed at 1, BGR 0..255 input
normalised inside its expectations, softmax probabilities), one from the TorchScript exporter with a
channels-last input, and a detector whose outputs are already decoded."""

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn

from attnserve.client import VisionClient, map_array
from attnserve.export.import_cli import main as import_main
from attnserve.manifest import MODEL_FILE, Manifest
from attnserve.models.scenes import generate
from bench.harness import start_server

LABELS = ["circle", "square", "triangle", "star", "cross"]


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    return path


def keras_like_onnx(path, pinned_batch: str = "", se_channels_last: bool = False) -> None:
    """input_1: 1×32×32×3 BGR, (x - 127.5) / 127.5 of 0..255 values; a conv, an SE block and a spatial gate
    (mean over channels → 7×7 conv → sigmoid), global pooling, a dense layer and a softmax.

    ``pinned_batch``: "flatten", a Keras Flatten exported with its batch of 1 baked into a Reshape [1, 8];
    "vector", the pooled features reshaped to [8] and unsqueezed back, which loses the batch for good.
    ``se_channels_last``: the SE block runs on an N×H×W×C view between Transposes, as tf2onnx leaves
    Keras' channels-last layers (mean over H and W, two MatMuls, the gate reshaped to N×1×1×C)."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    se_shapes = ((8, 4), (4, 8)) if se_channels_last else ((4, 8, 1, 1), (8, 4, 1, 1))
    inits = [
        weight("conv_w", 8, 3, 3, 3),
        weight("conv_b", 8),
        weight("se1_w", *se_shapes[0]),
        weight("se1_b", 4),
        weight("se2_w", *se_shapes[1]),
        weight("se2_b", 8),
        weight("sp_w", 1, 1, 7, 7),
        weight("sp_b", 1),
        weight("dense_w", 8, 5),
        weight("dense_b", 5),
        numpy_helper.from_array(np.array([-1, 1, 1, 8], np.int64), "gate_shape"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    if pinned_batch:
        shape = [1, 8] if pinned_batch == "flatten" else [8]
        inits.append(numpy_helper.from_array(np.array(shape, np.int64), "flat_shape"))
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2], name="model/permute"),
        helper.make_node(
            "Conv",
            ["nchw", "conv_w", "conv_b"],
            ["c1"],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            name="model/conv1/Conv2D",
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="model/conv1/Relu"),
        *(se_nhwc_nodes() if se_channels_last else se_nchw_nodes()),
        helper.make_node(
            "ReduceMean", ["se_out"], ["sp_mean"], axes=[1], keepdims=1, name="model/spatial/Mean"
        ),
        helper.make_node(
            "Conv", ["sp_mean", "sp_w", "sp_b"], ["sp_conv"], pads=[3, 3, 3, 3], name="model/spatial/Conv"
        ),
        helper.make_node("Sigmoid", ["sp_conv"], ["sp_gate"], name="model/spatial/Sigmoid"),
        helper.make_node("Mul", ["se_out", "sp_gate"], ["sp_out"], name="model/spatial/Mul"),
        helper.make_node("GlobalAveragePool", ["sp_out"], ["pooled"], name="model/pool"),
        *flatten_nodes(pinned_batch),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"], name="model/dense/MatMul"),
        helper.make_node("Softmax", ["logits"], ["predictions"], axis=1, name="model/dense/Softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "keras_like",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [1, 32, 32, 3])],
        [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx-like"
    )
    onnx.save(model, path)


def flatten_nodes(pinned_batch: str) -> list[onnx.NodeProto]:
    if not pinned_batch:
        return [helper.make_node("Flatten", ["pooled"], ["flat"], name="model/flatten")]
    if pinned_batch == "flatten":
        return [helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"], name="model/flatten")]
    return [
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["vector"], name="model/vector"),
        helper.make_node("Unsqueeze", ["vector", "axis0"], ["flat"], name="model/unsqueeze"),
    ]


def se_nchw_nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("GlobalAveragePool", ["r1"], ["se_pool"], name="model/se/GlobalAvgPool"),
        helper.make_node("Conv", ["se_pool", "se1_w", "se1_b"], ["se_fc1"], name="model/se/fc1"),
        helper.make_node("Relu", ["se_fc1"], ["se_relu"], name="model/se/Relu"),
        helper.make_node("Conv", ["se_relu", "se2_w", "se2_b"], ["se_fc2"], name="model/se/fc2"),
        helper.make_node("Sigmoid", ["se_fc2"], ["se_gate"], name="model/se/Sigmoid"),
        helper.make_node("Mul", ["r1", "se_gate"], ["se_out"], name="model/se/Mul"),
    ]


def se_nhwc_nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("Transpose", ["r1"], ["r1_nhwc"], perm=[0, 2, 3, 1], name="model/se/to_nhwc"),
        helper.make_node(
            "ReduceMean", ["r1_nhwc"], ["se_pool"], axes=[1, 2], keepdims=0, name="model/se/GlobalAvgPool"
        ),
        helper.make_node("MatMul", ["se_pool", "se1_w"], ["se_mm1"], name="model/se/dense1/MatMul"),
        helper.make_node("Add", ["se_mm1", "se1_b"], ["se_fc1"], name="model/se/dense1/BiasAdd"),
        helper.make_node("Relu", ["se_fc1"], ["se_relu"], name="model/se/Relu"),
        helper.make_node("MatMul", ["se_relu", "se2_w"], ["se_mm2"], name="model/se/dense2/MatMul"),
        helper.make_node("Add", ["se_mm2", "se2_b"], ["se_fc2"], name="model/se/dense2/BiasAdd"),
        helper.make_node("Sigmoid", ["se_fc2"], ["se_gate"], name="model/se/Sigmoid"),
        helper.make_node("Reshape", ["se_gate", "gate_shape"], ["se_gate4"], name="model/se/Reshape"),
        helper.make_node("Mul", ["r1_nhwc", "se_gate4"], ["se_nhwc"], name="model/se/Mul"),
        helper.make_node("Transpose", ["se_nhwc"], ["se_out"], perm=[0, 3, 1, 2], name="model/se/to_nchw"),
    ]


def keras_preprocess(images: np.ndarray) -> np.ndarray:
    """What the Keras-like model expects, from N×3×H×W RGB in [0, 1]."""
    bgr = images[:, ::-1] * 255.0
    return ((bgr - 127.5) / 127.5).transpose(0, 2, 3, 1).astype(np.float32)


def encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def import_keras(tmp_path: Path, labels: Path, *options: str) -> Path:
    """``attnserve import`` of tmp_path/keras.onnx as the classifier "keras" (bytes in, BGR), with
    ``options``; the repository written."""
    repo = tmp_path / "repo"
    arguments = [str(tmp_path / "keras.onnx"), "--task", "classification", "--labels", str(labels)]
    arguments += ["--name", "keras", "--repository", str(repo), "--input-range", "bytes", "--channels", "bgr"]
    assert import_main([*arguments, *options]) == 0
    return repo


def test_a_keras_like_graph_imports_with_its_gates_and_serves(tmp_path, labels):
    keras_like_onnx(tmp_path / "keras.onnx")
    repo = import_keras(
        tmp_path,
        labels,
        "--image-mean",
        "127.5",
        "127.5",
        "127.5",
        "--image-std",
        "127.5",
        "127.5",
        "127.5",
        "--scores",
        "probabilities",
    )
    manifest = Manifest.read(repo / "keras" / "1" / "manifest.json")
    assert manifest.source["origin"] == "imported" and manifest.exporter == "imported"
    assert manifest.source["preprocessing"]["layout"] == "nhwc"
    assert manifest.input.mean == [0.5] * 3 and manifest.input.std == [0.5] * 3  # (255x - 127.5) / 127.5
    assert manifest.verification["predictions_vs_original"]["bit_identical"] == ["probabilities"]
    maps = {a.name: a for a in manifest.attention}
    assert sorted((a.kind, a.shape) for a in maps.values()) == [
        ("channel", [1, 8]),
        ("spatial", [1, 1, 16, 16]),
    ]
    assert all(a.origin == "discovered" for a in maps.values())

    # the imported graph takes any batch, and equals the original fed by hand-written preprocessing
    scenes = generate("classification", 45, 3, 32)
    images = np.stack([s.image for s in scenes]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    session = ort.InferenceSession(str(repo / "keras" / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = ["probabilities", *maps]
    ours = dict(zip(names, session.run(names, {"images": images}), strict=True))
    original = ort.InferenceSession(str(tmp_path / "keras.onnx"), providers=["CPUExecutionProvider"])
    theirs = np.concatenate([original.run(None, {"input_1": x[None]})[0] for x in keras_preprocess(images)])
    np.testing.assert_allclose(ours["probabilities"], theirs, atol=1e-6)
    assert all(ours[n].min() >= 0 and ours[n].max() <= 1 for n in maps)

    server = start_server(repo, tmp_path / "server.log")
    try:
        with VisionClient(server.target) as client:
            reply = client.classify(
                [encode(s.image) for s in scenes], "keras", select=["spatial"], geometry="original_image"
            )
    finally:
        assert server.stop() == 0
    for result, expected in zip(reply.results, theirs, strict=True):
        assert result.labels[0].label == LABELS[int(expected.argmax())]
        assert map_array(result.maps[0]).shape == (1, 32, 32)


def test_a_gate_applied_in_a_channels_last_view_is_served_in_the_features_frame(tmp_path, labels):
    """tf2onnx's SE: the gate N×1×1×C multiplies an N×H×W×C view; it is the feature's channel map."""
    keras_like_onnx(tmp_path / "keras.onnx", se_channels_last=True)
    repo = import_keras(tmp_path, labels, "--scores", "probabilities")
    manifest = Manifest.read(repo / "keras" / "1" / "manifest.json")
    maps = {a.name: a for a in manifest.attention}
    assert sorted((a.kind, a.shape) for a in maps.values()) == [
        ("channel", [1, 8]),
        ("spatial", [1, 1, 16, 16]),
    ]
    assert manifest.source["attention_left_out"] == []
    # the served channel map is the original graph's own gate, image by image
    images = np.stack([s.image for s in generate("classification", 47, 3, 32)])
    session = ort.InferenceSession(str(repo / "keras" / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    channel = next(n for n, a in maps.items() if a.kind == "channel")
    ours = session.run([channel], {"images": images.transpose(0, 3, 1, 2).astype(np.float32) / 255})[0]
    original = onnx.load(tmp_path / "keras.onnx")
    original.graph.output.append(helper.make_tensor_value_info("se_gate", TensorProto.FLOAT, None))
    probe = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = [probe.run(["se_gate"], {"input_1": x[None, ..., ::-1].astype(np.float32)})[0] for x in images]
    np.testing.assert_allclose(ours, np.concatenate(theirs), atol=1e-6)


def test_a_reshape_that_pins_the_batch_is_made_to_copy_it(tmp_path, labels, capsys):
    """A Keras Flatten exported as Reshape [1, 8]: rewritten to [0, 8], the graph takes any batch and each
    image's probabilities are what the original gives it alone."""
    keras_like_onnx(tmp_path / "flat.onnx", pinned_batch="flatten")
    repo = tmp_path / "repo"
    assert (
        import_main(
            [
                str(tmp_path / "flat.onnx"),
                "--task",
                "classification",
                "--labels",
                str(labels),
                "--name",
                "flat",
                "--repository",
                str(repo),
                "--scores",
                "probabilities",
            ]
        )
        == 0
    )
    assert "1 Reshape(s) that pinned the batch at 1 now copy it" in capsys.readouterr().err
    session = ort.InferenceSession(str(repo / "flat" / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(4).random((5, 3, 32, 32), dtype=np.float32)
    batched = session.run(["probabilities"], {"images": images})[0]
    original = ort.InferenceSession(str(tmp_path / "flat.onnx"), providers=["CPUExecutionProvider"])
    alone = [original.run(None, {"input_1": x[None].transpose(0, 2, 3, 1)})[0] for x in images]
    np.testing.assert_allclose(batched, np.concatenate(alone), atol=1e-6)


class ChannelsLast(nn.Module):
    """A PyTorch model that takes N×H×W×3, as code ported from TensorFlow often does; CBAM-like gates."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.mlp = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
        x = x * torch.sigmoid(self.mlp(x.mean((2, 3))))[:, :, None, None]
        x = x * torch.sigmoid(self.spatial(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)))
        return self.head(x.mean((2, 3)))


def test_a_torchscript_export_with_channels_last_input_imports_and_matches(tmp_path, labels):
    model = ChannelsLast().eval()
    torch.onnx.export(
        model,
        (torch.rand(1, 40, 48, 3),),
        tmp_path / "nhwc.onnx",
        dynamo=False,
        input_names=["x"],
        output_names=["scores"],
        opset_version=17,
    )  # batch fixed at 1
    repo = tmp_path / "repo"
    assert (
        import_main(
            [
                str(tmp_path / "nhwc.onnx"),
                "--task",
                "classification",
                "--labels",
                str(labels),
                "--name",
                "nhwc",
                "--repository",
                str(repo),
            ]
        )
        == 0
    )
    manifest = Manifest.read(repo / "nhwc" / "1" / "manifest.json")
    assert (manifest.input.height, manifest.input.width) == (40, 48)
    assert sorted(a.kind for a in manifest.attention) == ["channel", "spatial"]
    session = ort.InferenceSession(str(repo / "nhwc" / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(3).random((4, 3, 40, 48), dtype=np.float32)
    logits = session.run(["logits"], {"images": images})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(images).permute(0, 2, 3, 1)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)


class DecodedDetector(nn.Module):
    """A detector whose graph already ends in fixed-K boxes, scores and float class ids (an SSD export)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 8, 3, 4, 1)
        self.gate = nn.Conv2d(8, 1, 3, padding=1)
        self.out = nn.Conv2d(8, 4 + 5, 1)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        f = f * torch.sigmoid(self.gate(f))
        raw = self.out(f).flatten(2).transpose(1, 2)  # N×64×9
        scores, classes = torch.sigmoid(raw[..., 4:]).max(-1)
        top, idx = scores.topk(10, dim=1)
        boxes = torch.sigmoid(raw[..., :4]).gather(1, idx[..., None].expand(-1, -1, 4)) * 32
        x1y1 = torch.minimum(boxes[..., :2], boxes[..., 2:])
        x2y2 = torch.maximum(boxes[..., :2], boxes[..., 2:])
        return torch.cat([x1y1, x2y2], -1), top, classes.gather(1, idx).float()


DETECTOR_OUTPUTS = ["det_boxes", "det_scores", "det_classes"]


def test_a_decoded_detector_imports_with_named_outputs_and_serves_boxes(tmp_path, labels):
    torch.onnx.export(
        DecodedDetector().eval(),
        (torch.rand(2, 3, 32, 32),),
        tmp_path / "det.onnx",
        dynamo=False,
        input_names=["image"],
        output_names=DETECTOR_OUTPUTS,
        dynamic_axes={n: {0: "n"} for n in ("image", *DETECTOR_OUTPUTS)},
        opset_version=17,
    )
    repo = tmp_path / "repo"
    assert (
        import_main(
            [
                str(tmp_path / "det.onnx"),
                "--task",
                "detection",
                "--labels",
                str(labels),
                "--name",
                "det",
                "--repository",
                str(repo),
                "--detection-outputs",
                "det_boxes",
                "det_scores",
                "det_classes",
            ]
        )
        == 0
    )
    manifest = Manifest.read(repo / "det" / "1" / "manifest.json")
    assert [a.kind for a in manifest.attention] == ["spatial"]
    server = start_server(repo, tmp_path / "server.log")
    try:
        with VisionClient(server.target) as client:
            reply = client.detect(
                [encode(generate("detection", 46, 1, 64)[0].image)], "det", score_threshold=0.0
            )
    finally:
        assert server.stop() == 0
    detections = reply.results[0].detections
    assert len(detections) == 10 and {d.label for d in detections} <= set(LABELS)
    assert all(0 <= d.box.x1 <= d.box.x2 <= 64 for d in detections)  # letterboxed back onto 64×64


@pytest.mark.parametrize(
    "case,message",
    [
        ("not_onnx", "is not an ONNX model"),
        ("pinned_batch", "runs at batch size 1 only"),
        ("no_labels", "--labels FILE is required"),
    ],
)
def test_files_that_cannot_be_imported_fail_with_the_reason(tmp_path, labels, capsys, case, message):
    path = tmp_path / "model.onnx"
    if case == "not_onnx":
        path.write_bytes(b"PK\x03\x04 a zip, not a protobuf")
    else:
        keras_like_onnx(path, pinned_batch="vector" if case == "pinned_batch" else "")
    given_labels = labels if case != "no_labels" else tmp_path / "none"
    args = [
        str(path),
        "--task",
        "classification",
        "--labels",
        str(given_labels),
        "--name",
        "m",
        "--repository",
        str(tmp_path / "repo"),
        "--scores",
        "probabilities",
    ]
    assert import_main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo" / "m").exists()
