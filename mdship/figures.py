"""The pictures of `mdship compare`'s report, as PNG bytes: plots with matplotlib (Agg, no display), the image grid
with Pillow. Each function takes plain numbers and images, so the report decides what to draw and these only draw.

Executed and simulated bundles are drawn apart (filled and hollow markers) and only executed ones make up the Pareto
front; a bundle whose images are all identical to the reference has an infinite PSNR, drawn at the top edge with an
upward marker and labelled "identical", never at a made-up finite value.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: colours of the component stack (pipeline order)
COMPONENT_COLORS = ("#4c72b0", "#dd8452", "#55a868")


@dataclass
class Point:
    label: str
    x: float
    y: float  # inf: every image identical
    executed: bool
    passed: bool


def _figure(width: float = 5.8, height: float = 3.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _top(points: list[Point]) -> float:
    """Where an infinite PSNR is drawn: above every finite one."""
    finite = [p.y for p in points if not math.isinf(p.y)]
    return (max(finite) if finite else 60.0) + 8.0


def scatter(points: list[Point], xlabel: str, title: str, front: list[str] | None = None,
            gate: float | None = None, logx: bool = False) -> bytes:
    """Worst-image PSNR against x (bytes or latency): executed filled, simulated hollow, failing ones red-edged,
    the Pareto front of executed points as a step line, the image PSNR gate as a dashed line."""
    fig, ax = _figure()
    top = _top(points)
    for k, p in enumerate(sorted(points, key=lambda p: p.x)):
        y = top if math.isinf(p.y) else p.y
        ax.scatter([p.x], [y], s=60, marker="^" if math.isinf(p.y) else "o",
                   facecolors="#4c72b0" if p.executed else "none", edgecolors="#4c72b0" if p.passed else "#c44e52",
                   linewidths=1.5, zorder=3)
        ax.annotate(p.label + (" (identical)" if math.isinf(p.y) else "") + ("" if p.executed else " (simulated)"),
                    (p.x, y), textcoords="offset points", xytext=(6, 4 if k % 2 else -11), fontsize=8)
    on_front = sorted((p for p in points if front and p.label in front), key=lambda p: p.x)
    if len(on_front) > 1:
        xs = [p.x for p in on_front]
        ys = [top if math.isinf(p.y) else p.y for p in on_front]
        ax.step(xs, ys, where="post", color="#55a868", linewidth=1.2, label="Pareto front (executed)", zorder=2)
    if gate is not None:
        ax.axhline(gate, color="#c44e52", linestyle="--", linewidth=1, label=f"image PSNR gate {gate:g} dB")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("image PSNR vs fp32, worst image (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.12)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return _png(fig)


def stacked_sizes(labels: list[str], components: list[str], megabytes: list[list[float]]) -> bytes:
    """Horizontal bars, one per bundle, stacked by component (MB)."""
    fig, ax = _figure(height=0.45 * len(labels) + 1.4)
    left = np.zeros(len(labels))
    for j, name in enumerate(components):
        values = np.array([row[j] for row in megabytes])
        ax.barh(labels, values, left=left, color=COMPONENT_COLORS[j % len(COMPONENT_COLORS)], label=name)
        left += values
    for i, total in enumerate(left):
        ax.annotate(f"{total:,.1f}", (total, i), textcoords="offset points", xytext=(4, -3), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MB (10^6 bytes) of .pte programs")
    ax.margins(x=0.12)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# ---------------------------------------------------------------------------------------------- image grid
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _tile(image: np.ndarray, side: int) -> Image.Image:
    img = Image.fromarray(image)
    return img.resize((side, side), Image.NEAREST if side >= img.width else Image.LANCZOS)


def difference(reference: np.ndarray, candidate: np.ndarray, gain: int) -> np.ndarray:
    """|candidate - reference| per pixel, amplified by `gain` and clipped: black = identical."""
    diff = np.abs(candidate.astype(np.int16) - reference.astype(np.int16)) * gain
    return np.clip(diff, 0, 255).astype(np.uint8)


def image_grid(columns: list[str], rows: list[tuple[str, list[np.ndarray]]], diff_gain: int = 0,
               side: int = 128) -> bytes:
    """Rows of images under a caption each (column 0 the reference), with an amplified-difference row under each
    when `diff_gain` > 0. `columns` are the column headers."""
    pad, header, caption = 6, 34, 32
    per_row = caption + side + (side + pad if diff_gain else 0) + pad
    width = pad + len(columns) * (side + pad)
    grid = Image.new("RGB", (width, header + len(rows) * per_row), "white")
    draw = ImageDraw.Draw(grid)
    small, tiny = _font(12), _font(11)
    for j, name in enumerate(columns):
        x = pad + j * (side + pad)
        for k, line in enumerate(_wrap(name, side, small, draw)[:2]):
            draw.text((x, 2 + 15 * k), line, fill="black", font=small)
    for i, (text, images) in enumerate(rows):
        y = header + i * per_row
        for k, line in enumerate(_wrap(text, width - 2 * pad, tiny, draw)[:2]):
            draw.text((pad, y + 2 + 14 * k), line, fill="#333333", font=tiny)
        for j, image in enumerate(images):
            x = pad + j * (side + pad)
            grid.paste(_tile(image, side), (x, y + caption))
            if diff_gain and j > 0:
                grid.paste(_tile(difference(images[0], image, diff_gain), side), (x, y + caption + side + pad))
        if diff_gain:
            draw.text((pad, y + caption + side + pad + 2), f"|difference|\nx{diff_gain}", fill="#333333", font=tiny)
    buf = io.BytesIO()
    grid.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _wrap(text: str, width: int, font, draw) -> list[str]:
    lines, line = [], ""
    for part in text.replace("/", "/ ").split(" "):
        candidate = (line + " " + part).strip() if not line.endswith("/") else line + part
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = part
        else:
            line = candidate
    return lines + [line]




# ---------------------------------------------------------------------------------------------- mdship tune
@dataclass
class TunePoint:
    """One recipe `mdship tune` built: where the model put it and where it measured."""

    label: str
    predicted_bytes: float
    predicted_db: float  # worst calibration prompt, predicted
    measured_bytes: float | None
    measured_db: float | None  # worst eval prompt, measured (None: not built; inf: every image identical)
    mode: str  # executed | simulated
    chosen: bool = False
    baseline: bool = False


def tune_plot(frontier: list[tuple[float, float]], points: list[TunePoint], budget_db: float, title: str) -> bytes:
    """Bytes against image PSNR: the model's frontier (predicted worst calibration-prompt PSNR of the cheapest
    allocation per target), each built recipe predicted (hollow) joined to where it measured (filled: worst eval
    prompt; simulated ones are drawn as squares), the uniform input recipe in grey, the chosen one starred, and the
    budget as a dashed line."""
    fig, ax = _figure(width=6.4, height=5.0)
    if frontier:
        xs, ys = zip(*sorted(frontier))
        ax.plot([x / 1e6 for x in xs], ys, color="#8c8c8c", linewidth=1.2, drawstyle="steps-post",
                label="model: cheapest allocation (predicted, calibration prompts)", zorder=1)
    measured = [p.measured_db for p in points if p.measured_db is not None and not math.isinf(p.measured_db)]
    top = (max(measured + [p.predicted_db for p in points if not math.isinf(p.predicted_db)] or [budget_db]) + 4)
    for k, p in enumerate(points):
        color = "#8c8c8c" if p.baseline else ("#dd8452" if p.chosen else "#4c72b0")
        py = top if math.isinf(p.predicted_db) else p.predicted_db
        ax.scatter([p.predicted_bytes / 1e6], [py], s=45, facecolors="none", edgecolors=color, linewidths=1.4,
                   zorder=3)
        if p.measured_db is not None and p.measured_bytes is not None:
            my = top if math.isinf(p.measured_db) else p.measured_db
            ax.plot([p.predicted_bytes / 1e6, p.measured_bytes / 1e6], [py, my], color=color, linewidth=0.8,
                    linestyle=":", zorder=2)
            ax.scatter([p.measured_bytes / 1e6], [my], s=120 if p.chosen else 50,
                       marker="*" if p.chosen else ("s" if p.mode == "simulated" else "o"), color=color, zorder=4)
            ax.annotate(p.label + (" (chosen)" if p.chosen else ""), (p.measured_bytes / 1e6, my),
                        textcoords="offset points", xytext=(6, 5 if k % 2 else -11), fontsize=7)
    ax.axhline(budget_db, color="#c44e52", linestyle="--", linewidth=1, label=f"budget {budget_db:g} dB (worst eval)")
    ax.scatter([], [], facecolors="none", edgecolors="#4c72b0", label="predicted (hollow)")
    ax.scatter([], [], color="#4c72b0", label="measured, worst eval prompt (filled)")
    ax.set_xlabel("MB (10^6 bytes): predicted weights + fixed, measured .pte programs")
    ax.set_ylabel("image PSNR vs fp32, worst prompt (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    return _png(fig)
