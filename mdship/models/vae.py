"""The MobileDiffusion VAE: 8 latent channels, 8x spatial compression, and a "lite" decoder.

The paper trains its own VAE with 8 latent channels (Stable Diffusion has 4) and prunes the decoder's
width and depth to ~9.8M parameters (SD's decoder: 49.5M) while improving PSNR. mdship's decoder is SD's
decoder with halved widths, two ResNet blocks per level and no attention block: attention at 64x64 is
the most expensive and least mobile-friendly part of SD's decoder, and the paper's lite decoder drops it.
Widths were chosen so the paper-scale preset lands at ~9.8M parameters. The encoder only runs in training
and in `mdship` tools (it is never shipped in a bundle).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mdship.models.unet import Upsample, swish


@dataclass
class VAEConfig:
    """Saved as `vae/config.json` in a checkpoint."""

    in_channels: int = 3
    latent_channels: int = 8
    encoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256])
    decoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256])
    encoder_resnets: int = 2
    decoder_resnets: int = 2
    norm_groups: int = 32
    # Latents are multiplied by this before diffusion so they have roughly unit variance.
    scaling_factor: float = 1.0
    sample_size: int = 512


class VAEResnet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        # The shortcut first: where it is a 1x1 conv (the block narrows the channels) x is then free as soon as
        # norm1 has read it, instead of living through both convs; an exported program's memory plan follows this
        # order (the paper-scale decoder's last level: 64 MiB less running memory at 512 px). Same math.
        skip = self.shortcut(x)
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return skip + h


class Encoder(nn.Module):
    """image [B,3,H,W] in [-1,1] -> (mean, logvar) each [B,8,H/8,W/8]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.encoder_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        blocks: list[nn.Module] = []
        cin = ch[0]
        for i, c in enumerate(ch):
            for _ in range(cfg.encoder_resnets):
                blocks.append(VAEResnet(cin, c, cfg.norm_groups))
                cin = c
            if i < len(ch) - 1:  # three downsamplers: 8x
                blocks.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)
        self.mid = VAEResnet(cin, cin, cfg.norm_groups)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.mid(self.blocks(self.conv_in(x)))
        mean, logvar = self.conv_out(swish(self.norm_out(h))).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class LiteDecoder(nn.Module):
    """latent [B,8,h,w] (already divided by scaling_factor) -> image [B,3,8h,8w] in [-1,1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = list(reversed(cfg.decoder_channels))
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid = VAEResnet(ch[0], ch[0], cfg.norm_groups)
        blocks: list[nn.Module] = []
        cin = ch[0]
        for i, c in enumerate(ch):
            for _ in range(cfg.decoder_resnets):
                blocks.append(VAEResnet(cin, c, cfg.norm_groups))
                cin = c
            if i < len(ch) - 1:
                blocks.append(Upsample(c, separable=False))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
        h = self.blocks(self.mid(self.conv_in(z)))
        return self.conv_out(swish(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """Encoder + lite decoder. Checkpoints store both; bundles ship only the decoder."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = LiteDecoder(cfg)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False):
        """images in [-1,1] -> scaled latents (mean, or a sample when `sample`)."""
        mean, logvar = self.encoder(images)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            z = mean + torch.exp(0.5 * logvar) * noise
        return z * self.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents -> images in [-1,1] (not clamped)."""
        return self.decoder(latents / self.config.scaling_factor)


class ScaledDecoder(nn.Module):
    """The shipped decoder program: scaled latents in, image in [-1, 1] out (the 1/scaling_factor folded in)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.decoder = vae.decoder
        self.inv_scale = 1.0 / vae.config.scaling_factor

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent * self.inv_scale)
