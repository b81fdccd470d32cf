"""XNNPACK: ExecuTorch's CPU delegate (Android and iOS CPUs; also runs on this Linux machine)."""

from __future__ import annotations

import torch

from mdship.recipe import ComponentSpec, Target


class XnnpackBackend:
    name = "xnnpack"
    executes_here = True
    default_guidance_mode = "batch2"

    def partitioners(self, target: Target, spec: ComponentSpec) -> list:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]

    def export_precision(self, target: Target, spec: ComponentSpec) -> str:
        return spec.precision

    def transform_passes(self) -> list:
        # Removes no-op expand_copy and similar ops that would otherwise split partitions.
        from executorch.backends.xnnpack.utils.configs import get_transform_passes

        return get_transform_passes()

    def compute_dtype(self, target: Target, spec: ComponentSpec) -> torch.dtype:
        return torch.float16 if spec.precision == "fp16" else torch.float32
