"""An outside consumer of an mdship bundle, written from docs/bundle-format.md alone: no mdship import.

    python tests/bundle_consumer.py BUNDLE PROMPT SEED OUT.npy [--steps N] [--guidance G]

Checks the bundle's integrity, then generates the image with executorch.runtime, numpy and transformers'
CLIPTokenizer, and saves the uint8 [H, W, 3] pixels. tests/test_bundle_spec.py compares them with `mdship run`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

MASK = (1 << 64) - 1


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_integrity(bundle: Path) -> dict:
    digest, name = (bundle / "manifest.json.sha256").read_text().split()
    assert name == "manifest.json" and sha256(bundle / "manifest.json") == digest, "manifest.json was changed"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == 2, manifest["schema_version"]
    for rel, want in manifest["files"].items():
        assert sha256(bundle / rel) == want, f"{rel} was changed"
    return manifest


def splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def initial_latent(seed: int, resolution: int) -> np.ndarray:
    side = resolution // 8
    count = 8 * side * side
    state, values = seed & MASK, []
    while len(values) < count:
        state, a = splitmix64(state)
        state, b = splitmix64(state)
        u1 = 1.0 - (a >> 11) * 2.0 ** -53
        u2 = (b >> 11) * 2.0 ** -53
        r = math.sqrt(-2.0 * math.log(u1))
        values += [r * math.cos(2.0 * math.pi * u2), r * math.sin(2.0 * math.pi * u2)]
    return np.array(values[:count], dtype=np.float64).astype(np.float32).reshape(1, 8, side, side)


def alphas_cumprod(cfg: dict) -> np.ndarray:
    T = cfg["num_train_timesteps"]
    if cfg["beta_schedule"] == "scaled_linear":
        betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T, dtype=np.float64) ** 2
    elif cfg["beta_schedule"] == "linear":
        betas = np.linspace(cfg["beta_start"], cfg["beta_end"], T, dtype=np.float64)
    else:
        abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=np.float64)
    return np.cumprod(1.0 - betas)


def timesteps(cfg: dict, steps: int) -> list[int]:
    if cfg.get("default_timesteps") and len(cfg["default_timesteps"]) == steps:
        return list(cfg["default_timesteps"])
    T = cfg["num_train_timesteps"]
    return [int(round(T - i * T / steps)) - 1 for i in range(steps)]


class Programs:
    def __init__(self, bundle: Path, manifest: dict):
        from executorch.runtime import Runtime

        # the spec: a program whose CPU operators include quantized_decomposed::* needs ExecuTorch's quantized
        # kernels registered (Python: import executorch.kernels.quantized; C++: link quantized_ops_lib)
        if any(op.startswith("quantized_decomposed::") for c in manifest["components"].values()
               for op in c["structure"].get("cpu_operators", [])):
            import executorch.kernels.quantized  # noqa: F401

        runtime = Runtime.get()
        self.methods = {name: runtime.load_program(bundle / c["file"]).load_method("forward")
                        for name, c in manifest["components"].items()}

    def __call__(self, name: str, *inputs: np.ndarray) -> np.ndarray:
        import torch  # executorch.runtime takes and returns torch tensors

        out = self.methods[name].execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])[0]
        return out.numpy()


def generate(bundle: Path, prompt: str, seed: int, steps: int | None, guidance: float | None) -> np.ndarray:
    from transformers import CLIPTokenizer

    manifest = check_integrity(bundle)
    cfg = json.loads((bundle / "scheduler.json").read_text())
    sampler = manifest["sampler"]
    steps = 1 if sampler["kind"] == "one_step" else (steps or sampler["steps"])
    guidance = sampler["guidance"] if guidance is None else guidance
    run = Programs(bundle, manifest)

    length = manifest["components"]["text_encoder"]["inputs"][0]["shape"][1]
    tokenizer = CLIPTokenizer.from_pretrained(str(bundle / "tokenizer"), local_files_only=True)

    def encode(text: str) -> np.ndarray:
        ids = tokenizer([text], padding="max_length", truncation=True, max_length=length)["input_ids"]
        return run("text_encoder", np.array(ids, dtype=np.int64))

    cond = encode(prompt)
    uncond = encode("") if guidance != 1.0 else None
    batch = manifest["components"]["unet"]["inputs"][0]["shape"][0]

    def unet(x, t, context):
        if x.shape[0] < batch:  # a batch-2 UNet without guidance: [x; x], keep the second half
            return run("unet", np.concatenate([x, x]), t, np.concatenate([context, context]))[1:]
        return run("unet", x, t, context)

    def predict(x, t):
        ts = np.array([t], dtype=np.int64)
        if uncond is None:
            return unet(x, ts, cond)
        if batch == 2:
            out = unet(np.concatenate([x, x]), ts, np.concatenate([uncond, cond]))
            e_u, e_c = out[:1], out[1:]
        else:
            e_u, e_c = unet(x, ts, uncond), unet(x, ts, cond)
        return e_u + np.float32(guidance) * (e_c - e_u)

    abar = alphas_cumprod(cfg)
    ts = timesteps(cfg, steps)
    x = initial_latent(seed, manifest["resolution"])
    for i, t in enumerate(ts):
        p = predict(x, t).astype(np.float32)
        a, s = np.float32(abar[t] ** 0.5), np.float32((1.0 - abar[t]) ** 0.5)
        kind = cfg["prediction_type"]
        if kind == "epsilon":
            eps, x0 = p, (x - s * p) / a
        elif kind == "v_prediction":
            x0, eps = a * x - s * p, s * x + a * p
        else:
            x0 = p
            eps = (x - a * x0) / s if s > 0 else np.zeros_like(x)
        if i == len(ts) - 1:
            x = x0
        else:
            ap = abar[ts[i + 1]]
            x = np.float32(ap ** 0.5) * x0 + np.float32((1.0 - ap) ** 0.5) * eps
    image = run("vae_decoder", x)
    pixels = np.round((np.clip(image, -1, 1) + np.float32(1)) * np.float32(127.5)).astype(np.uint8)
    return pixels[0].transpose(1, 2, 0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("prompt")
    ap.add_argument("seed", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    args = ap.parse_args()
    np.save(args.out, generate(args.bundle, args.prompt, args.seed, args.steps, args.guidance))
    assert not any(m == "mdship" or m.startswith("mdship.") for m in sys.modules), "the consumer imported mdship"
    return 0


if __name__ == "__main__":
    sys.exit(main())
