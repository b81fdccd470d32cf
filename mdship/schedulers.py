"""Noise schedules and the sampler. A scheduler config belongs to the checkpoint (scheduler/scheduler_config.json).

The sampler is deterministic DDIM (eta = 0) over "trailing" timesteps, ending on the predicted x0; `one_step`
(the paper's 1-step DiffusionGAN / UFOGen mode) is the same sampler with one step: a single evaluation at
t = T-1 whose predicted x0 is the result. It is written against plain callables
(`unet(latent, timestep, context) -> prediction`), so the eager reference pipeline, the ExecuTorch host runner and
calibration all step through the same code.

Why not diffusers' DDIMScheduler (the reference: `timestep_spacing="trailing"`, `clip_sample=False`,
`set_alpha_to_one=False`, eta 0 gives the same timesteps and updates): mdship's runners must agree to the bit,
and runner/src/sampler.cpp mirrors this file operation by operation in float64 / float32. A dependency on
diffusers at run time would add nothing the C++ twin could follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
SAMPLERS = ("ddim", "one_step")


@dataclass
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"
    default_sampler: str = "ddim"
    default_steps: int = 8
    default_guidance: float = 1.0
    # Explicit timesteps for the default step count (distilled checkpoints fix them); empty = "trailing" spacing.
    default_timesteps: list[int] = field(default_factory=list)

    def validate(self) -> list[str]:
        """Problems with this config, as messages (empty when valid)."""
        problems = []
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type '{self.prediction_type}' is not one of {', '.join(PREDICTION_TYPES)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            problems.append(f"beta_schedule '{self.beta_schedule}' is not one of {', '.join(BETA_SCHEDULES)}")
        if self.default_sampler not in SAMPLERS:
            problems.append(f"default_sampler '{self.default_sampler}' is not one of {', '.join(SAMPLERS)}")
        if not 1 <= self.default_steps <= self.num_train_timesteps:
            problems.append(f"default_steps {self.default_steps} is not in 1..{self.num_train_timesteps}")
        if self.default_guidance < 1.0:
            problems.append(f"default_guidance {self.default_guidance} is below 1.0")
        if any(not 0 <= t < self.num_train_timesteps for t in self.default_timesteps):
            problems.append(f"default_timesteps must lie in 0..{self.num_train_timesteps - 1}")
        return problems

    def to_diffusers(self) -> dict:
        """This config as diffusers' DDIMScheduler config that reproduces this module's sampler: trailing timesteps,
        eta 0 (passed to step), no clipping or thresholding, and set_alpha_to_one so that the last step returns x0.
        (diffusers' previous timestep is t - T // steps: the same as trailing spacing whenever steps divides T.)
        mdship's own fields ride along; diffusers ignores them."""
        return {
            "_class_name": "DDIMScheduler",
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": self.prediction_type,
            "timestep_spacing": "trailing",
            "clip_sample": False,
            "set_alpha_to_one": True,
            "steps_offset": 0,
            "thresholding": False,
            "rescale_betas_zero_snr": False,
            **{f.name: getattr(self, f.name) for f in fields(self)},
        }

    @classmethod
    def from_dict(cls, data: dict) -> SchedulerConfig:
        """The mdship fields of a scheduler.json (which also carries diffusers' keys and the sampler settings)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def alphas_cumprod(self) -> torch.Tensor:
        """Cumulative product of (1 - beta_t), float64 for exactness."""
        T = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float64) ** 2
        elif self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        else:  # squaredcos_cap_v2 (Nichol & Dhariwal): reaches pure noise at t = T
            def alpha_bar(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                                 dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)

    def timesteps(self, steps: int) -> list[int]:
        """Sampling timesteps, highest first. 'Trailing' spacing so that the first step is always t = T-1."""
        if self.default_timesteps and steps == len(self.default_timesteps):
            return list(self.default_timesteps)
        T = self.num_train_timesteps
        return [int(round(T - i * T / steps)) - 1 for i in range(steps)]


def predicted_clean_and_noise(cfg: SchedulerConfig, alpha_bar: float, latent: torch.Tensor, pred: torch.Tensor):
    """Turn a model prediction into (x0, eps) whatever the checkpoint's prediction type."""
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    if cfg.prediction_type == "epsilon":
        eps = pred
        x0 = (latent - s * eps) / a
    elif cfg.prediction_type == "v_prediction":
        x0 = a * latent - s * pred
        eps = s * latent + a * pred
    else:  # "sample"
        x0 = pred
        eps = (latent - a * x0) / s if s > 0 else torch.zeros_like(latent)
    return x0, eps


UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided_prediction(unet: UNetFn, latent, t: int, context, uncond_context, guidance: float, batched: bool = True):
    """One (optionally classifier-free guided) UNet evaluation at integer timestep t.

    Guidance runs either as one batch-2 call or as two batch-1 calls (targets like Vulkan delegate conv only at
    batch 1); both give the same result up to floating point.
    """
    if guidance == 1.0 or uncond_context is None:
        return unet(latent, torch.tensor([t], dtype=torch.int64), context)
    if batched:
        both = unet(torch.cat([latent, latent]), torch.tensor([t], dtype=torch.int64),
                    torch.cat([uncond_context, context]))
        uncond, cond = both.chunk(2)
    else:
        uncond = unet(latent, torch.tensor([t], dtype=torch.int64), uncond_context)
        cond = unet(latent, torch.tensor([t], dtype=torch.int64), context)
    return uncond + guidance * (cond - uncond)


def sample(cfg: SchedulerConfig, unet: UNetFn, latent: torch.Tensor, context, uncond_context=None,
           steps: int = 8, guidance: float = 1.0, batched_guidance: bool = True,
           progress: Callable | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from the initial noise `latent` over `steps` trailing timesteps, ending on the
    predicted x0 (with steps = 1: one evaluation at t = T-1, the paper's 1-step mode)."""
    alphas = cfg.alphas_cumprod()
    timesteps = cfg.timesteps(steps)
    x = latent.float()
    for i, t in enumerate(timesteps):
        pred = guided_prediction(unet, x, t, context, uncond_context, guidance, batched_guidance).float()
        x0, eps = predicted_clean_and_noise(cfg, float(alphas[t]), x, pred)
        if i == len(timesteps) - 1:
            x = x0
        else:
            a_prev = float(alphas[timesteps[i + 1]])
            x = a_prev**0.5 * x0 + (1.0 - a_prev) ** 0.5 * eps
        if progress is not None:
            progress()
    return x


def add_noise(cfg: SchedulerConfig, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x_0), for training."""
    a = cfg.alphas_cumprod().float()[t].view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def training_target(cfg: SchedulerConfig, x0, noise, t):
    """What the UNet should predict for the checkpoint's prediction type."""
    if cfg.prediction_type == "epsilon":
        return noise
    if cfg.prediction_type == "sample":
        return x0
    a = cfg.alphas_cumprod().float()[t].view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * noise - (1 - a).sqrt() * x0
