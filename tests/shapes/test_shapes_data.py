"""Tests for the md-shapes data generator, captions and prompt sets.

Module name is unique on purpose (tests/ has no __init__.py, so pytest imports test modules by
basename).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mdship.shapes import data as D
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

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "calibration"


def _load_prompt_tool():
    spec = importlib.util.spec_from_file_location(
        "mdship_make_prompt_sets", ROOT / "tools" / "make_prompt_sets.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------- scenes


def test_all_scenes_count_and_unique():
    scenes = list(all_scenes())
    expected = len(SHAPES) * len(COLORS) * (len(COLORS) - 1) * len(SIZES) * len(POSITIONS)
    assert len(scenes) == expected == 4032
    assert len(set(scenes)) == len(scenes)
    assert all(s.color != s.background for s in scenes)


def test_scene_validation():
    with pytest.raises(ValueError, match="invisible"):
        Scene("circle", "red", "red", "large", "center")
    with pytest.raises(ValueError, match="shape"):
        Scene("hexagon", "red", "blue", "large", "center")
    with pytest.raises(ValueError, match="position"):
        Scene("circle", "red", "blue", "large", "middle")


def test_palette_colors_are_far_apart():
    rgb = np.array(list(PALETTE.values()), dtype=float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=2)
    d[np.eye(len(rgb), dtype=bool)] = np.inf
    assert d.min() >= 90, "palette entries too close for nearest-colour snapping"


def test_sample_scene_covers_everything():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(2000)]
    for attr, values in (
        ("shape", SHAPES),
        ("color", COLORS),
        ("background", COLORS),
        ("size", SIZES),
        ("position", POSITIONS),
    ):
        assert set(getattr(s, attr) for s in scenes) == set(values)


# -------------------------------------------------------------------------------- captions


def test_caption_format():
    s = Scene("circle", "red", "blue", "large", "top left")
    assert caption(s) == "a large red circle on a blue background, top left"
    s = Scene("star", "white", "orange", "small", "center")
    assert caption(s) == "a small white star on an orange background, center"


def test_caption_round_trip_all_scenes():
    for s in all_scenes():
        assert parse_caption(caption(s)) == s


def test_parse_caption_is_lenient_about_form():
    want = Scene("triangle", "green", "orange", "small", "bottom right")
    for text in (
        "A small green triangle on an orange background, bottom right.",
        "  a small  green triangle on a orange background,bottom right ",
        "small green triangle on orange background in the bottom right",
        "a small green triangle on an orange background , bottom right",
    ):
        assert parse_caption(text) == want, text
    assert parse_caption("a large red circle on a blue background, centre").position == "center"


@pytest.mark.parametrize(
    "text, word",
    [
        ("a large red hexagon on a blue background, top", "hexagon"),
        ("a large pink circle on a blue background, top", "pink"),
        ("a huge red circle on a blue background, top", "huge"),
        ("a large red circle on a blue background, middle", "middle"),
        ("a large red circle on a teal background, top", "teal"),
    ],
)
def test_parse_caption_unknown_word(text, word):
    with pytest.raises(ValueError, match=word):
        parse_caption(text)


def test_parse_caption_malformed():
    with pytest.raises(ValueError, match="expected the form"):
        parse_caption("a photo of a cat")
    with pytest.raises(ValueError, match="invisible"):
        parse_caption("a large red circle on a red background, top")


def test_vocabulary_is_exactly_the_caption_words():
    used = set()
    for s in all_scenes():
        used.update(tokenize(caption(s)))
    vocab = vocabulary()
    assert vocab == sorted(vocab) and len(set(vocab)) == len(vocab)
    assert set(vocab) == used


# ------------------------------------------------------------------------------- rendering


def test_render_basic_properties():
    s = Scene("circle", "red", "blue", "large", "center")
    img = render(s)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render(s)), "rng=None must be deterministic"
    assert render(s, size_px=32).shape == (32, 32, 3)
    # anti-aliased: some pixels are strictly between background and foreground
    colors = {tuple(p) for p in img.reshape(-1, 3)}
    assert len(colors) > 2
    assert tuple(img[0, 0]) == PALETTE["blue"]
    assert tuple(img[32, 32]) == PALETTE["red"]


def test_jitter_varies_but_keeps_shape_inside():
    rng = np.random.default_rng(1)
    seen = set()
    for s in itertools.islice(all_scenes(), 0, 4032, 7):
        img = render(s, rng=rng)
        seen.add(img.tobytes())
        bg = np.array(PALETTE[s.background])
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == bg).all(), f"shape touches the border: {caption(s)}"
    s = Scene("square", "red", "blue", "small", "center")
    assert len({render(s, rng=rng).tobytes() for _ in range(5)}) == 5


@pytest.mark.parametrize("shape", SHAPES)
def test_nominal_geometry_matches_attributes(shape):
    """Bounding box of the rendered mask: right grid cell and the documented width."""
    for size, position in itertools.product(SIZES, POSITIONS):
        s = Scene(shape, "white", "black", size, position)
        mask = render(s, size_px=128).astype(float).mean(axis=2) > 127
        ys, xs = np.nonzero(mask)
        cx = (xs.min() + xs.max() + 1) / 2 / 128
        cy = (ys.min() + ys.max() + 1) / 2 / 128
        col, row = D.POSITION_CELL[position]
        assert int(cx * 3) == col and int(cy * 3) == row, (shape, size, position, cx, cy)
        width = (xs.max() - xs.min() + 1) / 128
        assert abs(width - D.SIZE_FRACTION[size]) < 0.03, (shape, size, width)


def test_dataset_deterministic():
    a_img, a_cap = dataset(12, seed=5, size_px=32)
    b_img, b_cap = dataset(12, seed=5, size_px=32)
    c_img, c_cap = dataset(12, seed=6, size_px=32)
    assert a_img.shape == (12, 32, 32, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert not np.array_equal(a_img, c_img)
    for c in a_cap:
        parse_caption(c)
    assert dataset(0, seed=1)[0].shape == (0, 64, 64, 3)


def test_dataset_images_match_captions():
    imgs, caps = dataset(8, seed=11, size_px=64)
    for img, cap in zip(imgs, caps):
        s = parse_caption(cap)
        assert tuple(img[0, 0]) == PALETTE[s.background]


# ----------------------------------------------------------------------------- prompt sets


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert all(line.strip() == line and line for line in lines), f"blank/padded line in {path}"
    return lines


def test_shapes_prompt_sets():
    calib = _lines(CALIB / "shapes-calib.txt")
    evals = _lines(CALIB / "shapes-eval.txt")
    assert len(calib) >= 100 and len(evals) >= 100
    assert len(set(calib)) == len(calib) and len(set(evals)) == len(evals)
    assert not set(calib) & set(evals)
    for prompts in (calib, evals):
        scenes = [parse_caption(p) for p in prompts]
        assert [caption(s) for s in scenes] == prompts, "prompts must be canonical captions"
        # balanced: every value of every attribute is present
        values = {
            "shape": SHAPES,
            "color": COLORS,
            "background": COLORS,
            "size": SIZES,
            "position": POSITIONS,
        }
        for attr in ATTRIBUTES:
            counts = Counter(getattr(s, attr) for s in scenes)
            assert set(counts) == set(values[attr]), attr
            assert min(counts.values()) >= 0.6 * max(counts.values()), (attr, counts)


def test_shapes_prompt_sets_are_generated():
    tool = _load_prompt_tool()
    calib, evals = tool.build_prompt_sets()
    assert (CALIB / "shapes-calib.txt").read_text() == "".join(p + "\n" for p in calib)
    assert (CALIB / "shapes-eval.txt").read_text() == "".join(p + "\n" for p in evals)
    assert tool.build_prompt_sets() == (calib, evals), "generation must be deterministic"


def test_general_prompt_sets():
    calib = _lines(CALIB / "general-calib.txt")
    evals = _lines(CALIB / "general-eval.txt")
    assert len(calib) + len(evals) >= 64
    assert 0.6 <= len(calib) / (len(calib) + len(evals)) <= 0.85
    assert len(set(calib)) == len(calib) and len(set(evals)) == len(evals)
    assert not set(calib) & set(evals)
    for p in calib + evals:
        assert len(p.split()) >= 4
        with pytest.raises(ValueError):
            parse_caption(p)  # general captions must not look like shapes prompts
