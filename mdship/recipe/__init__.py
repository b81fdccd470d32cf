"""Recipes: the YAML files that say how to turn a checkpoint into ExecuTorch bundles.

    schema.py   the pydantic models (what a recipe may say) and the capability rules
    loader.py   YAML with positions, `extends:`, `key=value` overrides, one-line errors
"""

from mdship.recipe.loader import MAX_EXTENDS_DEPTH, list_recipes, load_recipe
from mdship.recipe.schema import (COMPONENT_NAMES, DEFAULT_KEEP, DEFAULT_PSNR_DB, ComponentSpec, CoreMLOptions,
                                  LayerSpec, Recipe, Target, VulkanOptions)

__all__ = ["COMPONENT_NAMES", "DEFAULT_KEEP", "DEFAULT_PSNR_DB", "MAX_EXTENDS_DEPTH", "ComponentSpec",
           "CoreMLOptions", "LayerSpec", "Recipe", "Target", "VulkanOptions", "list_recipes", "load_recipe"]
