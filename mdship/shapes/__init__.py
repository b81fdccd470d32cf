"""md-shapes: a procedurally generated text-to-image world with measurable prompt adherence.

:mod:`mdship.shapes.data` renders scenes (one coloured shape on a plain background) and their
captions; :mod:`mdship.shapes.detector` recovers the scene from an image analytically, so the
adherence of a generated image to its prompt can be scored without a learned judge.
"""

from mdship.shapes.data import (
    ATTRIBUTES,
    COLORS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    all_scenes,
    caption,
    dataset,
    parse_caption,
    render,
    sample_scene,
    tokenize,
    vocabulary,
)

__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "all_scenes",
    "caption",
    "dataset",
    "parse_caption",
    "render",
    "sample_scene",
    "tokenize",
    "vocabulary",
]
