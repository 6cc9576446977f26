"""Attention gates found in graphs of models we did not write (tests/user_models.py), checked against
values computed independently: forward hooks on the submodules and each paper's formula."""

from collections import defaultdict

import numpy as np
import onnxruntime as ort
import pytest
import torch
import user_models

from attnserve.client import VisionClient, map_array
from attnserve.demo import demo_checkpoint
from attnserve.demo.evaluate import to_tensor
from attnserve.export.discovery import classify
from attnserve.export.pipeline import ExportRequest, export_model
from attnserve.manifest import MODEL_FILE, Manifest
from attnserve.models.scenes import generate
from attnserve.models.zoo import load_checkpoint
from bench.harness import start_server

STYLES = [
    "se",
    "cbam",
    "eca",
    "bam",
    "coord",
    "coord_joint",
    "hard_se",
    "softmax_spatial",
    "inplace_se",
    "inplace_spatial",
    "hard_relu6",
    "hard_clamp",
    "hard_function",
    "one_plus",
    "residual_gate",
    "addcmul",
    "simam",
    "two_scale",
    "global_context",
    "triplet",
]


def reference_maps(style: str, model, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Each map from its paper's formula, using the submodules' outputs caught by forward hooks."""
    caught, inputs = defaultdict(list), defaultdict(list)

    def catch(name):  # copies: in-place code changes a module's output after the hook has run
        def hook(_module, args, out):
            caught[name].append(out.clone() if isinstance(out, torch.Tensor) else out)
            inputs[name].append(args[0].clone())

        return hook

    hooks = [m.register_forward_hook(catch(name)) for name, m in model.named_modules() if name]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    maps = {}
    for layer in ("layer1", "layer2"):
        a = f"{layer}.attention"
        if style == "se":  # the Sequential ends in its nn.Sigmoid
            maps[f"{a}.channel"] = caught[f"{a}.fc"][0].flatten(1)
        elif style == "eca":
            maps[f"{a}.channel"] = caught[f"{a}.sigmoid"][0].flatten(1)
        elif style == "cbam":  # Mc = σ(MLP(avg) + MLP(max)); Ms = σ(BN(conv([max; mean])))
            avg, mx = caught[f"{a}.ChannelGate.mlp"]
            maps[f"{a}.ChannelGate.channel"] = torch.sigmoid(avg + mx)
            maps[f"{a}.SpatialGate.spatial"] = torch.sigmoid(caught[f"{a}.SpatialGate.spatial"][0])
        elif style == "bam":  # the gate is σ(Mc · Ms); its channel mean is the spatial map
            full = torch.sigmoid(caught[f"{a}.channel_att"][0] * caught[f"{a}.spatial_att"][0])
            maps[f"{a}.full"], maps[f"{a}.spatial"] = full, full.mean(1, keepdim=True)
        elif style == "hard_se":
            maps[f"{a}.channel"] = caught[f"{a}.fc"][0]
        elif style == "softmax_spatial":  # the gate is the softmax; the rescaling is a constant factor
            scores = caught[f"{a}.score"][0]
            maps[f"{a}.spatial"] = torch.softmax(scores.flatten(1), dim=1).view_as(scores)
        elif style == "inplace_se":
            maps[f"{a}.channel"] = torch.sigmoid(caught[f"{a}.fc2"][0]).flatten(1)
        elif style in ("hard_relu6", "hard_clamp", "hard_function"):  # all three: relu6(x + 3) / 6
            maps[f"{a}.channel"] = torch.nn.functional.hardsigmoid(caught[f"{a}.fc"][0]).flatten(1)
        elif style in ("inplace_spatial", "one_plus", "residual_gate", "addcmul"):
            maps[f"{a}.spatial"] = torch.sigmoid(caught[f"{a}.conv"][0])
        elif style == "simam":  # σ(energy) of the module's input, from the paper
            x = inputs[a][0]
            d = (x - x.mean((2, 3), keepdim=True)) ** 2
            full = torch.sigmoid(
                d / (4 * (d.sum((2, 3), keepdim=True) / (x.shape[2] * x.shape[3] - 1) + 1e-4)) + 0.5
            )
            maps[f"{a}.full"], maps[f"{a}.spatial"] = full, full.mean(1, keepdim=True)
        elif style == "two_scale":  # the full-resolution gate, then the half-resolution one
            maps[f"{a}.spatial"] = torch.sigmoid(caught[f"{a}.convs.0"][0])
            maps[f"{a}.spatial_2"] = torch.sigmoid(caught[f"{a}.convs.1"][0])
        elif style == "global_context":  # the softmax over positions that pools the feature
            scores = caught[f"{a}.conv_mask"][0]
            maps[f"{a}.spatial"] = torch.softmax(scores.flatten(1), dim=1).view_as(scores)
        elif style == "triplet":  # each branch's σ(conv(Z-pool)), its permuted frame undone
            maps[f"{a}.hw.spatial"] = torch.sigmoid(caught[f"{a}.hw.conv"][0])
            maps[f"{a}.cw.axis_w"] = torch.sigmoid(caught[f"{a}.cw.conv"][0]).permute(0, 2, 1, 3)
            maps[f"{a}.hc.axis_h"] = torch.sigmoid(caught[f"{a}.hc.conv"][0]).permute(0, 3, 2, 1)
        elif style in ("coord", "coord_joint"):
            a_h, a_w = torch.sigmoid(caught[f"{a}.conv_h"][0]), torch.sigmoid(caught[f"{a}.conv_w"][0])
            maps[f"{a}.axis_h"], maps[f"{a}.axis_w"] = a_h, a_w
            maps[f"{a}.spatial"] = (a_h * a_w).mean(1, keepdim=True)
    return {k: v.numpy() for k, v in maps.items()}


def export(request: ExportRequest) -> Manifest:
    return export_model(request, log=lambda line: None)[1]


def export_user_model(repo, style: str, exporter: str = "auto") -> Manifest:
    request = ExportRequest(
        repo,
        name=style,
        factory="user_models:build",
        factory_kwargs=f'{{"attention": "{style}"}}',
        task="classification",
        input_size=(32, 32),
        exporter=exporter,
    )
    return export(request)


def run(repo, name: str, images: torch.Tensor) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(repo / name / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"images": images.numpy()}), strict=True))


def scenes(count: int, size: int, seed: int = 31) -> torch.Tensor:
    return to_tensor(np.stack([s.image for s in generate("classification", seed, count, size)]))


@pytest.mark.parametrize("style", STYLES)
def test_gates_are_found_named_and_equal_to_the_papers_formula(tmp_path, style):
    manifest = export_user_model(tmp_path, style)
    model = user_models.build(style)
    images = scenes(6, 32)
    expected = reference_maps(style, model, images)
    assert {a.name for a in manifest.attention} == set(expected), "exactly the gates; SiLU is no gate"
    got = run(tmp_path, style, images)
    for a in manifest.attention:
        assert a.origin == "discovered" and a.name.startswith(a.source)
        assert list(got[a.name].shape[1:]) == a.shape[1:]
        np.testing.assert_allclose(
            got[a.name], expected[a.name].reshape(got[a.name].shape), atol=1e-5, rtol=0
        )
    with torch.no_grad():
        np.testing.assert_allclose(got["logits"], model(images).numpy(), atol=1e-4, rtol=0)


def test_triplet_maps_are_served_in_the_features_frame(tmp_path):
    """Triplet attention's (C, W) and (H, C) gates, computed on permuted views, come out as the
    feature's N×C×1×W and N×C×H×1 axis maps, each on its feature's stride."""
    manifest = export_user_model(tmp_path, "triplet")
    maps = {a.name: a for a in manifest.attention}
    assert (maps["layer1.attention.cw.axis_w"].shape, maps["layer1.attention.cw.axis_w"].grid) == (
        [1, 8, 1, 16],
        [1, 16],
    )
    assert (maps["layer2.attention.hc.axis_h"].shape, maps["layer2.attention.hc.axis_h"].grid) == (
        [1, 16, 8, 1],
        [8, 1],
    )
    assert {a.stride for a in manifest.attention if a.name.startswith("layer2")} == {4.0}
    assert manifest.source["attention_left_out"] == []


def test_triplet_axis_maps_are_served_as_bands_across_the_image(tmp_path):
    """Served, an axis map is every channel in float16 on the model grid, and its channel mean on the
    original image: constant along the axis the branch pooled (a column band for channel×width)."""
    export_user_model(tmp_path, "triplet")
    images = [generate("classification", 33, 2, 40)[i].image for i in range(2)]
    server = start_server(tmp_path, tmp_path / "server.log")
    try:
        with VisionClient(server.target) as client:
            grid = client.classify(images, "triplet", select=["axis_w", "axis_h"])
            original = client.classify(
                images, "triplet", select=["axis_w", "axis_h"], geometry="original_image"
            )
    finally:
        assert server.stop() == 0
    session = ort.InferenceSession(
        str(tmp_path / "triplet" / "1" / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    fitted = torch.nn.functional.interpolate(  # the server's resize of a 40-px image to the model's 32
        to_tensor(np.stack(images)), size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    name = "layer1.attention.cw.axis_w"
    want = session.run([name], {"images": fitted.numpy()})[0]
    for i, (on_grid, on_image) in enumerate(zip(grid.results, original.results, strict=True)):
        got = {m.name: map_array(m) for m in on_grid.maps}
        assert sorted(got) == sorted(
            f"layer{k}.attention.{b}" for k in (1, 2) for b in ("cw.axis_w", "hc.axis_h")
        )
        assert got[name].shape == (8, 1, 16)
        # float16 and Pillow's resize against torch's differ by about 0.002 here; the map spans about 0.9
        np.testing.assert_allclose(got[name], want[i], atol=0.02)
        bands = {m.name: map_array(m)[0] for m in on_image.maps}
        assert bands[name].shape == (40, 40)
        assert np.ptp(bands[name], axis=0).max() < 1e-3 and np.ptp(bands[name], axis=1).max() > 1e-3
        rows = bands["layer2.attention.hc.axis_h"]
        assert np.ptp(rows, axis=1).max() < 1e-3 and np.ptp(rows, axis=0).max() > 1e-3


def test_gates_with_no_image_layout_are_left_out_with_the_reason(tmp_path):
    """A gate on the pooled embedding is no map over the image: the export goes on without it, the
    block's SE maps are served, and the reason is logged and stored in the manifest."""
    lines = []
    request = ExportRequest(
        tmp_path,
        name="gated",
        factory="user_models:build",
        factory_kwargs='{"attention": "se", "gated_head": true}',
        task="classification",
        input_size=(32, 32),
    )
    manifest = export_model(request, log=lines.append)[1]
    assert sorted(a.name for a in manifest.attention) == [f"layer{i}.attention.channel" for i in (1, 2)]
    left_out = [line for line in lines if "gate left out" in line]
    assert len(left_out) == 1 and "on feature (2, 16) has no known layout" in left_out[0], left_out
    # the reason stays with the model, for whoever serves it later
    assert manifest.source["attention_left_out"] == ["gate: " + left_out[0].split("gate left out: ", 1)[1]]


def test_a_non_local_block_is_found_as_self_attention_over_positions(tmp_path):
    """Its softmax over position pairs is a self-attention of H·W tokens without leading tokens: the map
    is the attention each position receives, the mean over queries, on the feature's grid."""
    manifest = export_user_model(tmp_path, "non_local")
    maps = {a.name: a for a in manifest.attention}
    assert maps["layer1.attention.self_attention"].grid == [16, 16]
    assert maps["layer2.attention.self_attention"].grid == [8, 8]
    model, images = user_models.build("non_local"), scenes(3, 32)
    caught = {}

    def catch(layer):
        return lambda _module, args, _out: caught.__setitem__(layer, args[0])

    layers = ("layer1", "layer2")
    hooks = [getattr(model, layer).attention.register_forward_hook(catch(layer)) for layer in layers]
    with torch.no_grad():
        model(images)
        got = run(tmp_path, "non_local", images)
        for layer, block in ((name, getattr(model, name).attention) for name in layers):
            x = caught[layer]
            theta, phi = block.theta(x).flatten(2).transpose(1, 2), block.phi(x).flatten(2)
            received = torch.softmax(theta @ phi, dim=-1).mean(dim=1)  # N×(H·W)
            expected = received.reshape(len(x), 1, *x.shape[2:]).numpy()
            np.testing.assert_allclose(got[f"{layer}.attention.self_attention"], expected, atol=1e-5)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("style", ["se", "eca", "bam"])
def test_torchscript_exporter_finds_the_same_gates(tmp_path, style):
    """The two exporters name scopes differently; the maps must come out the same."""
    manifest = export_user_model(tmp_path, style, exporter="torchscript")
    assert manifest.exporter == "torchscript"
    expected = reference_maps(style, user_models.build(style), scenes(2, 32))
    assert {a.name for a in manifest.attention} == set(expected)


def test_discovered_maps_equal_the_maps_our_model_declares(tmp_path):
    """Our CBAM classifier held as a plain logits model: discovery must recover its declared maps."""
    request = ExportRequest(
        tmp_path,
        name="plain",
        factory="user_models:build_plain_cbam_classifier",
        task="classification",
        input_size=(96, 96),
        labels=None,
    )
    manifest = export(request)
    images = scenes(4, 96, seed=77)
    got = run(tmp_path, "plain", images)
    model, _ = load_checkpoint(demo_checkpoint("cbam_classifier"))
    with torch.no_grad():
        declared = model(images)
    for block in range(4):
        scope = f"model.backbone.blocks.{block}.attn"
        np.testing.assert_allclose(
            got[f"{scope}.channel"], declared[f"stage{block + 1}_block0_channel"], atol=1e-5
        )
        np.testing.assert_allclose(
            got[f"{scope}.spatial.spatial"], declared[f"stage{block + 1}_block0_spatial"], atol=1e-5
        )
    assert len(manifest.attention) == 8


def test_user_detector_exports_with_its_gate_and_not_its_peak_mask(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    request = ExportRequest(
        tmp_path,
        name="det",
        factory="user_models:build_detector",
        task="detection",
        input_size=(32, 48),
        labels=labels,
    )
    manifest = export(request)
    assert manifest.input.resize == "letterbox" and manifest.labels == ["a", "b", "c"]
    assert [(a.name, a.kind) for a in manifest.attention] == [("se.channel", "channel")]
    assert manifest.verification["parity_fp32_vs_pytorch"]["detections"]["unmatched"] == 0
    got = run(tmp_path, "det", torch.rand(2, 3, 32, 48))
    assert got["boxes"].shape == (2, 10, 4) and got["classes"].dtype == np.int64


def test_classify_reads_which_axes_a_gate_spans():
    assert classify((2, 8, 16, 1), (2, 8, 16, 16)) == "axis_h"
    assert classify((2, 8, 1, 16), (2, 8, 16, 16)) == "axis_w"
    assert classify((2, 64), (2, 64, 8, 8)) == "channel"  # C == H·W: flat gates are channel gates
    assert classify((2, 1, 64), (2, 64, 8, 8)) == "channel"  # ECA's N×1×C
    assert classify((2, 1, 8, 8), (2, 64, 8, 8)) == "spatial"
    assert classify((2, 49), (2, 16, 7, 7)) == "spatial"  # a softmax over positions
    assert classify((2, 64, 8, 8), (2, 64, 8, 8)) == "full"
    assert classify((2, 3, 5), (2, 64, 8, 8)) == ""
    assert classify((2, 64), (2, 64)) == ""  # no feature map
