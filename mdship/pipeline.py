"""Text -> image: tokenize -> text encoder -> sampler(UNet) -> VAE decoder -> PNG.

`Generator` is written against three callables (text encoder, UNet, decoder), so the same code drives the
eager fp32 reference (the ground truth every later stage is compared with), the ExecuTorch host runner, the
simulated twins of programs that cannot run here, and calibration (which wraps the callables to record their
inputs). `program_generator` is the one adapter from component programs with static shapes (a UNet of a fixed
batch) to a Generator.

Determinism: the initial latent is `initial_latent(seed)`, SplitMix64 + Box-Muller in double precision (not
torch.randn), so one seed gives one image on every runner, the C++ one included (runner/src/sampler.cpp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from mdship import schedulers
from mdship.errors import UserError
from mdship.schedulers import SchedulerConfig

LATENT_CHANNELS = 8
VAE_SCALE = 8


@dataclass
class SamplerSettings:
    sampler: str = "ddim"
    steps: int = 8
    guidance: float = 1.0
    batched_guidance: bool = True

    @classmethod
    def resolve(cls, scheduler: SchedulerConfig, sampler=None, steps=None, guidance=None,
                batched_guidance: bool = True) -> "SamplerSettings":
        """Fill what the user left out from the checkpoint's scheduler defaults, and check the rest."""
        s = cls(sampler or scheduler.default_sampler, steps or scheduler.default_steps,
                scheduler.default_guidance if guidance is None else float(guidance), batched_guidance)
        if s.sampler not in schedulers.SAMPLERS:
            raise UserError(f"sampler '{s.sampler}' is unknown: expected one of {', '.join(schedulers.SAMPLERS)}")
        if s.sampler == "one_step":
            s.steps = 1
        if not 1 <= s.steps <= scheduler.num_train_timesteps:
            raise UserError(f"--steps {s.steps} is out of range: expected 1..{scheduler.num_train_timesteps}")
        if s.guidance < 1.0:
            raise UserError(f"--guidance {s.guidance} is below 1.0 (1.0 turns classifier-free guidance off)")
        return s

    @property
    def unet_calls(self) -> int:
        return self.steps * (1 if self.guidance == 1.0 else 2)


_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def initial_latent(seed: int, resolution: int, batch: int = 1) -> torch.Tensor:
    """The starting noise for a seed: the one thing every runner (Python, C++, on-device) must agree on.

    Not torch.randn: its algorithm is torch's own. This is SplitMix64 -> 53-bit uniforms -> Box-Muller in
    double precision with the C library's log/sqrt/cos/sin, then rounded to float32: a few lines in any
    language (runner/src/sampler.cpp has the C++ twin) and bit-identical wherever libm is correctly rounded.
    """
    size = resolution // VAE_SCALE
    count = batch * LATENT_CHANNELS * size * size
    state = int(seed) & _MASK64
    values = []
    while len(values) < count:
        state, a = _splitmix64(state)
        state, b = _splitmix64(state)
        u1 = 1.0 - (a >> 11) * (1.0 / (1 << 53))  # (0, 1]: log is finite
        u2 = (b >> 11) * (1.0 / (1 << 53))
        radius = math.sqrt(-2.0 * math.log(u1))
        values += [radius * math.cos(2.0 * math.pi * u2), radius * math.sin(2.0 * math.pi * u2)]
    return torch.tensor(values[:count], dtype=torch.float64).float().reshape(batch, LATENT_CHANNELS, size, size)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> uint8 [B,H,W,3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write atomically (temp file then rename), so an interrupted run leaves no half PNG."""
    from mdship.atomic import atomic_file

    with atomic_file(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(path)


class Generator:
    """Generates images from prompts with any implementation of the three components."""

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor], text_encoder: Callable, unet: Callable,
                 decoder: Callable, scheduler: SchedulerConfig, resolution: int):
        self.tokenize = tokenize
        self.text_encoder = text_encoder
        self.unet = unet
        self.decoder = decoder
        self.scheduler = scheduler
        self.resolution = resolution

    def encode(self, prompt: str) -> torch.Tensor:
        return self.text_encoder(self.tokenize([prompt]))

    def latents(self, prompt: str, seed: int, settings: SamplerSettings, latent: torch.Tensor | None = None,
                progress: Callable | None = None) -> torch.Tensor:
        context = self.encode(prompt)
        uncond = self.encode("") if settings.guidance != 1.0 else None
        start = initial_latent(seed, self.resolution) if latent is None else latent
        return schedulers.sample(self.scheduler, self.unet, start, context, uncond, settings.steps,
                                 settings.guidance, settings.batched_guidance, progress)

    def __call__(self, prompt: str, seed: int, settings: SamplerSettings, latent: torch.Tensor | None = None,
                 progress: Callable | None = None) -> np.ndarray:
        """One image, uint8 [H,W,3]."""
        return to_uint8(self.decoder(self.latents(prompt, seed, settings, latent, progress)))[0]


def eager_generator(ckpt) -> Generator:
    """The fp32 eager PyTorch reference pipeline for a loaded `Checkpoint`."""
    from mdship.tokenizer import tokenize

    max_len = ckpt.text_encoder.max_length

    @torch.no_grad()
    def text_encoder(ids):
        return ckpt.text_encoder(ids)

    @torch.no_grad()
    def unet(latent, t, context):
        return ckpt.unet(latent, t, context)

    @torch.no_grad()
    def decoder(latent):
        return ckpt.vae.decode(latent)

    return Generator(lambda prompts: tokenize(ckpt.tokenizer, prompts, max_len), text_encoder, unet, decoder,
                     ckpt.scheduler, ckpt.resolution)


def fixed_batch_unet(call: Callable, unet_batch: int) -> Callable:
    """Adapt the sampler's UNet calls (batch 1, or 2 with guidance) to a program of a fixed batch size."""

    def unet(sample, timestep, context):
        if sample.shape[0] < unet_batch:  # no guidance on a batch-2 program: run [x; x], keep one half
            return call(sample.repeat(unet_batch, 1, 1, 1), timestep,
                        context.repeat(unet_batch, 1, 1))[-sample.shape[0]:]
        if sample.shape[0] > unet_batch:  # guidance on a batch-1 program: one call per half
            return torch.cat([call(sample[i:i + 1], timestep, context[i:i + 1]) for i in range(sample.shape[0])])
        return call(sample, timestep, context)

    return unet


def program_generator(components: dict[str, Callable], tokenize: Callable, scheduler: SchedulerConfig,
                      resolution: int, unet_batch: int) -> Generator:
    """A Generator over component programs with static shapes: the methods of .pte programs on the ExecuTorch
    runtime, or the eager twins that simulate them (`mdship.simulate`). ``unet_batch`` is the batch the UNet
    program was exported with (2 for guidance as one call, 1 for two calls)."""

    def no_grad(call):
        @torch.no_grad()
        def run(*inputs):
            return call(*inputs)

        return run

    return Generator(tokenize, no_grad(components["text_encoder"]),
                     fixed_batch_unet(no_grad(components["unet"]), unet_batch),
                     no_grad(components["vae_decoder"]), scheduler, resolution)
