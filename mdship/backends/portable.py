"""Portable: no delegate, ExecuTorch's reference CPU kernels. Slow, but a useful correctness baseline."""

from __future__ import annotations

import torch

from mdship.recipe import ComponentSpec, Target


class PortableBackend:
    name = "portable"
    executes_here = True
    default_guidance_mode = "batch2"

    def partitioners(self, target: Target, spec: ComponentSpec) -> list:
        return []

    def export_precision(self, target: Target, spec: ComponentSpec) -> str:
        return spec.precision

    def transform_passes(self) -> list:
        return []

    def compute_dtype(self, target: Target, spec: ComponentSpec) -> torch.dtype:
        return torch.float32
