"""Portable: no delegate, ExecuTorch's reference CPU kernels. Slow, but a useful correctness baseline (fp32 only)."""

from __future__ import annotations

from mdship.backends.base import Backend


class PortableBackend(Backend):
    name = "portable"
    backend_id = None
    runs_here = True
