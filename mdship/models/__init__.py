"""The MobileDiffusion model family: text encoder, UViT UNet, 8-channel VAE with a lite decoder, and presets."""

from mdship.models.presets import PRESET_NAMES, get_preset
from mdship.models.text_encoder import TextEncoder
from mdship.models.unet import MobileDiffusionUNet, UNetConfig
from mdship.models.vae import AutoencoderKL, ScaledDecoder, VAEConfig

__all__ = ["PRESET_NAMES", "get_preset", "TextEncoder", "MobileDiffusionUNet", "UNetConfig", "AutoencoderKL",
           "ScaledDecoder", "VAEConfig"]
