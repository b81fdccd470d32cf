"""`mdship inspect`: parameter counts and fp32 sizes per shippable component, without loading weights for presets."""

from __future__ import annotations

import torch

from mdship.checkpoint import Checkpoint, CheckpointRef, preset_tokenizer
from mdship.models.presets import get_preset
from mdship.models.text_encoder import TextEncoder
from mdship.models.unet import MobileDiffusionUNet
from mdship.models.vae import AutoencoderKL, ScaledDecoder


def _count(module: torch.nn.Module) -> dict:
    params = sum(p.numel() for p in module.parameters())
    return {"parameters": params, "bytes_fp32": 4 * params}


def inspect_target(target: str) -> dict:
    """Report for a checkpoint reference. `preset:NAME` is built on the meta device: no weights allocated."""
    ref = CheckpointRef.parse(target)
    if ref.kind == "preset":
        preset = get_preset(ref.name)
        text_cfg = dict(preset.text_encoder)
        if not preset.fixed_vocab:
            text_cfg["vocab_size"] = len(preset_tokenizer(preset))
        with torch.device("meta"):
            modules = {"text_encoder": TextEncoder(text_cfg), "unet": MobileDiffusionUNet(preset.unet),
                       "vae_decoder": ScaledDecoder(AutoencoderKL(preset.vae))}
        digest = None
    else:
        ckpt = Checkpoint.open(ref)
        modules, digest = ckpt.modules(), ckpt.hash
    components = {name: _count(m) for name, m in modules.items()}
    return {"components": components, "total_parameters": sum(c["parameters"] for c in components.values()),
            "hash": digest}
