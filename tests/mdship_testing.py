"""Helpers shared by test modules (fixtures live in conftest.py; plain functions and constants live here)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: overrides that put any recipe on the tiny preset with the shapes prompts (fast, and meaningful prompts)
TINY_OVERRIDES = ["checkpoint=preset:tiny", "resolution=null", "calibration.prompts=calibration/shapes-calib.txt",
                  "calibration.eval_prompts=calibration/shapes-eval.txt", "calibration.num_prompts=2"]


def build_recipe(recipe_path, overrides, cache_dir):
    """Build every target of a recipe (run from the project root); returns the TargetResults."""
    from mdship.build import Builder
    from mdship.cache import Cache
    from mdship.recipe import load_recipe

    os.chdir(ROOT)
    recipe = load_recipe(ROOT / recipe_path, list(overrides))
    builder = Builder(recipe, cache=Cache(cache_dir), progress=False)
    return [builder.target(t) for t in recipe.targets]
