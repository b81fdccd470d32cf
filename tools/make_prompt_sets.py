#!/usr/bin/env python3
"""Write the md-shapes prompt sets ``calibration/shapes-calib.txt`` and ``shapes-eval.txt``.

Why a script: the prompt sets decide what quantization is calibrated on and what adherence is
measured on, so they must be reproducible byte for byte and reviewable as a diff. Both sets are
drawn from :func:`mdship.shapes.data.all_scenes` with a fixed seed, are disjoint (calibrating on
the evaluation prompts would flatter the quantized model), and are *balanced*: every shape,
size, colour (as foreground and as background) and position occurs about equally often in each
set, so a per-attribute adherence number is not dominated by one value.

Usage::

    python tools/make_prompt_sets.py            # (re)write both files
    python tools/make_prompt_sets.py --check    # exit 1 if the files are not what this writes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow running from a checkout without installing
    sys.path.insert(0, str(ROOT))

from mdship.shapes.data import (  # noqa: E402
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    parse_caption,
)

SEED = 20240611
N_CALIB = 128
N_EVAL = 128
CALIB_PATH = ROOT / "calibration" / "shapes-calib.txt"
EVAL_PATH = ROOT / "calibration" / "shapes-eval.txt"


def _balanced(values: tuple[str, ...], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` values cycling through shuffled copies of ``values`` (counts differ by <= 1)."""
    out: list[str] = []
    while len(out) < n:
        block = list(values)
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


def _balanced_set(n: int, rng: np.random.Generator, taken: set[Scene]) -> list[Scene]:
    """``n`` distinct scenes not in ``taken`` with near-uniform marginals."""
    shapes = _balanced(SHAPES, n, rng)
    sizes = _balanced(SIZES, n, rng)
    positions = _balanced(POSITIONS, n, rng)
    colors = _balanced(COLORS, n, rng)
    backgrounds = _balanced(COLORS, n, rng)
    # Make foreground != background by swapping backgrounds between rows (keeps the counts).
    for i in range(n):
        if backgrounds[i] == colors[i]:
            for j in range(n):
                if (
                    j != i
                    and backgrounds[j] != colors[i]
                    and backgrounds[i] != colors[j]
                ):
                    backgrounds[i], backgrounds[j] = backgrounds[j], backgrounds[i]
                    break
    scenes: list[Scene] = []
    for row in zip(shapes, colors, backgrounds, sizes, positions):
        scene = Scene(*row)
        # A duplicate (rare) is replaced by re-drawing its position; keeps other marginals.
        k = 0
        while scene in taken:
            pos = POSITIONS[(POSITIONS.index(scene.position) + 1 + k) % len(POSITIONS)]
            scene = Scene(scene.shape, scene.color, scene.background, scene.size, pos)
            k += 1
            if k > len(POSITIONS):
                raise RuntimeError("could not find an unused scene; lower the set sizes")
        taken.add(scene)
        scenes.append(scene)
    return scenes


def build_prompt_sets(
    n_calib: int = N_CALIB, n_eval: int = N_EVAL, seed: int = SEED
) -> tuple[list[str], list[str]]:
    """The calibration and evaluation prompts (deterministic for ``seed``; disjoint)."""
    rng = np.random.default_rng(seed)
    taken: set[Scene] = set()
    calib = [caption(s) for s in _balanced_set(n_calib, rng, taken)]
    evals = [caption(s) for s in _balanced_set(n_eval, rng, taken)]
    assert not set(calib) & set(evals)
    for p in calib + evals:
        parse_caption(p)
    return calib, evals


def _text(prompts: list[str]) -> str:
    return "".join(p + "\n" for p in prompts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify the files instead of writing")
    args = ap.parse_args(argv)
    calib, evals = build_prompt_sets()
    targets = ((CALIB_PATH, _text(calib)), (EVAL_PATH, _text(evals)))
    if args.check:
        stale = [str(p) for p, t in targets if not p.exists() or p.read_text() != t]
        if stale:
            print("out of date (run tools/make_prompt_sets.py): " + ", ".join(stale))
            return 1
        print("prompt sets up to date")
        return 0
    for path, text in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)} ({text.count(chr(10))} prompts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
