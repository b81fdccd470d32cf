"""The text encoder: transformers' CLIPTextModel built from a config (no download).

MobileDiffusion uses the CLIP ViT-L/14 text tower unchanged (~123M parameters). mdship builds it from a
`CLIPTextConfig` so that random-init presets and small trained checkpoints share one code path with a real
CLIP-L checkpoint. Only the fields below are stored in `text_encoder/config.json`: a checkpoint that names
others (or lacks one) is rejected, because silently defaulting a width or a depth loads the wrong model.
"""

from __future__ import annotations

import torch
from torch import nn

# The fields a checkpoint's text_encoder/config.json must hold, with CLIP ViT-L/14's values.
CLIP_L_TEXT_CONFIG: dict = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


class TextEncoder(nn.Module):
    """token ids [B, 77] (int64) -> hidden states [B, 77, width]: the UNet's cross-attention context."""

    def __init__(self, config: dict):
        super().__init__()
        # Imported here: transformers' CLIP import costs seconds, and a cached rebuild never builds a model.
        from transformers import CLIPTextConfig, CLIPTextModel

        self.config = dict(config)
        clip_config = CLIPTextConfig(**config)
        # "eager" attention: the explicit softmax form that exports and delegates cleanly.
        clip_config._attn_implementation = "eager"
        self.clip = CLIPTextModel(clip_config)

    @property
    def width(self) -> int:
        return self.config["hidden_size"]

    @property
    def max_length(self) -> int:
        return self.config["max_position_embeddings"]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.clip(input_ids=input_ids).last_hidden_state
