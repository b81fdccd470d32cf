"""Prompt adherence: generate one image per prompt and judge it with the analytic shapes detector.

Works on anything that can generate (the eager checkpoint or an ExecuTorch bundle): both are a
`pipeline.Generator`. Each prompt i uses seed `seed + i`, so two targets see the same initial latents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mdship.errors import UserError
from mdship.pipeline import Generator, SamplerSettings


def read_prompts(path: str | Path) -> list[str]:
    """Prompt file: one prompt per line, blank lines ignored. Missing, unreadable or empty files are user errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: prompt file not found (expected a text file with one prompt per line)")
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path}: cannot read prompt file ({e})") from None
    if not prompts:
        raise UserError(f"{path}: prompt file is empty (expected one prompt per line)")
    return prompts


def generate_all(generator: Generator, prompts: list[str], seed: int, settings: SamplerSettings,
                 desc: str = "generating") -> list[np.ndarray]:
    return [generator(p, seed + i, settings) for i, p in enumerate(tqdm(prompts, desc=desc, leave=False))]


def image_grid(images: list[np.ndarray], columns: int = 8, scale: int = 2) -> Image.Image:
    h, w = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w * scale, rows * h * scale), (255, 255, 255))
    for i, img in enumerate(images):
        tile = Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, ((i % columns) * w * scale, (i // columns) * h * scale))
    return grid


def evaluate(generator: Generator, prompts: list[str], seed: int, settings: SamplerSettings) -> tuple[dict, Image.Image]:
    from mdship.shapes.detector import adherence

    images = generate_all(generator, prompts, seed, settings, desc="adherence")
    result = adherence(images, prompts)
    result["sampler"] = {"kind": settings.sampler, "steps": settings.steps, "guidance": settings.guidance}
    result["seed"] = seed
    return result, image_grid(images[:32])


def evaluate_checkpoint(ckpt, prompts: list[str], seed: int = 0, settings: SamplerSettings | None = None):
    from mdship.pipeline import eager_generator

    settings = settings or SamplerSettings.resolve(ckpt.scheduler)
    return evaluate(eager_generator(ckpt), prompts, seed, settings)
