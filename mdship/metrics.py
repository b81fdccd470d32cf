"""Fidelity metrics. PSNR/SSIM from scikit-image; component PSNR uses the reference's own range as peak."""

from __future__ import annotations

import math

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


def image_psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(reference, candidate):
        return 200.0
    return float(peak_signal_noise_ratio(reference, candidate, data_range=255))


def image_ssim(reference: np.ndarray, candidate: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(reference, candidate, channel_axis=-1, data_range=255))
