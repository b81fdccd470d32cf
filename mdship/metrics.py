"""Fidelity metrics. PSNR/SSIM from scikit-image; component PSNR uses the reference's own range as peak.

Identical images have an infinite PSNR. `image_psnr` says so (math.inf); JSON has no infinity, so a manifest stores
them as `IDENTICAL_DB` (`json_db`), and a reader turns that back into inf (`from_json_db`). Averaging such values is
meaningless (a mean over 200s and 40s is neither), so summaries count the identical images and take the median and
the worst over the rest (`psnr_summary`).

LPIPS (the `lpips` package) and CLIP score (transformers' CLIPModel) need learned weights: they run only from local
weights a user names, never downloaded; `MetricUnavailable` says why one cannot run.
"""

from __future__ import annotations

import math
import pickle
import statistics

import numpy as np
import torch


def tensor_psnr(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """PSNR in dB of `candidate` against `reference`, peak = the reference's peak-to-peak range.

    Component outputs (hidden states, noise predictions, images in [-1, 1]) have no fixed range, so the
    reference's own range is the peak. Identical tensors give +inf (reported as 200 dB, JSON has no inf).
    """
    ref = reference.detach().double().flatten()
    cand = candidate.detach().double().flatten()
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {tuple(reference.shape)} vs candidate {tuple(candidate.shape)}")
    if not torch.isfinite(cand).all():
        return -999.0  # NaN or Inf in the output: a failed program, far below any gate
    mse = torch.mean((ref - cand) ** 2).item()
    peak = (ref.max() - ref.min()).item() or 1.0
    if mse == 0:
        return 200.0
    return min(200.0, 10 * math.log10(peak * peak / mse))


#: how JSON (manifest.json's `fidelity`) stores the PSNR of identical images, which is infinite
IDENTICAL_DB = 200.0


def image_psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR in dB of two uint8 images; math.inf when they are identical."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(reference, candidate):
        return math.inf
    return float(peak_signal_noise_ratio(reference, candidate, data_range=255))


def json_db(value: float) -> float:
    """A PSNR as JSON stores it: inf (identical) as IDENTICAL_DB."""
    return IDENTICAL_DB if math.isinf(value) else value


def from_json_db(value: float) -> float:
    """A PSNR read from JSON: IDENTICAL_DB (or above, an older cap) is inf again."""
    return math.inf if value >= IDENTICAL_DB else value


def psnr_summary(values: list[float]) -> dict:
    """Honest statistics of per-image PSNRs (inf = identical): how many images, how many identical, and the median
    and worst over the others (None when every image is identical), with the worst one's index."""
    finite = [(v, i) for i, v in enumerate(values) if not math.isinf(v)]
    return {"images": len(values), "identical": len(values) - len(finite),
            "median_db": round(statistics.median(v for v, _ in finite), 3) if finite else None,
            "worst_db": round(min(finite)[0], 3) if finite else None,
            "worst_index": min(finite)[1] if finite else None}


def image_ssim(reference: np.ndarray, candidate: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(reference, candidate, channel_axis=-1, data_range=255))


# ---------------------------------------------------------------------------------------------- learned metrics
class MetricUnavailable(Exception):
    """A learned metric cannot run here (package missing, weights unreadable): the reason, one line."""


def _as_batch(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float NCHW in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def lpips_distances(weights: str, reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[float]:
    """LPIPS (AlexNet, v0.1) per image pair, from a local state dict of `lpips.LPIPS(net="alex")`, backbone
    included: the backbone is built untrained (pnet_rand) so torchvision downloads nothing, then loaded."""
    try:
        import lpips
    except ImportError:
        raise MetricUnavailable("the lpips package is not installed (pip install lpips)") from None
    try:
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise MetricUnavailable(f"{weights}: not an LPIPS(net='alex') state dict ({str(e).splitlines()[0]})") from None
    with torch.no_grad():
        return [float(d) for d in model.eval()(_as_batch(reference), _as_batch(candidate)).flatten()]


def clip_scores(model_dir: str, images: list[np.ndarray], prompts: list[str]) -> list[float]:
    """CLIP score per image (100 x max(cosine(image, prompt), 0), as torchmetrics defines it) from a local
    transformers CLIP model directory (config, weights, tokenizer and image processor files)."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise MetricUnavailable(f"{model_dir}: not a local CLIP model directory ({str(e).splitlines()[0]})") from None
    with torch.no_grad():
        batch = processor(text=prompts, images=list(images), return_tensors="pt", padding=True, truncation=True)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"])
    cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)
    return [round(100 * max(float(c), 0.0), 4) for c in cosine]
