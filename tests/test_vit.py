"""Self-attention: the module against PyTorch's own attention, rollout against the paper's full matrix
product, the ViT at other input sizes, and its maps exported into the graph and served."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from attnserve.client import VisionClient, map_array
from attnserve.demo import metrics
from attnserve.export.cli import main as export_main
from attnserve.manifest import MANIFEST_FILE, MODEL_FILE, Manifest
from attnserve.models.attention import MultiHeadSelfAttention
from attnserve.models.scenes import CLASS_NAMES, classification_scene
from attnserve.models.vit import VisionTransformer, rollout
from attnserve.models.zoo import ARCH_PRESETS, build_model
from bench.harness import start_server


def test_self_attention_is_scaled_dot_product_attention_with_its_probabilities():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(48, heads=4).eval()
    x = torch.randn(3, 10, 48)
    y, maps = attn(x)
    probabilities = maps["probabilities"]
    assert probabilities.shape == (3, 4, 10, 10)
    assert torch.allclose(probabilities.sum(-1), torch.ones(3, 4, 10), atol=1e-6)
    # PyTorch's fused attention (which never exposes the probabilities) computes the same features
    q, k, v = attn.qkv(x).reshape(3, 10, 3, 4, 12).permute(2, 0, 3, 1, 4)
    fused = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 10, 48)
    assert torch.allclose(y, attn.proj(fused), atol=1e-5)
    with pytest.raises(ValueError, match="do not split into 5 heads"):
        MultiHeadSelfAttention(48, heads=5)


def reference_rollout(layers: list[np.ndarray], leading: int) -> np.ndarray:
    """Abnar & Zuidema as written: Â = ½A + ½I, rows renormalised, R = Â_L ⋯ Â_1 as full matrices; the
    first token's row over the tokens after the ``leading`` ones (without any, the mean row)."""
    result = []
    for i in range(layers[0].shape[0]):
        r = np.eye(layers[0].shape[-1])
        for a in layers:  # first block first: R ← Â_l R
            mixed = 0.5 * a[i] + 0.5 * np.eye(a.shape[-1])
            r = (mixed / mixed.sum(axis=1, keepdims=True)) @ r
        result.append(r[0, leading:] if leading else r.mean(axis=0))
    return np.stack(result)


@pytest.mark.parametrize("class_token", [True, False])
def test_rollout_is_the_papers_product_of_every_block(class_token):
    rng = np.random.default_rng(1)
    tokens = 17 if class_token else 16
    # random row-stochastic attention for 3 images and 4 blocks (batch > 1 catches per-image mistakes)
    layers = [rng.random((3, tokens, tokens)) ** 4 for _ in range(4)]
    layers = [a / a.sum(axis=-1, keepdims=True) for a in layers]
    got = rollout([torch.from_numpy(a) for a in layers], first=1 if class_token else 0).numpy()
    np.testing.assert_allclose(got, reference_rollout(layers, int(class_token)), rtol=1e-10)


def test_vit_maps_follow_the_patch_grid_of_any_input_size():
    model = build_model(ARCH_PRESETS["vit_classifier"], CLASS_NAMES).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 128))
    assert out["rollout"].shape == (2, 1, 8, 16) and out["layer3_attention"].shape == (2, 1, 8, 16)
    assert torch.allclose(out["probabilities"].sum(1), torch.ones(2))
    # each block's class-token row, patches only, sums to at most 1 (the rest went to the class token)
    assert bool((out["layer0_attention"].sum(dim=(1, 2, 3)) <= 1 + 1e-6).all())
    with pytest.raises(ValueError, match="not a multiple of the 8-pixel patch"):
        model(torch.rand(1, 3, 60, 64))
    hybrid = VisionTransformer(CLASS_NAMES, stem="conv", class_token=False, depth=2).eval()
    with torch.no_grad():
        assert hybrid(torch.rand(1, 3, 96, 96))["rollout"].shape == (1, 1, 12, 12)


@pytest.fixture(scope="module")
def vit_repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("vit")
    assert export_main(["--arch", "vit_classifier", "--repository", str(repo), "--no-progress"]) == 0
    return repo


def test_vit_exports_its_rollout_and_every_block_map_verified_against_pytorch(vit_repository):
    version = vit_repository / "vit_classifier" / "1"
    manifest = Manifest.read(version / MANIFEST_FILE)
    kinds = {a.name: (a.kind, a.grid, a.stride, a.origin) for a in manifest.attention}
    assert kinds["rollout"] == ("rollout", [12, 12], 8, "declared")
    assert [n for n, k in kinds.items() if k[0] == "self_attention"] == [
        f"layer{i}_attention" for i in range(4)
    ]
    heads = {a.name: a.shape for a in manifest.attention if a.kind == "self_attention_heads"}
    assert heads == {f"layer{i}_heads": [1, 4, 12, 12] for i in range(4)}
    parity = manifest.verification["parity_fp32_vs_pytorch"]
    assert parity["passed"] and parity["max_abs_diff"]["rollout"] <= 1e-4
    # the graph writes the softmax out: no fused Attention op, whose probabilities would be lost
    assert {"Softmax", "MatMul"} <= {n.op_type for n in onnx.load(version / MODEL_FILE).graph.node}
    assert "Attention" not in {n.op_type for n in onnx.load(version / MODEL_FILE).graph.node}
    session = ort.InferenceSession(str(version / MODEL_FILE), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((2, 3, 96, 96), dtype=np.float32)
    graph_rollout = session.run(["rollout"], {"images": x})[0]
    assert graph_rollout.shape == (2, 1, 12, 12)


def test_served_vit_returns_its_rollout_in_every_encoding(vit_repository, tmp_path):
    scene = classification_scene(7010, 0, size=96)
    buffer = io.BytesIO()
    Image.fromarray(scene.image).resize((200, 150)).save(buffer, format="PNG")
    server = start_server(vit_repository, tmp_path / "server.log")
    try:
        with VisionClient(server.target) as client:
            grid = client.classify(
                [buffer.getvalue()], "vit_classifier", select=["rollout", "self_attention"]
            )
            overlay = client.classify(
                [buffer.getvalue()],
                "vit_classifier",
                select=["rollout"],
                encoding="png_overlay",
                geometry="original_image",
            )
            heads = client.classify([buffer.getvalue()], "vit_classifier", select=["layer2_heads"])
            heads_on_image = client.classify(
                [buffer.getvalue()], "vit_classifier", select=["layer2_heads"], geometry="original_image"
            )
            heads_overlay = client.classify(
                [buffer.getvalue()], "vit_classifier", select=["layer2_heads"], encoding="png_overlay"
            )
    finally:
        assert server.stop() == 0
    maps = {m.name: m for m in grid.results[0].maps}
    assert sorted(maps) == [
        "layer0_attention",
        "layer1_attention",
        "layer2_attention",
        "layer3_attention",
        "rollout",
    ]
    assert map_array(maps["rollout"]).shape == (1, 12, 12) and maps["rollout"].kind == "rollout"
    picture = map_array(overlay.results[0].maps[0])
    assert picture.shape == (150, 200, 3)
    # per head: every head's plane as float16, in either geometry; their mean is the block's map
    per_head = map_array(heads.results[0].maps[0])
    assert heads.results[0].maps[0].kind == "self_attention_heads" and per_head.shape == (4, 12, 12)
    np.testing.assert_allclose(per_head.mean(axis=0), map_array(maps["layer2_attention"])[0], atol=2e-3)
    assert map_array(heads_on_image.results[0].maps[0]).shape == (4, 150, 200)
    assert map_array(heads_overlay.results[0].maps[0]).shape == (96, 96, 3)  # PNG: the heads' mean


def test_served_demo_vit_rollout_points_at_the_object(server):
    """The shipped ViT's rollout, served in original-image geometry for photos at twice the model's size,
    peaks on the object: docs/models.md measures 0.976 on 1000 held-out scenes in PyTorch, against a
    centre-point baseline of 0.443; at 60 scenes even a pointing game of 0.9 has a standard error near
    0.04, so 0.75 sits well below what the model does and well above the baseline."""
    hits, centre = [], []
    with VisionClient(server.target) as client:
        for i in range(60):
            scene = classification_scene(7020, i, size=192)
            buffer = io.BytesIO()
            Image.fromarray(scene.image).save(buffer, format="JPEG", quality=90)
            reply = client.classify(
                [buffer.getvalue()], "vit_classifier", select=["rollout"], geometry="original_image"
            )
            rollout_map = map_array(reply.results[0].maps[0])[0]
            assert rollout_map.shape == (192, 192)
            tolerance = metrics.pointing_tolerance(192)
            hits.append(metrics.pointing_hit(metrics.map_peak(rollout_map), scene.boxes, tolerance))
            centre.append(metrics.pointing_hit((96, 96), scene.boxes, tolerance))
    assert np.mean(hits) >= 0.75 and np.mean(hits) > np.mean(centre) + 0.1, (np.mean(hits), np.mean(centre))


def test_predict_writes_the_vit_rollout_and_every_block_map(server, tmp_path):
    path = tmp_path / "scene.jpg"
    Image.fromarray(classification_scene(7030, 0, size=160).image).save(path, quality=90)
    attnserve = str(Path(sys.executable).with_name("attnserve"))
    result = subprocess.run(
        [
            attnserve,
            "predict",
            str(path),
            "--model",
            "vit_classifier",
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
    written = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert written == [f"scene.layer{i}_attention.png" for i in range(4)] + ["scene.rollout.png"]
    assert Image.open(tmp_path / "overlays" / "scene.rollout.png").size == (160, 160)
