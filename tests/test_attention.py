import pytest
import torch

from attnserve.models.attention import ATTENTION_KINDS, CrossLevelChannelAttention, create_attn
from attnserve.models.attention.eca import eca_kernel_size


@pytest.mark.parametrize("kind", sorted(ATTENTION_KINDS))
def test_every_module_keeps_shape_and_returns_maps_in_unit_range(kind):
    torch.manual_seed(0)
    module = create_attn(kind, 32).eval()
    x = torch.randn(2, 32, 12, 10)
    with torch.no_grad():
        y, maps = module(x)
    assert y.shape == x.shape
    assert set(maps) == set(module.MAP_KINDS)
    for name, kind_of_map in module.MAP_KINDS.items():
        m = maps[name]
        expected = (2, 32) if kind_of_map == "channel" else (2, 1, 12, 10)
        assert m.shape == expected, (kind, name)
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0


@pytest.mark.parametrize("kind", sorted(ATTENTION_KINDS))
def test_output_is_the_input_scaled_by_the_maps(kind):
    """Attention only rescales features: a zero input stays zero, and maps depend on the input."""
    module = create_attn(kind, 16).eval()
    y, _ = module(torch.zeros(1, 16, 8, 8))
    assert torch.count_nonzero(y) == 0
    _, maps_a = module(torch.randn(1, 16, 8, 8))
    _, maps_b = module(torch.randn(1, 16, 8, 8) * 3)
    assert any(not torch.allclose(maps_a[k], maps_b[k]) for k in maps_a)


def test_cbam_applies_its_channel_then_spatial_maps():
    torch.manual_seed(0)
    module = create_attn("cbam", 16).eval()
    x = torch.randn(1, 16, 6, 6)
    y, maps = module(x)
    expected = x * maps["channel"][:, :, None, None] * maps["spatial"]
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize(("channels", "k"), [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5)])
def test_eca_kernel_size_follows_the_paper(channels, k):
    assert eca_kernel_size(channels) == k
    assert create_attn("eca", channels).conv.kernel_size == (k,)


def test_factory_maps_names_and_rejects_unknown():
    assert create_attn(None, 8) is None
    assert create_attn("none", 8) is None
    assert type(create_attn("se", 8)) is ATTENTION_KINDS["se"]
    with pytest.raises(ValueError, match="unknown attention kind 'bam'"):
        create_attn("bam", 8)


def test_cross_level_channel_attention_shares_one_vector_across_levels():
    module = CrossLevelChannelAttention(8, levels=3).eval()
    feats = [torch.rand(2, 8, s, s) + 0.1 for s in (16, 8, 4)]
    out, maps = module(feats)
    assert maps["channel"].shape == (2, 8)
    for f, o in zip(feats, out, strict=True):
        torch.testing.assert_close(o, f * maps["channel"][:, :, None, None])
