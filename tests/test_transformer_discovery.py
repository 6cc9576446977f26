"""Self-attention found in graphs of transformers we did not write (tests/user_transformers.py), in each
coding style and token layout, checked against the probabilities each model computes the plain way."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import user_transformers
from test_vit import reference_rollout

from attnserve.demo.evaluate import to_tensor
from attnserve.export.pipeline import ExportRequest, export_model
from attnserve.export.self_attention import AttentionLayer, _read_grid, _read_layout
from attnserve.manifest import MODEL_FILE, Manifest
from attnserve.models.scenes import generate

CASES = [  # every attention style once, every token layout at least once
    ("timm", "cls"),
    ("sdpa", "cls_dist"),
    ("mha", "registers"),
    ("mha_seq_first", "none"),
    ("rearranged", "cls"),
    ("heads_last", "registers"),
]
GRID = (6, 6)  # 48-pixel inputs, 8-pixel patches


def export(repo, attention: str, tokens: str, opset: int = 18, log=None) -> Manifest:
    request = ExportRequest(
        repo,
        name=f"{attention}_{tokens}",
        factory="user_transformers:build",
        factory_kwargs=f'{{"attention": "{attention}", "tokens": "{tokens}"}}',
        task="classification",
        input_size=(48, 48),
        opset=opset,
    )
    return export_model(request, log=log or (lambda line: None))[1]


def run(repo, name: str, images: np.ndarray) -> dict[str, np.ndarray]:
    path = repo / name / "1" / MODEL_FILE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images}), strict=True))


def reference_maps(model, images: np.ndarray, leading: int) -> dict[str, np.ndarray]:
    """Per block, each head's first-token row over the patches (the mean row without leading tokens)
    and their average; and the rollout as the paper's full matrix product."""
    per_head = [p.double().numpy() for p in model.probabilities(torch.from_numpy(images))]  # N×h×T×T
    maps = {}
    for i, p in enumerate(per_head):
        rows = (p[:, :, 0] if leading else p.mean(axis=2))[..., leading:]  # N×heads×patches
        maps[f"blocks.{i}.attn.heads"] = rows.reshape(len(images), -1, *GRID)
        maps[f"blocks.{i}.attn"] = rows.mean(axis=1).reshape(len(images), 1, *GRID)
    layers = [p.mean(axis=1) for p in per_head]
    maps["rollout"] = reference_rollout(layers, leading).reshape(len(images), 1, *GRID)
    return maps


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    scenes = generate("classification", 41, 5, 48)
    return to_tensor(np.stack([s.image for s in scenes])).numpy()


@pytest.mark.parametrize("attention,tokens", CASES)
def test_self_attention_is_found_in_every_style_and_equals_the_models_own(
    tmp_path, images, attention, tokens
):
    manifest = export(tmp_path, attention, tokens)
    model = user_transformers.build(attention, tokens)
    expected = reference_maps(model, images, user_transformers.LEADING[tokens])
    maps = {a.name: a for a in manifest.attention}
    prefix = "blocks.{}.attn" + (".attn" if attention.startswith("mha") else "")  # the module holding it
    for kind in ("self_attention", "self_attention_heads"):
        per_block = sorted(n for n, a in maps.items() if a.kind == kind)
        assert per_block == [f"{prefix.format(i)}.{kind}" for i in range(3)]
        assert all(maps[n].shape == [1, 1 if kind == "self_attention" else 4, *GRID] for n in per_block)
    assert maps["rollout"].kind == "rollout" and maps["rollout"].source == "blocks"
    got = run(tmp_path, manifest.name, images)
    for name, a in maps.items():
        assert a.origin == "discovered" and a.grid == list(GRID) and a.stride == 8
        block = "rollout" if name == "rollout" else name.split(".attn")[0] + ".attn"
        block += ".heads" if a.kind == "self_attention_heads" else ""
        np.testing.assert_allclose(got[name], expected[block], atol=1e-5, rtol=0)
    with torch.no_grad():  # the model as written (fused attention included) computes the same logits
        np.testing.assert_allclose(got["logits"], model(torch.from_numpy(images)).numpy(), atol=1e-4, rtol=0)
    rewritten = manifest.source.get("explicit_attention", {}).get("modules", [])
    assert bool(rewritten) == (attention in ("sdpa", "mha", "mha_seq_first"))
    assert manifest.verification["parity_fp32_vs_pytorch"]["max_abs_diff"]["rollout"] <= 1e-4


def test_fused_attention_at_opset_23_is_exported_with_its_softmax_written_out(tmp_path, images):
    """At opset 23 the exporter turns F.scaled_dot_product_attention into one Attention op without
    its probabilities; the exporter writes it out instead, and the maps are still the model's."""
    manifest = export(tmp_path, "sdpa", "cls", opset=23)
    ops = {n.op_type for n in onnx.load(tmp_path / manifest.name / "1" / MODEL_FILE).graph.node}
    assert "Attention" not in ops and "Softmax" in ops
    expected = reference_maps(user_transformers.build("sdpa", "cls"), images, 1)
    got = run(tmp_path, manifest.name, images)
    np.testing.assert_allclose(got["rollout"], expected["rollout"], atol=1e-5, rtol=0)
    assert manifest.source["explicit_attention"]["modules"] == [f"blocks.{i}.attn" for i in range(3)]


def test_an_ambiguous_patch_grid_is_left_out_with_the_reason(tmp_path):
    """32-pixel inputs, 8-pixel patches and a class token make 17 tokens: 1 + 4×4, or 8 + 3×3."""
    lines = []
    request = ExportRequest(
        tmp_path,
        name="tiny",
        factory="user_transformers:build",
        factory_kwargs='{"attention": "timm", "img_size": 32}',
        task="classification",
        input_size=(32, 32),
    )
    manifest = export_model(request, log=lines.append)[1]
    assert manifest.attention == []
    left_out = [line for line in lines if "self-attention left out" in line]
    assert len(left_out) == 3
    assert "17 tokens on a 32×32 input could be 1 leading tokens + 4×4 patches or 8 leading" in left_out[0]


@pytest.mark.parametrize(
    "shape,axis,expected",
    [
        ((2, 4, 37, 37), 3, ((), 4)),  # N×heads×T×T
        ((8, 37, 37), 2, ((), 4)),  # (N·heads)×T×T
        ((2, 37, 37, 4), 2, ((0, 3, 1, 2), 4)),  # N×T×T×heads, softmax over the keys at axis 2
        ((2, 37, 4, 37), 3, ((0, 2, 1, 3), 4)),  # N×T×heads×T
    ],
)
def test_layouts_are_read_from_shape_and_softmax_axis(shape, axis, expected):
    layer = AttentionLayer("p", "attn")
    assert _read_layout(layer, shape, axis, batch=2) == ""
    assert (layer.order, layer.heads, layer.tokens) == (*expected, 37)


def test_unreadable_layouts_and_grids_say_why():
    layer = AttentionLayer("p", "attn")
    assert "cross-attention" in _read_layout(layer, (2, 4, 10, 37), 3, batch=2)
    assert "all 4 long" in _read_layout(layer, (2, 4, 4, 4), 3, batch=2)
    layer.tokens = 49
    assert _read_grid(layer, (64, 128)) == "49 tokens on a 64×128 input fit no patch grid of that aspect"
    layer.tokens = 2 + 8 * 16  # a distillation model on a 2:1 input
    assert _read_grid(layer, (64, 128)) == "" and (layer.leading, layer.grid) == (2, (8, 16))
