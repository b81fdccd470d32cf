"""A demo LoRA adapter for a checkpoint, made with peft (a dev dependency): rank R on the UNet's attention
projections, random A and B (untrained: it changes the images, it does not teach a style), saved in PEFT's
safetensors layout with its adapter_config.json. For trying `lora:` in a recipe without a trained adapter.

    python tools/make_lora.py builtin:shapes artifacts/lora/shapes-style [--rank 4] [--std 0.02]
    mdship build recipes/md-xnnpack-w8a8.yaml ... 'lora=[{path: artifacts/lora/shapes-style/adapter_model.safetensors}]'
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model

from mdship.checkpoint import Checkpoint

ATTENTION = ("to_q", "to_kv", "to_out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint reference, e.g. builtin:shapes or preset:tiny")
    parser.add_argument("out", help="directory for adapter_model.safetensors and adapter_config.json")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--std", type=float, default=0.02, help="standard deviation of the up (B) weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    unet = Checkpoint.open(args.checkpoint).unet
    names = [n for n, m in unet.named_modules() if n.rsplit(".", 1)[-1] in ATTENTION and isinstance(m, torch.nn.Linear)]
    model = get_peft_model(unet, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=names,
                                            init_lora_weights="gaussian"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=args.std)
    model.save_pretrained(args.out)
    print(f"{args.out}/adapter_model.safetensors: rank {args.rank} on {len(names)} attention projections")


if __name__ == "__main__":
    main()
