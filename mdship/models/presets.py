"""Named model sizes. `mobilediffusion` is the paper's scale; `tiny` has the same topology under 5M parameters.

A preset is a full description of a checkpoint (component configs, scheduler, tokenizer words, resolution):
`mdship init-checkpoint PATH --preset NAME --seed N` writes one with random weights, and recipes may name
`preset:NAME[@SEED]` to build straight from one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from mdship.models.text_encoder import CLIP_L_TEXT_CONFIG
from mdship.models.unet import UNetConfig
from mdship.models.vae import VAEConfig
from mdship.schedulers import SchedulerConfig


@dataclass
class Preset:
    name: str
    description: str
    resolution: int
    text_encoder: dict
    unet: UNetConfig
    vae: VAEConfig
    scheduler: SchedulerConfig
    # Tokenizer vocabulary size comes from the shipped preset tokenizer unless the config fixes it (CLIP-L does).
    fixed_vocab: bool = True


def _mobilediffusion() -> Preset:
    return Preset(
        name="mobilediffusion",
        description="Paper scale (~520M): CLIP-L text encoder, 386M UViT UNet, 9.8M lite decoder, 512 px",
        resolution=512,
        text_encoder=dict(CLIP_L_TEXT_CONFIG),
        # Bottleneck depth 16 puts the UNet at 391.5M (paper: ~386M); 15 would give 376M.
        unet=UNetConfig(mid_transformer_depth=16, sample_size=64),
        # Decoder widths (64, 128, 256, 288), two ResNets per level: 9.47M (paper: ~9.8M).
        vae=VAEConfig(decoder_channels=[64, 128, 256, 288], sample_size=512),
        scheduler=SchedulerConfig(),
    )


def _tiny() -> Preset:
    return Preset(
        name="tiny",
        description="Same topology as the paper at toy width (<5M parameters, 64 px): for fast tests",
        resolution=64,
        text_encoder={
            **CLIP_L_TEXT_CONFIG,
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "projection_dim": 64,
        },
        unet=UNetConfig(block_channels=[32, 64, 64], mid_transformer_depth=2, attention_head_dim=16,
                        cross_attention_dim=64, norm_groups=8, sample_size=8),
        vae=VAEConfig(encoder_channels=[16, 32, 32, 32], decoder_channels=[16, 32, 32, 32], norm_groups=8,
                      sample_size=64),
        scheduler=SchedulerConfig(default_guidance=2.0),
        fixed_vocab=False,
    )


_BUILDERS = {"mobilediffusion": _mobilediffusion, "tiny": _tiny}
PRESET_NAMES = tuple(_BUILDERS)


def get_preset(name: str) -> Preset:
    if name not in _BUILDERS:
        from mdship.errors import UserError
        raise UserError(f"unknown preset '{name}': expected one of {', '.join(PRESET_NAMES)}")
    return copy.deepcopy(_BUILDERS[name]())
