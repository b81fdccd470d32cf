#!/usr/bin/env python
"""Train md-shapes: a scaled-down MobileDiffusion on procedurally rendered shapes, on 2 CPU cores.

Random weights cannot tell a good quantization from a bad one, so mdship ships a small checkpoint it trained
itself, with the real MobileDiffusion topology (CLIP text encoder, UViT UNet, 8-channel VAE with lite
decoder), whose images an analytic detector can judge (mdship.shapes.detector).

Stages (deterministic for a seed; step counts, not wall time, decide the result):
  1. render a fixed training set of 64 px images + captions (mdship.shapes.data);
  2. train the VAE (encoder + lite decoder): L1 + MSE reconstruction, a tiny KL term;
  3. encode the training set once to latents and set the scaling factor to 1/std (unit-variance latents);
  4. train the text encoder and UNet together: v-prediction, cosine schedule, 10% caption dropout (for CFG),
     EMA of the weights;
  5. save the checkpoint (safetensors), evaluate prompt adherence on calibration/shapes-eval.txt, save a grid.

    python tools/train_shapes.py --out mdship/builtin/shapes             # ~full run, see --help for budgets
    python tools/train_shapes.py --out /tmp/s --vae-steps 20 --unet-steps 20 --n-images 512   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdship.checkpoint import Checkpoint  # noqa: E402
from mdship.models.text_encoder import CLIP_L_TEXT_CONFIG, TextEncoder  # noqa: E402
from mdship.models.unet import MobileDiffusionUNet, UNetConfig  # noqa: E402
from mdship.models.vae import AutoencoderKL, VAEConfig  # noqa: E402
from mdship.schedulers import SchedulerConfig, add_noise, training_target  # noqa: E402
from mdship.shapes import data as shapes  # noqa: E402
from mdship.tokenizer import load_tokenizer, tokenize, train_clip_tokenizer  # noqa: E402

RESOLUTION = 64
MAX_TOKENS = 24  # the longest caption is 13 tokens with bos/eos


def model_configs(vocab_size: int, tokenizer) -> tuple[dict, UNetConfig, VAEConfig, SchedulerConfig]:
    """md-shapes: the paper's topology at toy width. 8x8x8 latents at 64 px -> UNet levels 8, 4, 2."""
    text = {**CLIP_L_TEXT_CONFIG, "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 512,
            "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": MAX_TOKENS,
            "projection_dim": 128, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    unet = UNetConfig(block_channels=[64, 128, 128], mid_transformer_depth=2, attention_head_dim=32,
                      cross_attention_dim=128, norm_groups=16, sample_size=RESOLUTION // 8)
    vae = VAEConfig(encoder_channels=[16, 32, 64, 64], decoder_channels=[16, 32, 64, 64], norm_groups=8,
                    encoder_resnets=1, decoder_resnets=1, sample_size=RESOLUTION)
    sched = SchedulerConfig(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                            default_sampler="ddim", default_steps=8, default_guidance=2.0)
    return text, unet, vae, sched


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(vae: AutoencoderKL, images: torch.Tensor, steps: int, batch: int, gen: torch.Generator, log) -> dict:
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    t0, recent = time.time(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3)
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x = images[idx]
        mean, logvar = vae.encoder(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        recon = vae.decoder(z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step:5d}/{steps} loss {np.mean(recent[-100:]):.4f} kl {kl.item():.3f} "
                f"({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        x = images[:256]
        recon = vae.decoder(vae.encoder(x)[0]).clamp(-1, 1)
        mse = F.mse_loss((recon + 1) / 2, (x + 1) / 2).item()
    return {"vae_final_loss": float(np.mean(recent[-100:])), "vae_recon_psnr_db": 10 * math.log10(1 / mse),
            "vae_seconds": time.time() - t0}


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encoder(images[i:i + 256])[0] for i in range(0, images.shape[0], 256)])


def train_unet(text_encoder, unet, sched, latents, ids, empty_ids, steps, batch, gen, log) -> tuple[dict, dict]:
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)
    ema = {"text_encoder": copy.deepcopy(text_encoder).eval(), "unet": copy.deepcopy(unet).eval()}
    ema_decay = 0.999
    text_encoder.train()
    unet.train()
    T = sched.num_train_timesteps
    t0, recent = time.time(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 5e-4, warmup=200)
        idx = torch.randint(0, latents.shape[0], (batch,), generator=gen)
        x0 = latents[idx]
        tok = ids[idx].clone()
        drop = torch.rand(batch, generator=gen) < 0.1  # caption dropout: the model also learns p(x) for CFG
        tok[drop] = empty_ids
        t = torch.randint(0, T, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        pred = unet(add_noise(sched, x0, noise, t), t, text_encoder(tok))
        loss = F.mse_loss(pred, training_target(sched, x0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, live in (("text_encoder", text_encoder), ("unet", unet)):
                for pe, pl in zip(ema[name].parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - decay)
        recent.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step:5d}/{steps} loss {np.mean(recent[-100:]):.4f} ({time.time() - t0:.0f}s)")
    return ema, {"unet_final_loss": float(np.mean(recent[-200:])), "unet_seconds": time.time() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=24000)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--unet-steps", type=int, default=4000)
    ap.add_argument("--unet-batch", type=int, default=64)
    # One thread: on a shared 2-core machine, 2 OpenMP threads stall on barriers whenever the other core is busy.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work-dir", default=None,
                    help="keep the trained VAE here and reuse it on a re-run (same seed, same result)")
    ap.add_argument("--eval-prompts", default=str(ROOT / "calibration" / "shapes-eval.txt"))
    ap.add_argument("--report-dir", default=str(ROOT / "docs" / "md-shapes"),
                    help="where train.json (losses, timings, adherence) and grid.png go")
    ap.add_argument("--log", default=None, help="also append log lines to this file")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    log_file = open(args.log, "a") if args.log else None

    def log(msg):
        print(msg, flush=True)
        if log_file:
            log_file.write(msg + "\n")
            log_file.flush()

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        train_clip_tokenizer(shapes.vocabulary(), tmp, model_max_length=MAX_TOKENS)
        tokenizer = load_tokenizer(tmp)
    text_cfg, unet_cfg, vae_cfg, sched = model_configs(len(tokenizer), tokenizer)

    log(f"rendering {args.n_images} images")
    np_images, captions = shapes.dataset(args.n_images, seed=args.seed, size_px=RESOLUTION)
    images = to_tensor(np_images)

    vae = AutoencoderKL(vae_cfg)
    vae_file = Path(args.work_dir) / f"vae-seed{args.seed}-steps{args.vae_steps}.safetensors" if args.work_dir else None
    if vae_file is not None and vae_file.exists():
        from safetensors.torch import load_file
        vae.load_state_dict(load_file(str(vae_file)))
        vae.eval()
        stats = json.loads(vae_file.with_suffix(".json").read_text())
        gen = torch.Generator().manual_seed(args.seed + 1)  # the UNet stage's own stream, as after training
        log(f"reusing the trained VAE in {vae_file}")
    else:
        stats = train_vae(vae, images, args.vae_steps, args.vae_batch, gen, log)
        gen = torch.Generator().manual_seed(args.seed + 1)
        if vae_file is not None:
            from safetensors.torch import save_file
            vae_file.parent.mkdir(parents=True, exist_ok=True)
            save_file(vae.state_dict(), str(vae_file))
            vae_file.with_suffix(".json").write_text(json.dumps(stats))
    latents = encode_all(vae, images)
    vae.config.scaling_factor = float(1.0 / latents.std())
    latents = latents * vae.config.scaling_factor
    log(f"vae recon PSNR {stats['vae_recon_psnr_db']:.2f} dB, latent scaling {vae.config.scaling_factor:.4f}")

    ids = tokenize(tokenizer, captions, MAX_TOKENS)
    empty_ids = tokenize(tokenizer, [""], MAX_TOKENS)[0]
    text_encoder, unet = TextEncoder(text_cfg), MobileDiffusionUNet(unet_cfg)
    ema, unet_stats = train_unet(text_encoder, unet, sched, latents, ids, empty_ids, args.unet_steps,
                                 args.unet_batch, gen, log)
    stats.update(unet_stats)

    ckpt = Checkpoint.from_modules(ema["text_encoder"], tokenizer, ema["unet"], vae, sched, RESOLUTION)
    ckpt.save_pretrained(args.out)
    stats["train_seconds"] = time.time() - started
    stats["parameters"] = {n: sum(p.numel() for p in m.parameters()) for n, m in ckpt.modules().items()}

    # Prompt adherence of the saved checkpoint with its default sampler.
    from mdship.adherence import evaluate_checkpoint
    prompts = [p for p in Path(args.eval_prompts).read_text().splitlines() if p.strip()]
    result, grid = evaluate_checkpoint(Checkpoint.from_pretrained(args.out), prompts, seed=args.seed)
    stats["adherence"] = result
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    grid_path = report_dir / "grid.png"
    grid.save(grid_path)
    log(json.dumps(stats, indent=2))
    log(f"grid: {grid_path}")
    (report_dir / "train.json").write_text(json.dumps(stats, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
