"""Input validation shared by the CLI and the recipe schema: the bounds of every number a user gives mdship and the
checks of every path it writes, in one place. `mdship run --steps 0` and a recipe's `sampler.steps: 0` are refused
for the same reason; an output under a read-only directory is refused before any work starts, as one line.

Each check raises `UserError` (exit code 2) naming the option or key, what was found and what is expected.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from mdship.errors import UserError

#: sampler steps: 1 .. the largest num_train_timesteps mdship's schedules use
MAX_STEPS = 1000
#: classifier-free guidance scale: 1 turns guidance off; beyond ~30 images saturate, beyond 100 nothing is meaningful
GUIDANCE_RANGE = (1.0, 100.0)
#: seeds are 64-bit: negative ones wrap modulo 2^64 (as in the C++ runner)
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)
#: quantization group sizes: at least 1, at most a (large) layer width
GROUP_SIZE_RANGE = (1, 8192)


def check_guidance(value: float, name: str = "--guidance") -> float:
    lo, hi = GUIDANCE_RANGE
    if not math.isfinite(value) or not lo <= value <= hi:
        raise UserError(f"{name} {value}: expected a finite number in {lo:g}..{hi:g} (1 turns guidance off)")
    return float(value)


def check_steps(value: int, name: str = "--steps", limit: int = MAX_STEPS) -> int:
    if isinstance(value, bool) or not 1 <= value <= limit:
        raise UserError(f"{name} {value}: expected an integer in 1..{limit}")
    return int(value)


def check_seed(value: int, name: str = "--seed") -> int:
    lo, hi = SEED_RANGE
    if not lo <= value <= hi:
        raise UserError(f"{name} {value}: expected a 64-bit integer ({lo}..{hi})")
    return int(value)


def check_prompt(text: str, name: str = "--prompt") -> str:
    """A prompt must be text: valid UTF-8 (a shell can pass other bytes) and no NUL characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{name}: byte {e.start} is not valid UTF-8; expected UTF-8 text") from None
    if "\x00" in text:
        raise UserError(f"{name}: contains a NUL character; expected plain text")
    return text


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_file(path: str | Path, name: str = "--out") -> Path:
    """A file mdship will write (atomically, beside its final place): not a directory, and its directory can be
    created and written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{name} {path}: is a directory; expected a file path")
    _check_writable_parent(path, name)
    return path


def check_output_dir(path: str | Path, name: str = "output") -> Path:
    """A directory mdship will replace atomically: not an existing file, and its parent can be created and
    written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{name} {path}: is an existing file; expected a directory path (or none yet)")
    _check_writable_parent(path, name)
    return path


def _check_writable_parent(path: Path, name: str) -> None:
    existing = _nearest_existing(path.parent if path.parent != path else path)
    if not existing.is_dir():
        raise UserError(f"{name} {path}: {existing} is a file, not a directory; expected a path under a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{name} {path}: {existing} is not writable; expected a writable directory")


def check_image_side(value: int, name: str = "--width") -> int:
    if not 8 <= value <= 4096 or value % 8:
        raise UserError(f"{name} {value}: expected a multiple of 8 pixels in 8..4096")
    return int(value)


def square_size(width: int | None, height: int | None) -> int | None:
    """The one image side of --width / --height (MobileDiffusion bundles serve square sizes); None: the default."""
    if width is not None and height is not None and width != height:
        raise UserError(f"--width {width} --height {height}: bundles serve square images; expected equal sizes")
    return width if width is not None else height
