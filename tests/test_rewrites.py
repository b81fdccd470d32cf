"""Each export-only rewrite computes what eager computes."""

import torch
from torch import nn

from mdship.checkpoint import Checkpoint
from mdship.models.unet import Upsample
from mdship.rewrites import DelegableGroupNorm, DelegableLayerNorm, PointwiseAsLinear, export_friendly, is_pointwise


def test_group_norm():
    torch.manual_seed(0)
    norm = nn.GroupNorm(8, 32, eps=1e-5)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(2, 32, 8, 8) * 3 + 1
    torch.testing.assert_close(DelegableGroupNorm(norm)(x), norm(x), atol=1e-5, rtol=1e-5)
    # the paper decoder's widest level (9 channels per group) on a map far from zero mean: the variance is taken
    # around the group mean, as eager does, so a large offset costs no precision
    norm = nn.GroupNorm(32, 288, eps=1e-6)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(1, 288, 16, 16) * 0.5 + 100
    torch.testing.assert_close(DelegableGroupNorm(norm)(x), norm(x), atol=1e-4, rtol=1e-4)
    assert not DelegableGroupNorm(norm).state_dict().keys() - {"weight", "bias"}  # the helper buffer is not saved


def test_layer_norm():
    torch.manual_seed(0)
    norm = nn.LayerNorm(48)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(2, 10, 48) * 2 - 1
    torch.testing.assert_close(DelegableLayerNorm(norm)(x), norm(x), atol=1e-5, rtol=1e-5)


def test_nearest_upsample_as_repeat():
    torch.manual_seed(0)
    up = Upsample(4, separable=False)
    x = torch.randn(2, 4, 5, 3)
    eager = up(x)
    up.mode = "repeat"
    torch.testing.assert_close(up(x), eager)


def test_whole_components_equal_after_rewrites():
    ckpt = Checkpoint.from_preset("tiny", seed=1)
    inputs = {"text_encoder": (torch.randint(0, 300, (1, 77)),),
              "unet": (torch.randn(2, 8, 8, 8), torch.tensor([500]), torch.randn(2, 77, 64)),
              "vae_decoder": (torch.randn(1, 8, 8, 8),)}
    for name, module in ckpt.modules().items():
        rewritten = export_friendly(module)
        assert not any(isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for m in rewritten.modules())
        with torch.no_grad():
            torch.testing.assert_close(rewritten(*inputs[name]), module(*inputs[name]), atol=1e-4, rtol=1e-4)
    # The eager model is untouched.
    assert any(isinstance(m, nn.GroupNorm) for m in ckpt.unet.modules())


def test_pointwise_conv_as_linear():
    """A 1x1 convolution as a Linear over [B, H*W, C] tokens: the same outputs, for every 1x1 conv of the UNet."""
    torch.manual_seed(0)
    for bias in (True, False):
        conv = nn.Conv2d(24, 40, 1, bias=bias)
        x = torch.randn(2, 24, 5, 7)
        torch.testing.assert_close(PointwiseAsLinear(conv)(x), conv(x), atol=1e-5, rtol=1e-5)
    assert not is_pointwise(nn.Conv2d(8, 8, 3)) and not is_pointwise(nn.Conv2d(8, 8, 1, groups=8))
    assert not is_pointwise(nn.Conv2d(8, 8, 1, stride=2))
    unet = Checkpoint.from_preset("tiny", seed=1).unet
    pointwise = [m for m in unet.modules() if is_pointwise(m)]
    assert len(pointwise) > 10
    x = torch.randn(1, pointwise[0].in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(PointwiseAsLinear(pointwise[0])(x), pointwise[0](x), atol=1e-5, rtol=1e-5)


def test_rewrites_are_chosen_by_name():
    """A backend names the rewrites it wants: without "group_norm" the GroupNorms stay (Vulkan runs them natively),
    the other rewrites still apply, and the outputs stay equal; an unknown name is refused."""
    import pytest

    from mdship.models.unet import Attention
    from mdship.rewrites import REWRITES

    unet = Checkpoint.from_preset("tiny", seed=1).modules()["unet"]
    kept = export_friendly(unet, tuple(r for r in REWRITES if r != "group_norm"))
    assert any(isinstance(m, nn.GroupNorm) for m in kept.modules())
    assert not any(isinstance(m, DelegableGroupNorm) for m in kept.modules())
    assert all(not m.use_sdpa for m in kept.modules() if isinstance(m, Attention))
    assert all(m.mode == "repeat" for m in kept.modules() if isinstance(m, Upsample))
    x = (torch.randn(2, 8, 8, 8), torch.tensor([500]), torch.randn(2, 77, 64))
    with torch.no_grad():
        torch.testing.assert_close(kept(*x), unet(*x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown rewrite"):
        export_friendly(unet, ("group_norms",))
