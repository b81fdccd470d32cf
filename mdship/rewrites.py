"""Export-only rewrites that make MobileDiffusion delegate well, at equal accuracy.

XNNPACK (ExecuTorch 1.5) does not take GroupNorm, LayerNorm or upsample_nearest2d, and
F.scaled_dot_product_attention decomposes into eq/where/any ops that run on slow portable kernels. Each of
those splits the graph into another delegate partition with a CPU op between. The rewrites below express the
same math with ops XNNPACK does take (4-D mean over dims [2, 3] keepdim, rsqrt, mul/add, matmul, softmax over
the last dim, cat/reshape), so a whole UNet lowers to a handful of partitions. tests/test_rewrites.py proves
each one equal to eager.

`export_friendly(module, rewrites)` returns a deep copy with the named swaps applied (`REWRITES`); the eager model is
never changed. Each backend names the rewrites it wants (`Backend.rewrites`): all four for XNNPACK, Core ML and
portable; every one but GroupNorm for Vulkan, which takes GroupNorm natively and whose reductions cover only 1-2
dims (the rewrite's mean over (C/G, H*W) of a 512 px decoder is refused and split it into 37 partitions).

`PointwiseAsLinear` is applied by the quantize stage, not here: a 1x1 convolution as a Linear over channels-last, so
torchao's dynamic-activation configs (8da8w / 8da4w, Linear only) can quantize it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mdship.models.unet import Attention, Upsample


def _mean_of_squares(centered: torch.Tensor, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Mean over dims (2, 3) of ``centered`` squared, where ``centered`` is ``x - mean``.

    In fp16 the square is the product of two equal maps computed apart. XNNPACK turns ``mean(x * x)`` into one
    fused "mean squared" reduction, and its fp16 path has no entry for that node (XNNPACK's cvt_to_fp32.cc,
    ``GetOpActionFp16``, in the revision ExecuTorch 1.5.1 ships): it runs the node in fp32 and, from there on,
    every node after it, converting each fp16 weight to an fp32 copy it keeps beside the fp32 weights it packs. An
    fp16 program was so computed in fp32 from its first norm on, holding ~3.4x its bytes in memory, on any CPU.
    With two operands the product is not a square and nothing is fused; it costs one more fp16 subtract per norm.
    fp32 keeps the fused reduction (no fallback there, and one full-map pass fewer).
    """
    if centered.dtype == torch.float16:
        return (centered * (x - mean)).mean(dim=(2, 3), keepdim=True)
    return (centered * centered).mean(dim=(2, 3), keepdim=True)


class DelegableGroupNorm(nn.Module):
    """GroupNorm from per-channel statistics, so that no full feature map is ever reshaped.

    XNNPACK computes convolutions in NHWC. A GroupNorm written over a (B, G, C/G, H*W) view needs the map in NCHW
    for the reshape: four full-map transposes per norm, 10-12% of the paper-scale decoder's time at 256 px in an
    ETDump. Here the only full-map ops are a per-channel mean over (H, W) (4-D mean over dims [2, 3], which XNNPACK
    runs in NHWC as global average pooling), a per-channel subtract, a square, and one multiply-add; the reshapes
    touch only [B, C, 1, 1] statistics. The group mean is the mean of its channels' means (every channel has H*W
    elements), and the variance is taken around the group mean (centered, as eager does): the same math, equal to
    eager within float rounding.
    """

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        # broadcasts a group's statistic over its channels (an expand is not delegated; a buffer is a constant, where
        # torch.ones in forward would be a CPU op on every call)
        self.register_buffer("ones", torch.ones(1, 1, norm.num_channels // norm.num_groups, 1), persistent=False)

    def _group_mean(self, per_channel):
        """[B, C, 1, 1] per-channel means -> each channel's group mean, [B, C, 1, 1]."""
        b, c = per_channel.shape[:2]
        grouped = per_channel.reshape(b, self.groups, c // self.groups, 1).mean(dim=(2, 3), keepdim=True)
        return (grouped * self.ones).reshape(b, c, 1, 1)

    def forward(self, x):
        c = x.shape[1]
        mean = self._group_mean(x.mean(dim=(2, 3), keepdim=True))
        centered = x - mean
        var = self._group_mean(_mean_of_squares(centered, x, mean))
        scale = torch.rsqrt(var + self.eps) * self.weight.reshape(1, c, 1, 1)
        return centered * scale + self.bias.reshape(1, c, 1, 1)


class DelegableLayerNorm(nn.Module):
    """LayerNorm over the last dim of [B, N, C], computed as a 4-D (B, N, 1, C) mean over dims (2, 3)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        assert len(norm.normalized_shape) == 1, "only last-dim LayerNorm is rewritten"
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x):
        shape = x.shape
        x4 = x.reshape(-1, shape[-2], 1, shape[-1]) if x.dim() == 3 else x.reshape(1, -1, 1, shape[-1])
        mean = x4.mean(dim=(2, 3), keepdim=True)
        centered = x4 - mean
        var = _mean_of_squares(centered, x4, mean)
        y = (centered * torch.rsqrt(var + self.eps)).reshape(shape)
        return y * self.weight + self.bias


class PointwiseAsLinear(nn.Module):
    """A 1x1 convolution (groups 1, stride 1, no padding) as tokens -> Linear -> feature map: the same math.

    The tokens are [B, H*W, C] (channels last, flattened): XNNPACK's dynamically quantized linear takes at most 3-D
    inputs, like every other Linear of the UNet."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        assert conv.kernel_size == (1, 1) and conv.groups == 1 and conv.stride == (1, 1) and conv.padding in (0, (0, 0))
        self.linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                                dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight[:, :, 0, 0])
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.linear(x.permute(0, 2, 3, 1).reshape(b, h * w, c))
        return tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def is_pointwise(conv: nn.Module) -> bool:
    """A 1x1 convolution that PointwiseAsLinear can stand in for."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1
            and conv.stride == (1, 1) and conv.padding in (0, (0, 0)) and conv.dilation == (1, 1))


#: every export rewrite by name; a backend lists the ones it wants (``mdship.backends.base.Backend.rewrites``)
REWRITES = ("group_norm", "layer_norm", "attention", "upsample")


def export_friendly(module: nn.Module, rewrites: tuple[str, ...] = REWRITES) -> nn.Module:
    """A copy of `module` with the named rewrites applied (parameters copied, eager model untouched).

    Which ones a delegate needs is its own business: XNNPACK takes none of the ops they replace, while Vulkan takes
    GroupNorm natively and its reductions only over 1-2 dims, so the GroupNorm rewrite would split its decoder.
    """
    unknown = sorted(set(rewrites) - set(REWRITES))
    if unknown:
        raise ValueError(f"unknown rewrite(s) {unknown}; expected some of {REWRITES}")
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm) and "group_norm" in rewrites:
                setattr(parent, name, DelegableGroupNorm(child))
            elif isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1 and "layer_norm" in rewrites:
                setattr(parent, name, DelegableLayerNorm(child))
    for m in module.modules():
        if isinstance(m, Attention) and "attention" in rewrites:
            m.use_sdpa = False  # explicit softmax(q k^T s) v
        elif isinstance(m, Upsample) and "upsample" in rewrites:
            m.mode = "repeat"  # nearest 2x as cat/reshape
    return module
