"""Delegates, one module each behind `base.Backend`. `get(name)` is the only way stages find one."""

from __future__ import annotations

from mdship.backends.base import Backend


def get(name: str) -> Backend:
    if name == "xnnpack":
        from mdship.backends.xnnpack import XnnpackBackend
        return XnnpackBackend()
    if name == "portable":
        from mdship.backends.portable import PortableBackend
        return PortableBackend()
    if name == "vulkan":
        from mdship.backends.vulkan import VulkanBackend
        return VulkanBackend()
    if name == "coreml":
        from mdship.backends.coreml import CoreMLBackend
        return CoreMLBackend()
    raise ValueError(f"unknown backend {name!r}")


def guidance_mode(recipe_mode: str, backend: Backend) -> str:
    return backend.default_guidance_mode if recipe_mode == "auto" else recipe_mode
