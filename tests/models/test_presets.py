"""The presets hit the paper's parameter counts; the tiny preset keeps the topology under 5M."""

import torch

from mdship.inspect import inspect_target
from mdship.models.unet import Attention, MobileDiffusionUNet, SeparableConv2d, SpatialTransformer
from mdship.models.presets import get_preset


def test_paper_scale_counts_on_meta_device():
    report = inspect_target("preset:mobilediffusion")
    c = report["components"]
    assert 367e6 <= c["unet"]["parameters"] <= 405e6  # paper: ~386M
    assert 8.8e6 <= c["vae_decoder"]["parameters"] <= 10.8e6  # paper: ~9.8M
    assert 118e6 <= c["text_encoder"]["parameters"] <= 128e6  # CLIP-L text tower: ~123M
    assert report["hash"] is None
    assert c["unet"]["bytes_fp32"] == 4 * c["unet"]["parameters"]


def test_tiny_is_small():
    report = inspect_target("preset:tiny")
    assert report["total_parameters"] < 5e6


def test_unet_topology_matches_the_paper():
    with torch.device("meta"):
        unet = MobileDiffusionUNet(get_preset("mobilediffusion").unet)
    # Outermost level: full convs, no transformer; inner levels: separable convs + cross-attention only.
    assert not any(isinstance(m, SeparableConv2d) for m in unet.down[0].modules())
    assert not any(isinstance(m, SpatialTransformer) for m in unet.down[0].modules())
    for level in (unet.down[1], unet.down[2]):
        assert any(isinstance(m, SeparableConv2d) for m in level.modules())
        for t in level.transformers:
            assert all(layer.self_attn is None for layer in t.layers)
    # Bottleneck: full blocks with self-attention.
    assert len(unet.mid_transformer.layers) == 16
    assert all(layer.self_attn is not None for layer in unet.mid_transformer.layers)
    # Shared K/V: one projection, no separate to_k / to_v.
    attn = unet.mid_transformer.layers[0].self_attn
    assert isinstance(attn, Attention) and not hasattr(attn, "to_k") and not hasattr(attn, "to_v")
    # Gated FF with ratio 6 counting the doubled gate: C -> 6C -> (3C) -> C.
    ff = unet.mid_transformer.layers[0].ff
    assert ff.proj_in.out_features == 6 * 1024 and ff.proj_out.in_features == 3 * 1024
    # 12 ResNet blocks in all (SD has 22).
    from mdship.models.unet import ResnetBlock
    assert sum(isinstance(m, ResnetBlock) for m in unet.modules()) == 12


def test_relu_attention_variant_runs():
    cfg = get_preset("tiny").unet
    cfg.attention_activation = "relu"
    torch.manual_seed(0)
    unet = MobileDiffusionUNet(cfg).eval()
    out = unet(torch.randn(1, 8, 8, 8), torch.tensor([10]), torch.randn(1, 77, 64))
    assert out.shape == (1, 8, 8, 8) and torch.isfinite(out).all()


def test_sdpa_and_explicit_attention_agree():
    torch.manual_seed(0)
    attn = Attention(64, 32, 16).eval()
    x, ctx = torch.randn(2, 10, 64), torch.randn(2, 7, 32)
    fused = attn(x, ctx)
    attn.use_sdpa = False
    torch.testing.assert_close(attn(x, ctx), fused, atol=1e-5, rtol=1e-5)
