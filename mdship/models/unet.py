"""The MobileDiffusion UNet: a UViT-style latent diffusion UNet, in one readable file.

Google published no code or weights for MobileDiffusion (arXiv 2311.16567), so this module defines the
architecture from the paper. What comes from the paper, and what mdship chose:

From the paper (Sec. 3 and Fig. 3/4):
  * three resolution levels (64 -> 32 -> 16 latent px at 512 px images), 8 latent channels;
  * convolutions are separable (depthwise 3x3 + pointwise 1x1) everywhere except the outermost level;
  * no transformer at the highest resolution; cross-attention + feed-forward only (no self-attention)
    at 32x32 and in the outer 16x16 blocks; a stack of full transformer blocks (self-attention +
    cross-attention + feed-forward) at the 16x16 bottleneck ("UViT-like");
  * shared key/value projection (W_k = W_v) in every attention layer;
  * gated feed-forward (GLU) with Swish instead of GELU, expansion ratio 6 counting the doubled gate
    projection (so hidden width 3C, input projection C -> 6C);
  * optional ReLU attention (a fine-tuned variant of the paper) instead of softmax;
  * fewer ResNet blocks than Stable Diffusion (12 instead of 22);
  * sinusoidal timestep embedding + MLP, text conditioning through cross-attention (CLIP-L width 768).

Chosen by mdship (the paper does not say):
  * channels (320, 640, 1024) and head dim 64 (from one public re-implementation, approximate);
  * ResNet blocks: down (1, 1, 2), one in the bottleneck, up (2, 2, 3) (Stable Diffusion's skip layout:
    every up level has one block more than its down level): 12 in all;
  * every ResNet block at the 32x32 and 16x16 levels is followed by a one-layer cross-attention
    transformer; the bottleneck stack depth (`mid_transformer_depth`) is the free parameter picked so that
    the paper-scale preset lands at ~386M parameters (the paper's count) -- see `presets.py`;
  * down/upsamplers are stride-2 / nearest-2x convolutions of the level's own convolution type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


#: the UNet's "content" layers (module-name globs): cross-attention and feed-forward, where MixDQ (Zhao et al., ECCV
#: 2024) finds quantization changes what is drawn rather than how cleanly; `mdship tune` models their image error
#: apart from the other ("quality") layers'
CONTENT_LAYERS = ("*.cross_attn.*", "*.ff.*")


@dataclass
class UNetConfig:
    """Every number that shapes the UNet. Saved as `unet/config.json` in a checkpoint."""

    in_channels: int = 8
    out_channels: int = 8
    block_channels: list[int] = field(default_factory=lambda: [320, 640, 1024])
    down_resnets: list[int] = field(default_factory=lambda: [1, 1, 2])
    separable: list[bool] = field(default_factory=lambda: [False, True, True])
    # Which levels carry cross-attention(+FF) transformers after their ResNet blocks.
    cross_attention_levels: list[bool] = field(default_factory=lambda: [False, True, True])
    mid_transformer_depth: int = 12
    attention_head_dim: int = 64
    cross_attention_dim: int = 768
    ff_ratio: int = 6  # counting the doubled gate projection: hidden = ff_ratio/2 * C
    attention_activation: str = "softmax"  # or "relu" (the paper's fine-tuned variant)
    norm_groups: int = 32
    sample_size: int = 64  # latent px at the model's native resolution


def swish(x: torch.Tensor) -> torch.Tensor:
    """SiLU written out: F.silu on fp16 decomposes into an fp32 round trip that splits delegate partitions."""
    return x * torch.sigmoid(x)


class Swish(nn.Module):
    def forward(self, x):
        return swish(x)


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Stable Diffusion's timestep embedding: [cos | sin] of t * 10000^(-i/half)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 followed by pointwise 1x1: ~9x fewer multiply-adds than a full 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def conv3x3(in_channels: int, out_channels: int, separable: bool, stride: int = 1) -> nn.Module:
    if separable:
        return SeparableConv2d(in_channels, out_channels, stride)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, separable: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.conv1 = conv3x3(in_channels, out_channels, separable)
        self.time_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-5)
        self.conv2 = conv3x3(out_channels, out_channels, separable)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.time_proj(swish(temb)).reshape(h.shape[0], h.shape[1], 1, 1)
        h = self.conv2(swish(self.norm2(h)))
        return self.shortcut(x) + h


class Attention(nn.Module):
    """Multi-head attention with one shared key/value projection (the paper's W_k = W_v).

    `use_sdpa` picks torch's fused kernel for eager runs; export wrappers switch it off because
    F.scaled_dot_product_attention decomposes into ops XNNPACK does not take (see toolchain notes).
    """

    def __init__(self, dim: int, context_dim: int | None, head_dim: int, activation: str = "softmax"):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        self.head_dim = dim // self.heads
        self.activation = activation
        self.use_sdpa = True
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        b, n, c = x.shape
        context = x if context is None else context
        q = self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        kv = self.to_kv(context).view(b, context.shape[1], self.heads, self.head_dim).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.head_dim)
        if self.activation == "relu":
            # ReLU attention: normalise by the key count instead of a softmax.
            weights = F.relu(q @ kv.transpose(-1, -2) * scale) / kv.shape[-2]
            out = weights @ kv
        elif self.use_sdpa:
            out = F.scaled_dot_product_attention(q, kv, kv)
        else:
            out = torch.softmax(q @ kv.transpose(-1, -2) * scale, dim=-1) @ kv
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class GatedFeedForward(nn.Module):
    """GLU feed-forward with Swish (SiLU) gating: more stable in fp16/int8 than GELU, per the paper."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        hidden = dim * ratio // 2
        self.proj_in = nn.Linear(dim, 2 * hidden)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x):
        h = self.proj_in(x)
        hidden = h.shape[-1] // 2
        # Slices rather than chunk(): split_with_sizes is not delegated by XNNPACK, slice is.
        return self.proj_out(h[..., :hidden] * swish(h[..., hidden:]))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: [self-attention] -> cross-attention -> gated FF."""

    def __init__(self, dim: int, cfg: UNetConfig, self_attention: bool):
        super().__init__()
        act = cfg.attention_activation
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.self_attn = Attention(dim, None, cfg.attention_head_dim, act) if self_attention else None
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, cfg.cross_attention_dim, cfg.attention_head_dim, act)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = GatedFeedForward(dim, cfg.ff_ratio)

    def forward(self, x, context):
        if self.self_attn is not None:
            x = x + self.self_attn(self.norm_self(x))
        x = x + self.cross_attn(self.norm_cross(x), context)
        return x + self.ff(self.norm_ff(x))


class SpatialTransformer(nn.Module):
    """GroupNorm -> flatten to tokens -> `depth` transformer layers -> back to a feature map (+ residual)."""

    def __init__(self, channels: int, cfg: UNetConfig, depth: int, self_attention: bool):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.layers = nn.ModuleList([TransformerLayer(channels, cfg, self_attention) for _ in range(depth)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context):
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c))
        for layer in self.layers:
            tokens = layer(tokens, context)
        tokens = self.proj_out(tokens)
        return x + tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    def __init__(self, channels: int, separable: bool):
        super().__init__()
        self.conv = conv3x3(channels, channels, separable, stride=2)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x then a conv. `mode="repeat"` is the export form (XNNPACK does not take upsample_nearest2d)."""

    def __init__(self, channels: int, separable: bool):
        super().__init__()
        self.conv = conv3x3(channels, channels, separable)
        self.mode = "interpolate"

    def forward(self, x):
        if self.mode == "interpolate":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            b, c, h, w = x.shape
            # Each pixel repeated 2x along W then 2x along H, written with cat/reshape only.
            # Each pixel repeated 2x along W, then each row 2x along H; 4-D tensors only (XNNPACK's cat limit).
            # Two separate views per cat: XNNPACK rejects a cat that names the same tensor twice.
            x = torch.cat([x.reshape(b * c, h, w, 1), x.reshape(b * c, h, w, 1)], dim=3)
            x = torch.cat([x.reshape(b * c, h, 1, 2 * w), x.reshape(b * c, h, 1, 2 * w)], dim=2)
            x = x.reshape(b, c, 2 * h, 2 * w)
        return self.conv(x)


class Level(nn.Module):
    """One resolution level of one path: ResNet blocks, each optionally followed by a cross-attention transformer."""

    def __init__(self, in_channels_per_block: list[int], channels: int, temb: int, cfg: UNetConfig, level: int):
        super().__init__()
        separable = cfg.separable[level]
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin, channels, temb, cfg.norm_groups, separable) for cin in in_channels_per_block]
        )
        cross = cfg.cross_attention_levels[level]
        self.transformers = nn.ModuleList(
            [SpatialTransformer(channels, cfg, depth=1, self_attention=False) if cross else nn.Identity()
             for _ in in_channels_per_block]
        )


class MobileDiffusionUNet(nn.Module):
    """(latent [B,8,h,w], timestep [B], context [B,77,768]) -> prediction [B,8,h,w]."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch = cfg.block_channels
        temb = 4 * ch[0]
        self.time_embedding = nn.Sequential(nn.Linear(ch[0], temb), Swish(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        # Down path. Record every feature map pushed onto the skip stack, so the up path can size itself.
        skip_channels = [ch[0]]
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        cin = ch[0]
        for i, c in enumerate(ch):
            ins = [cin] + [c] * (cfg.down_resnets[i] - 1)
            self.down.append(Level(ins, c, temb, cfg, i))
            skip_channels += [c] * cfg.down_resnets[i]
            cin = c
            if i < len(ch) - 1:
                self.downsamplers.append(Downsample(c, cfg.separable[i]))
                skip_channels.append(c)

        # Bottleneck: one ResNet block, then the stack of full (self + cross attention) transformer layers.
        self.mid_resnet = ResnetBlock(ch[-1], ch[-1], temb, cfg.norm_groups, cfg.separable[-1])
        self.mid_transformer = SpatialTransformer(ch[-1], cfg, cfg.mid_transformer_depth, self_attention=True)

        # Up path: each level has one block more than its down level and eats one skip per block.
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c = ch[i]
            ins = []
            for _ in range(cfg.down_resnets[i] + 1):
                ins.append(cin + skip_channels.pop())
                cin = c
            self.up.append(Level(ins, c, temb, cfg, i))
            if i > 0:
                self.upsamplers.append(Upsample(c, cfg.separable[i]))
        assert not skip_channels, "skip layout mismatch"

        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if timestep.dim() == 0:
            timestep = timestep[None]
        timestep = timestep.expand(sample.shape[0])
        temb = sinusoidal_embedding(timestep, self.config.block_channels[0]).to(self.conv_in.weight.dtype)
        temb = self.time_embedding(temb)

        x = self.conv_in(sample)
        skips = [x]
        for i, level in enumerate(self.down):
            for resnet, transformer in zip(level.resnets, level.transformers):
                x = resnet(x, temb)
                x = transformer(x, context) if not isinstance(transformer, nn.Identity) else x
                skips.append(x)
            if i < len(self.downsamplers):
                x = self.downsamplers[i](x)
                skips.append(x)

        x = self.mid_transformer(self.mid_resnet(x, temb), context)

        for j, level in enumerate(self.up):
            for resnet, transformer in zip(level.resnets, level.transformers):
                x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
                x = transformer(x, context) if not isinstance(transformer, nn.Identity) else x
            if j < len(self.upsamplers):
                x = self.upsamplers[j](x)

        return self.conv_out(swish(self.norm_out(x)))
