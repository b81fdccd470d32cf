"""Prompt adherence: generate one image per prompt and judge it with the analytic shapes detector.

Works on anything that can generate (the eager checkpoint or an ExecuTorch bundle): both are a
`pipeline.Generator`. Each prompt i uses seed `seed + i`, so two targets see the same initial latents.

`judge_for(checkpoint)` says which checkpoints have a judge (`JUDGES`: data, one row per judge) and how often the
judge itself is wrong on generated images, so a report can tell a real difference from the judge's own noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


@dataclass(frozen=True)
class Judge:
    """A checkpoint's prompt-adherence judge: `score(images, prompts)` -> {"accuracy", "n", "per_attribute",
    "exact_match"}, `check(prompt)` raises ValueError for a prompt it cannot judge, and `error_rate` is its own
    measured error per (image, attribute) check on generated images (`error_source` says how it was measured)."""

    name: str
    score: Callable
    check: Callable[[str], object]
    error_rate: float
    error_source: str

    def refusal(self, prompts: list[str]) -> str | None:
        """Why this judge cannot score `prompts` (the first prompt it cannot read), or None."""
        for i, prompt in enumerate(prompts, 1):
            try:
                self.check(prompt)
            except ValueError as e:
                return f"prompt {i} is not something the {self.name} judge reads ({e})"
        return None


def _shapes_judge() -> Judge:
    from mdship.shapes import detector
    from mdship.shapes.data import parse_caption

    return Judge("md-shapes detector", detector.adherence, parse_caption, detector.ERROR_RATE["generated"],
                 "mdship/shapes/detector.py ERROR_RATE: 10 of 640 checks misread on generated images (large stars "
                 "read as small squares); 0 of 3,000 on rendered ground truth")


#: checkpoint reference -> its judge (built on first use)
JUDGES: dict[str, Callable[[], Judge]] = {"builtin:shapes": _shapes_judge}


def judge_for(checkpoint_ref: str) -> Judge | None:
    factory = JUDGES.get(str(checkpoint_ref))
    return factory() if factory else None
