"""Procedural "md-shapes" data: one coloured shape on a plain background, plus its caption.

Why this exists: the shipped md-shapes model is small enough to train quickly, and a world of
single shapes lets us *measure* prompt adherence exactly (see :mod:`mdship.shapes.detector`)
instead of relying on a learned scorer such as CLIP. Every attribute of a scene is discrete
and is chosen so that an analytic detector can recover it from a blurry, noisy 64 px image:

* 4 shapes whose region statistics differ a lot (circle, square, triangle, star),
* 8 saturated colours at least ~100 apart in RGB (nearest-palette snapping stays unambiguous
  under the colour shifts a small model produces),
* 2 sizes (~25 % vs ~45 % of the image width, far apart on purpose),
* 9 positions (a 3x3 grid), with shapes kept well inside their cell so the centre of the
  shape's bounding box never lands on a cell boundary.

Geometry conventions (shared with the detector, keep them in sync):

* A shape's *extent* is the side of its (axis-aligned) bounding box, as a fraction of the image
  width: circle diameter, square side, triangle side, star tip-to-tip width.
* A shape is placed by the centre of its bounding box (not its centroid: the centroid of a
  triangle sits low in its box and would drift towards the cell boundary).
* Coordinates are fractions of the image size, x to the right, y downwards.

Captions have one fixed grammar, ``"a large red circle on a blue background, top left"``
(``"an"`` before a vowel), so that :func:`parse_caption` can invert them exactly and the
tokenizer vocabulary is tiny and closed (:func:`vocabulary`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: Saturated, mutually distant RGB values. The closest pairs (orange/yellow, red/orange) are
#: still ~100 apart, so snapping a pixel to the nearest entry tolerates shifts of ~50 per
#: channel. Brown/grey/pink/cyan were left out because they sit between existing entries.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 170, 40),
    "blue": (20, 60, 220),
    "yellow": (245, 230, 20),
    "purple": (140, 30, 170),
    "orange": (250, 130, 10),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLORS: tuple[str, ...] = tuple(PALETTE)

SIZES: tuple[str, ...] = ("small", "large")

#: Bounding-box side as a fraction of the image width. The detector splits at the geometric
#: mean-ish midpoint (0.35); jitter (+-8 %) never crosses it.
SIZE_FRACTION: dict[str, float] = {"small": 0.25, "large": 0.45}
SIZE_JITTER = 0.08  # relative, uniform +- this

POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
#: (column, row) in the 3x3 grid for each position word, 0 = left/top.
POSITION_CELL: dict[str, tuple[int, int]] = {p: (i % 3, i // 3) for i, p in enumerate(POSITIONS)}
CELL_POSITION: dict[tuple[int, int], str] = {v: k for k, v in POSITION_CELL.items()}

#: Gap between the shape's bounding box and the image border for the outer cells, as a
#: fraction of the image. With it the box centre of a large shape in an outer cell sits at
#: 0.255 (cell boundary at 0.333) and a small one at 0.155 (cell centre 0.167).
EDGE_MARGIN = 0.03
#: Positional jitter (uniform +- this, fraction of the image) applied when an rng is given.
#: Worst case a large outer shape's box centre is at 0.28, still 0.05 from the cell boundary,
#: which leaves room for blur eating the apex of a triangle (moves its box centre ~0.03).
POSITION_JITTER = 0.025
#: Minimum gap between any shape and the image border (fraction; ~1.6 px at 64 px) so the
#: border pixels are pure background, which is what the detector's background estimate uses.
BORDER_CLEARANCE = 0.025

#: Inner/outer radius ratio of the 5-point star (a classic star is 0.38). 0.40 keeps the
#: notches deep enough to survive a 16 px render plus blur (the detector's 5th radial harmonic
#: stays > 0.08) while the tips stay thick enough not to vanish.
STAR_INNER_RATIO = 0.40

_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One md-shapes scene: a single ``shape`` of colour ``color`` on a ``background``.

    All fields are words from the module constants; construction validates them so that a typo
    fails loudly where it is made rather than as a silently wrong caption or image.
    """

    shape: str
    color: str
    background: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for field, allowed in (
            ("shape", SHAPES),
            ("color", COLORS),
            ("background", COLORS),
            ("size", SIZES),
            ("position", POSITIONS),
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"Scene.{field}={value!r} is not one of {list(allowed)}")
        if self.color == self.background:
            raise ValueError(
                f"Scene color and background are both {self.color!r}: the shape would be invisible"
            )

    def as_dict(self) -> dict[str, str]:
        """The scene as a plain dict (the format :func:`mdship.shapes.detector.detect` returns)."""
        return {
            "shape": self.shape,
            "color": self.color,
            "background": self.background,
            "size": self.size,
            "position": self.position,
        }


ATTRIBUTES: tuple[str, ...] = ("shape", "color", "background", "size", "position")


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene) -> str:
    """The canonical caption, e.g. ``"a large red circle on a blue background, top left"``.

    One fixed template (rather than paraphrases) keeps the text side trivial for a tiny text
    encoder, so that what we measure is whether the *image* follows the words.
    """
    return (
        f"{_article(scene.size)} {scene.size} {scene.color} {scene.shape} on "
        f"{_article(scene.background)} {scene.background} background, {scene.position}"
    )


_TOKEN_RE = re.compile(r"[a-z]+")


def tokenize(text: str) -> list[str]:
    """Split text into the word tokens :func:`vocabulary` lists (lower case, no punctuation)."""
    return _TOKEN_RE.findall(text.lower())


def vocabulary() -> list[str]:
    """Every word any caption can use, sorted; punctuation (the comma) is not a word.

    Derived from the templates instead of hand-listed so it cannot drift from :func:`caption`.
    """
    words = {"a", "an", "on", "background"}
    words.update(SIZES)
    words.update(COLORS)
    words.update(SHAPES)
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)


_CAPTION_RE = re.compile(
    r"^(?:an?\s+)?(?P<size>\w+)\s+(?P<color>\w+)\s+(?P<shape>\w+)\s+on\s+(?:an?\s+)?"
    r"(?P<background>\w+)\s+background\s*,?\s*(?:in\s+the\s+)?(?P<position>[a-z ]+?)$"
)


def parse_caption(text: str) -> Scene:
    """Invert :func:`caption`: ``"a large red circle on a blue background, top left"`` -> Scene.

    Lenient about case, spacing, the articles ("a"/"an"), a missing comma, an ``"in the"``
    before the position and a trailing full stop, strict about the words themselves: an
    unknown word raises ``ValueError`` naming it and the allowed values, so a bad prompt file
    fails at load time instead of scoring as "the model got it wrong".
    """
    norm = " ".join(text.strip().lower().rstrip(".").split())
    norm = norm.replace(" ,", ",")
    m = _CAPTION_RE.match(norm)
    if m is None:
        raise ValueError(
            f"cannot parse shapes caption {text!r}: expected the form "
            f"'a <size> <color> <shape> on a <color> background, <position>', "
            f"e.g. {caption(Scene('circle', 'red', 'blue', 'large', 'top left'))!r}"
        )
    fields = m.groupdict()
    fields["position"] = " ".join(fields["position"].split())
    if fields["position"] == "centre":
        fields["position"] = "center"
    for field, allowed in (
        ("size", SIZES),
        ("color", COLORS),
        ("shape", SHAPES),
        ("background", COLORS),
        ("position", POSITIONS),
    ):
        if fields[field] not in allowed:
            raise ValueError(
                f"unknown {field} {fields[field]!r} in caption {text!r}; "
                f"expected one of {list(allowed)}"
            )
    return Scene(**fields)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------

def all_scenes() -> Iterator[Scene]:
    """Every valid scene (4 shapes x 56 colour pairs x 2 sizes x 9 positions = 4032), in a
    fixed order, so prompt sets and held-out splits can be derived deterministically."""
    for shape, color, background, size, position in itertools.product(
        SHAPES, COLORS, COLORS, SIZES, POSITIONS
    ):
        if color != background:
            yield Scene(shape, color, background, size, position)


def sample_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random valid scene (each attribute uniform; background uniform among the
    colours that differ from the foreground)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = COLORS[rng.integers(len(COLORS))]
    others = [c for c in COLORS if c != color]
    background = others[rng.integers(len(others))]
    size = SIZES[rng.integers(len(SIZES))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    return Scene(shape, color, background, size, position)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def cell_center(position: str, extent: float) -> tuple[float, float]:
    """Nominal (x, y) of the bounding-box centre for a shape of ``extent`` in ``position``.

    Outer cells hug the image border (with :data:`EDGE_MARGIN`) instead of using the geometric
    cell centre (1/6), because a large shape centred at 1/6 would stick out of the image.
    """
    col, row = POSITION_CELL[position]
    lo = EDGE_MARGIN + extent / 2
    coords = (lo, 0.5, 1.0 - lo)
    return coords[col], coords[row]


def _star_polygon(cx: float, cy: float, width: float) -> np.ndarray:
    """Vertices (x, y) of an upright 5-point star whose bounding box is ``width`` wide and
    centred on (cx, cy)."""
    # Outer radius R: bbox width is 2 R sin(72 deg); height is R (1 + cos 36 deg).
    r_out = width / (2 * np.sin(np.deg2rad(72)))
    r_in = r_out * STAR_INNER_RATIO
    k = np.arange(10)
    ang = -np.pi / 2 + k * np.pi / 5
    r = np.where(k % 2 == 0, r_out, r_in)
    xs, ys = r * np.cos(ang), r * np.sin(ang)
    # Centre the bounding box (the star's circumcentre is not its box centre).
    y_top, y_bot = -r_out, r_out * np.cos(np.deg2rad(36))
    ys = ys - (y_top + y_bot) / 2
    return np.stack([cx + xs, cy + ys], axis=1)


def _triangle_polygon(cx: float, cy: float, width: float) -> np.ndarray:
    """Upright equilateral triangle with side ``width``, bounding box centred on (cx, cy)."""
    h = width * np.sqrt(3) / 2
    return np.array([[cx, cy - h / 2], [cx + width / 2, cy + h / 2], [cx - width / 2, cy + h / 2]])


def _inside_polygon(xs: np.ndarray, ys: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over sample points (numpy only)."""
    inside = np.zeros(xs.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > ys) != (y2 > ys)
        x_at = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xs < x_at)
    return inside


def _coverage(shape: str, cx: float, cy: float, extent: float, size_px: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the shape on a ``size_px`` grid (pixel units).

    Supersampled (4x4 samples per pixel) only inside the shape's bounding box: cheap enough to
    generate tens of thousands of training images on a CPU.
    """
    cov = np.zeros((size_px, size_px), dtype=np.float32)
    half = extent / 2
    x0 = max(int(np.floor(cx - half)) - 1, 0)
    x1 = min(int(np.ceil(cx + half)) + 1, size_px)
    y0 = max(int(np.floor(cy - half)) - 1, 0)
    y1 = min(int(np.ceil(cy + half)) + 1, size_px)
    s = _SUPERSAMPLE
    sub = (np.arange(s) + 0.5) / s
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).ravel()
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).ravel()
    X, Y = np.meshgrid(xs, ys)
    if shape == "circle":
        m = (X - cx) ** 2 + (Y - cy) ** 2 <= half**2
    elif shape == "square":
        m = (np.abs(X - cx) <= half) & (np.abs(Y - cy) <= half)
    elif shape == "triangle":
        m = _inside_polygon(X, Y, _triangle_polygon(cx, cy, extent))
    elif shape == "star":
        m = _inside_polygon(X, Y, _star_polygon(cx, cy, extent))
    else:  # pragma: no cover - Scene validation prevents this
        raise ValueError(f"unknown shape {shape!r}")
    h, w = y1 - y0, x1 - x0
    block = m.reshape(h, s, w, s).mean(axis=(1, 3))
    cov[y0:y1, x0:x1] = block
    return cov


def scene_geometry(
    scene: Scene, rng: np.random.Generator | None = None
) -> tuple[float, float, float]:
    """(cx, cy, extent) as image fractions: nominal when ``rng`` is None, jittered otherwise.

    Jitter (size +-8 %, centre +-0.025) gives the model variety without ever moving a shape
    across a size threshold or a grid-cell boundary, and the result is clamped so the shape
    stays inside the image.
    """
    nominal = SIZE_FRACTION[scene.size]
    extent = nominal
    if rng is not None:
        extent *= 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    # The cell centre uses the nominal extent so size jitter does not push shapes towards the
    # cell boundary; the clamp below keeps a jittered-large shape inside the image.
    cx, cy = cell_center(scene.position, nominal)
    if rng is not None:
        cx += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        cy += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    lo, hi = extent / 2 + BORDER_CLEARANCE, 1.0 - extent / 2 - BORDER_CLEARANCE
    return float(np.clip(cx, lo, hi)), float(np.clip(cy, lo, hi)), float(extent)


def render(scene: Scene, size_px: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render ``scene`` as a ``size_px x size_px x 3`` uint8 RGB image.

    Edges are anti-aliased by supersampling so the training images contain no aliasing
    artefacts the model would waste capacity on. With ``rng=None`` the output is the canonical
    image for the scene (used by tests and as a reference); with an rng the position and size
    are jittered a little (see :func:`scene_geometry`).
    """
    cx, cy, extent = scene_geometry(scene, rng)
    cov = _coverage(scene.shape, cx * size_px, cy * size_px, extent * size_px, size_px)
    fg = np.asarray(PALETTE[scene.color], dtype=np.float32)
    bg = np.asarray(PALETTE[scene.background], dtype=np.float32)
    img = bg[None, None, :] + cov[:, :, None] * (fg - bg)[None, None, :]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def dataset(n: int, seed: int = 0, size_px: int = 64) -> tuple[np.ndarray, list[str]]:
    """``n`` random (jittered) renders and their captions, deterministic for ``seed``.

    Returns ``(images uint8 [n, size_px, size_px, 3], captions)``. One generator drives both
    the scene choice and the jitter, so the same seed always gives byte-identical data.
    """
    if n < 0:
        raise ValueError(f"dataset size must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size_px, size_px, 3), dtype=np.uint8)
    captions: list[str] = []
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = render(scene, size_px=size_px, rng=rng)
        captions.append(caption(scene))
    return images, captions
