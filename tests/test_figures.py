"""mdship.figures: the plots and the image grid are PNGs of the expected size; an infinite PSNR is drawn, not lost."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from mdship import figures


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_scatter_with_front_gate_simulated_and_identical_points():
    points = [figures.Point("fp32", 20.0, math.inf, True, True), figures.Point("w8a8", 6.0, 34.0, True, True),
              figures.Point("vk", 5.0, 40.0, False, True), figures.Point("bad", 4.0, 20.0, True, False)]
    image = _png(figures.scatter(points, "MB", "t", front=["bad", "w8a8", "fp32"], gate=30.0))
    assert image.format == "PNG" and image.size == (580, 380)


def test_stacked_sizes_has_a_bar_per_bundle():
    image = _png(figures.stacked_sizes(["a", "b", "c"], ["text enc", "UNet", "decoder"],
                                       [[1, 2, 3], [0.5, 1, 1], [0.2, 0.3, 0.4]]))
    assert image.size[0] == 580


def test_grid_layout_and_difference_rows():
    ref = np.zeros((64, 64, 3), np.uint8)
    other = ref.copy()
    other[10, 10] = 3
    rows = [("#0 seed 0: a prompt", [ref, ref, other]), ("#1 seed 1: another", [ref, other, ref])]
    plain = _png(figures.image_grid(["fp32", "a", "b"], rows, diff_gain=0, side=64))
    with_diff = _png(figures.image_grid(["fp32", "a", "b"], rows, diff_gain=8, side=64))
    assert plain.size[0] == with_diff.size[0] == 6 + 3 * 70
    assert with_diff.size[1] == plain.size[1] + 2 * 70
    assert figures.difference(ref, other, 8)[10, 10].tolist() == [24, 24, 24]
    assert figures.difference(ref, other, 100)[10, 10].tolist() == [255, 255, 255]
