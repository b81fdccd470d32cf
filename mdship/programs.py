"""Loading .pte programs into the ExecuTorch runtime: the one place mdship does it (build verification, fidelity,
`mdship run` / `verify` / `bench` all come through here).

A program is given as a path or as bytes. Loading registers ExecuTorch's quantized kernels first (the Python
runtime has `quantized_decomposed::*` only after `import executorch.kernels.quantized`), and a program the runtime
refuses becomes one `BundleError` line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from mdship.errors import BundleError


def runtime():
    """The ExecuTorch runtime, with the quantized kernels registered."""
    from executorch.runtime import Runtime

    try:
        import executorch.kernels.quantized  # noqa: F401  (registers quantized_decomposed::* kernels)
    except ImportError:  # pragma: no cover - the pinned wheel ships it
        pass
    return Runtime.get()


def load(program: bytes | str | Path, *, enable_etdump: bool = False, name: str | None = None):
    """An ExecuTorch Program from a .pte path or its bytes."""
    where = name or (str(program) if not isinstance(program, (bytes, bytearray)) else "program")
    source = program if isinstance(program, (bytes, bytearray)) else Path(program)
    try:
        return runtime().load_program(source, enable_etdump=enable_etdump) if enable_etdump \
            else runtime().load_program(source)
    except (RuntimeError, ValueError) as e:
        raise BundleError(f"{where}: the ExecuTorch runtime cannot load it ({e})") from None


def method(program: bytes | str | Path, name: str = "forward") -> Callable[..., torch.Tensor]:
    """A callable running one method of a program: ``f(*inputs) -> first output``."""
    loaded = load(program).load_method(name)

    def call(*inputs: torch.Tensor) -> torch.Tensor:
        return loaded.execute(list(inputs))[0]

    return call


def execute(program: bytes | str | Path, inputs, name: str = "forward") -> list[torch.Tensor]:
    """Run one method once; every output."""
    return list(load(program).load_method(name).execute(list(inputs)))
