"""Vulkan: ExecuTorch's GPU delegate for Android. Lowers here; its runtime is not in the pip wheel, so nothing runs.

* ``VulkanPartitioner({"force_fp16": ...})`` from the recipe's ``vulkan:`` options: with force_fp16 the delegate
  stores and computes every float tensor in fp16 whatever the program's dtype (half the size), so the program is
  exported in fp32 (``export_precision``) and only the delegate is fp16. It takes GroupNorm, LayerNorm,
  upsampling and GELU that XNNPACK leaves on the CPU.
* Conv is delegated only at batch 1, so classifier-free guidance runs as two batch-1 UNet calls
  (``default_guidance_mode = "two_calls"``; the recipe refuses batch2 for Vulkan).
* Only linear layers are quantized for Vulkan (weight-only int8 per channel / int4 per group, see
  ``mdship.capabilities``); the quantize stage rewrites them before this partitioner sees the graph.
* ``fallback: [xnnpack]`` appends an XnnpackPartitioner: what Vulkan rejects goes to XNNPACK instead of the
  portable kernels (the recipe checks that XNNPACK can run the component's formats).
"""

from __future__ import annotations

import torch

from mdship.backends.base import xnnpack_fallback
from mdship.recipe import ComponentSpec, Target


def _force_fp16(target: Target) -> bool:
    return bool(target.vulkan.force_fp16) if target.vulkan else True


class VulkanBackend:
    name = "vulkan"
    executes_here = False
    default_guidance_mode = "two_calls"
    #: ExecuTorch backend id of this delegate's partitions in a .pte
    backend_id = "VulkanBackend"

    def partitioners(self, target: Target, spec: ComponentSpec) -> list:
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        return [VulkanPartitioner({"force_fp16": _force_fp16(target)}), *xnnpack_fallback(target)]

    def export_precision(self, target: Target, spec: ComponentSpec) -> str:
        """With force_fp16 the program is exported in fp32 and the delegate stores and computes it in fp16.

        Exporting an fp16 graph instead gains nothing (the delegate's tensors are fp16 either way) and breaks int4
        weight-only linears: ExecuTorch 1.5.1's Vulkan FusePatternsPass re-traces its fused ``linear_q4gsw`` with
        an fp32 result, and the next fp16 op (the attention bmm) fails on the dtype mismatch.
        """
        return "fp32" if _force_fp16(target) else spec.precision

    def transform_passes(self) -> list:
        return []

    def compute_dtype(self, target: Target, spec: ComponentSpec) -> torch.dtype:
        return torch.float16 if target.computes_fp16 or spec.precision == "fp16" else torch.float32
