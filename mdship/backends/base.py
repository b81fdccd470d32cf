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

    def transform_passes(self) -> list:
        """Edge transform passes to run before partitioning."""

    def compute_dtype(self, target: Target, spec: ComponentSpec) -> torch.dtype:
        """The float dtype the delegate computes this component in (for simulated verification)."""
