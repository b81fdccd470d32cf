"""The one small interface every delegate implements. Stages talk to backends only through it."""

from __future__ import annotations

from typing import Protocol

import torch

from mdship.recipe import ComponentSpec, Target


class Backend(Protocol):
    #: recipe name of the backend ("xnnpack", "vulkan", "coreml", "portable")
    name: str
    #: whether this machine can execute its .pte files (the ExecuTorch pip wheel runs XNNPACK and portable)
    executes_here: bool
    #: how classifier-free guidance runs when the recipe says `guidance_mode: auto`
    default_guidance_mode: str

    def partitioners(self, target: Target, spec: ComponentSpec) -> list:
        """ExecuTorch partitioners, in claim order (a fallback delegate comes after the main one)."""

    def export_precision(self, target: Target, spec: ComponentSpec) -> str:
        """The precision the program is exported in ("fp32" / "fp16"); the delegate may compute in another."""

    def transform_passes(self) -> list:
        """Edge transform passes to run before partitioning."""

    def compute_dtype(self, target: Target, spec: ComponentSpec) -> torch.dtype:
        """The float dtype the delegate computes this component in (for simulated verification)."""


def xnnpack_fallback(target: Target) -> list:
    """The XNNPACK partitioner when the target's `fallback:` chain names it (it claims what the main delegate left)."""
    if "xnnpack" not in target.fallback:
        return []
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]
