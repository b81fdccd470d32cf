"""Delegates, one module each behind `base.Backend`. `get(name)` is the only way the rest of mdship finds one.

    xnnpack    ExecuTorch's CPU delegate (Android / iOS CPUs; also runs here)
    vulkan     Android GPU (lowers here, runs only on a device)
    coreml     iOS / macOS: CPU, GPU, Neural Engine (lowers here, runs only on Apple systems)
    portable   no delegate: ExecuTorch's reference kernels
"""

from __future__ import annotations

import importlib

from mdship.backends.base import Backend
from mdship.capabilities import BACKENDS

#: backend name -> module:class (imported on first use: each pulls in its delegate's ExecuTorch modules)
_CLASSES = {
    "xnnpack": "mdship.backends.xnnpack:XnnpackBackend",
    "vulkan": "mdship.backends.vulkan:VulkanBackend",
    "coreml": "mdship.backends.coreml:CoreMLBackend",
    "portable": "mdship.backends.portable:PortableBackend",
}
NAMES = BACKENDS
assert set(_CLASSES) == set(NAMES), "every backend in mdship.capabilities needs a module here"

_INSTANCES: dict[str, Backend] = {}


def get(name: str) -> Backend:
    if name not in _CLASSES:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")
    if name not in _INSTANCES:
        module, cls = _CLASSES[name].split(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), cls)()
    return _INSTANCES[name]
