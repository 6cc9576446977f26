import pytest
import torch

from attnserve.models.classifier import AttentionClassifier
from attnserve.models.detector import HybridAttentionDetector
from attnserve.models.scenes import CLASS_NAMES

SMALL = {"widths": (8, 16, 16, 32)}


@pytest.mark.parametrize("attn", ["cbam", "se", "eca", "coord", "spatial", None])
@pytest.mark.parametrize("size", [64, 96])
def test_classifier_outputs_match_their_specs_at_any_input_size(attn, size):
    model = AttentionClassifier(CLASS_NAMES, attn, **SMALL).eval()
    out = model(torch.rand(2, 3, size, size))
    assert list(out) == [s.name for s in model.output_specs]
    for spec in model.output_specs:
        if spec.kind in ("spatial", "cam"):
            assert out[spec.name].shape[2:] == (size // spec.stride, size // spec.stride), spec
        elif spec.kind == "channel":
            assert out[spec.name].ndim == 2
    assert out["cam"].shape[1] == len(CLASS_NAMES)
    torch.testing.assert_close(out["probabilities"].sum(1), torch.ones(2))


@pytest.mark.parametrize("attn", ["se", "cbam"])
def test_bottleneck_blocks_carry_attention_on_the_expanded_width(attn):
    model = AttentionClassifier(CLASS_NAMES, attn, widths=(32, 64, 64, 128), bottleneck=True).eval()
    block = model.backbone.blocks[-1]
    assert len(block.branch) == 4  # 1×1 reduce, 3×3, 1×1 expand, BN
    assert block.branch[0][0].out_channels == 128 // 4
    out = model(torch.rand(1, 3, 64, 64))
    assert out["stage4_block0_channel"].shape == (1, 128)


def test_classifier_logits_equal_pooled_features_through_the_head():
    """The CAM is the head applied per cell, so its mean plus bias is the ordinary GAP + linear head."""
    torch.manual_seed(0)
    model = AttentionClassifier(CLASS_NAMES, "cbam", **SMALL).eval()
    x = torch.rand(2, 3, 64, 64)
    feats, _ = model.backbone(x)
    expected = model.head(feats[-1].mean(dim=(2, 3)))
    torch.testing.assert_close(model(x)["logits"], expected)


@pytest.mark.parametrize("size", [96, 128])
def test_detector_outputs_fixed_k_and_labelled_maps(size):
    model = HybridAttentionDetector(CLASS_NAMES, max_detections=20, **SMALL).eval()
    out = model(torch.rand(2, 3, size, size))
    assert list(out) == [s.name for s in model.output_specs]
    assert out["boxes"].shape == (2, 20, 4)
    assert out["scores"].shape == (2, 20) and out["classes"].shape == (2, 20)
    assert {s.stride for s in model.output_specs if s.kind == "spatial"} == {4, 8, 16}
    for spec in model.output_specs:
        if spec.kind == "spatial":
            assert out[spec.name].shape == (2, 1, size // spec.stride, size // spec.stride)


def test_detector_decodes_a_known_peak_into_its_box():
    model = HybridAttentionDetector(CLASS_NAMES, max_detections=5, **SMALL).eval()
    n, h, w = 1, 32, 32
    heat = torch.full((n, len(CLASS_NAMES), h, w), -10.0)
    heat[0, 3, 10, 20] = 5.0  # a star centred at cell (x=20, y=10)
    size = torch.zeros(n, 2, h, w)
    size[0, :, 10, 20] = torch.tensor([6.0, 4.0])  # 24×16 px at stride 4
    offset = torch.zeros(n, 2, h, w)
    offset[0, :, 10, 20] = torch.tensor([0.5, 0.25])
    out = model.decode({"heatmap": heat, "size": size, "offset": offset})
    assert int(out["classes"][0, 0]) == 3
    assert float(out["scores"][0, 0]) == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    cx, cy = (20 + 0.5) * 4, (10 + 0.25) * 4
    torch.testing.assert_close(out["boxes"][0, 0], torch.tensor([cx - 12, cy - 8, cx + 12, cy + 8]))
    assert float(out["scores"][0, 1]) < 1e-3  # nothing else peaks


def test_detector_peak_test_suppresses_neighbours():
    model = HybridAttentionDetector(CLASS_NAMES, max_detections=3, **SMALL).eval()
    heat = torch.full((1, len(CLASS_NAMES), 16, 16), -10.0)
    heat[0, 0, 5, 5], heat[0, 0, 5, 6] = 4.0, 3.0  # a blob, not two objects
    heat[0, 1, 12, 12] = 2.0
    zeros = torch.zeros(1, 2, 16, 16)
    out = model.decode({"heatmap": heat, "size": zeros, "offset": zeros})
    assert out["classes"][0, :2].tolist() == [0, 1]
    torch.testing.assert_close(out["scores"][0, :2], torch.sigmoid(torch.tensor([4.0, 2.0])))


def test_no_adaptive_pooling_that_bakes_input_sizes():
    for model in (AttentionClassifier(CLASS_NAMES, "coord"), HybridAttentionDetector(CLASS_NAMES)):
        for m in model.modules():
            assert not isinstance(m, torch.nn.AdaptiveAvgPool2d | torch.nn.AdaptiveMaxPool2d), m
