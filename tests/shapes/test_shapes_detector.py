"""Tests for the analytic md-shapes detector (mdship.shapes.detector).

The accuracy gates are the contract that makes adherence numbers meaningful: if the detector
cannot read ground-truth renders (crisp, or blurred and noisy like a model's output), a drop
in measured adherence could not be attributed to the model.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import filters

from mdship.shapes.data import (
    ATTRIBUTES,
    PALETTE,
    Scene,
    caption,
    render,
    sample_scene,
)
from mdship.shapes.detector import adherence, detect, measure_image, score

N_SCENES = 300


def _degrade(img: np.ndarray, rng: np.random.Generator, sigma: float = 1.0, noise: float = 10.0):
    """Gaussian blur (sigma px) + additive Gaussian noise (std in 0-255 units)."""
    f = filters.gaussian(img.astype(np.float32), sigma=sigma, channel_axis=-1, preserve_range=True)
    f = f + rng.normal(0.0, noise, f.shape)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _renders(seed: int, n: int = N_SCENES, size_px: int = 64, degrade: bool = False):
    rng = np.random.default_rng(seed)
    images, prompts = [], []
    for _ in range(n):
        s = sample_scene(rng)
        img = render(s, size_px=size_px, rng=rng)
        if degrade:
            img = _degrade(img, rng)
        images.append(img)
        prompts.append(caption(s))
    return np.stack(images), prompts


def test_accuracy_on_clean_renders():
    images, prompts = _renders(seed=100)
    res = adherence(images, prompts)
    assert res["n"] == N_SCENES
    assert res["accuracy"] >= 0.98, res
    assert min(res["per_attribute"].values()) >= 0.95, res


def test_accuracy_on_blurred_noisy_renders():
    images, prompts = _renders(seed=200, degrade=True)
    res = adherence(images, prompts)
    assert res["accuracy"] >= 0.98, res
    assert min(res["per_attribute"].values()) >= 0.95, res


@pytest.mark.parametrize("size_px", [32, 128])
def test_accuracy_other_resolutions(size_px):
    images, prompts = _renders(seed=300, n=60, size_px=size_px)
    assert adherence(images, prompts)["accuracy"] >= 0.97


def test_nominal_scene_every_shape_size_position():
    """Every (shape, size, position) read back exactly from its canonical render."""
    from itertools import product

    from mdship.shapes.data import POSITIONS, SHAPES, SIZES

    for shape, size, position in product(SHAPES, SIZES, POSITIONS):
        s = Scene(shape, "yellow", "purple", size, position)
        assert detect(render(s)) == s.as_dict(), caption(s)


def test_every_color_pair():
    from mdship.shapes.data import COLORS

    rng = np.random.default_rng(5)
    for fg in COLORS:
        for bg in COLORS:
            if fg == bg:
                continue
            s = Scene("star", fg, bg, "small", "center")
            got = detect(_degrade(render(s, rng=rng), rng))
            assert (got["color"], got["background"]) == (fg, bg), caption(s)


def test_robust_to_global_color_shift():
    rng = np.random.default_rng(9)
    for _ in range(40):
        s = sample_scene(rng)
        img = render(s, rng=rng).astype(float) * 0.9 + rng.uniform(-15, 25, 3)
        img = np.clip(img, 0, 255).astype(np.uint8)
        assert detect(img) == s.as_dict(), caption(s)


def test_score_and_adherence_on_mismatch():
    s = Scene("circle", "red", "blue", "large", "top left")
    img = render(s)
    ok = score(img, caption(s))
    assert ok == {a: True for a in ATTRIBUTES}
    wrong = score(img, "a small green square on a blue background, bottom right")
    assert wrong == {
        "shape": False,
        "color": False,
        "background": True,
        "size": False,
        "position": False,
    }
    res = adherence(
        [img, img], [caption(s), "a small green square on a blue background, bottom right"]
    )
    assert res["n"] == 2
    assert res["accuracy"] == pytest.approx((5 + 1) / 10)
    assert res["exact_match"] == pytest.approx(0.5)
    assert res["per_attribute"]["background"] == 1.0
    assert res["per_attribute"]["shape"] == 0.5


def test_adherence_input_validation():
    img = render(Scene("circle", "red", "blue", "large", "top"))
    with pytest.raises(ValueError, match="prompts"):
        adherence([img], [])
    with pytest.raises(ValueError):
        score(img, "a photo of a cat")


def test_blank_image_has_no_shape():
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = PALETTE["green"]
    got = detect(img)
    assert got["background"] == "green"
    assert got["shape"] is None and got["color"] is None and got["position"] is None
    assert not any(
        v for k, v in score(img, "a large red circle on a green background, center").items()
        if k != "background"
    )


def test_noise_only_image_has_no_shape():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3)) + PALETTE["white"] + rng.normal(0, 25, (64, 64, 3))
    got = detect(np.clip(img, 0, 255).astype(np.uint8))
    assert got["background"] == "white"
    assert got["shape"] is None and got["color"] is None


def test_accepts_float_images_and_reports_features():
    s = Scene("triangle", "orange", "white", "large", "bottom")
    img = render(s)
    assert detect(img.astype(np.float32) / 255.0) == s.as_dict()
    m = measure_image(img)
    assert m["shape"] == "triangle"
    assert {"harmonics", "size_frac", "cx", "cy", "solidity"} <= set(m["features"])


def test_largest_component_wins():
    """A stray speck (as a model may produce) does not replace the main shape."""
    s = Scene("square", "black", "white", "large", "center")
    img = render(s).copy()
    img[5:8, 5:8] = PALETTE["red"]
    assert detect(img) == s.as_dict()
