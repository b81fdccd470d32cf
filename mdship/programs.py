"""Loading .pte programs into the ExecuTorch runtime: the one place mdship does it (build verification, fidelity,
`mdship run` / `verify` / `bench` all come through here).

A program is given as a path or as bytes. Loading registers ExecuTorch's quantized kernels first (the Python
runtime has `quantized_decomposed::*` only after `import executorch.kernels.quantized`), and a program the runtime
refuses, or that refuses its inputs, becomes one `BundleError` line naming it.

ExecuTorch's C++ runtime logs to file descriptor 2 (cpuinfo probing: "Failed to open midr file ...", loader
details), which Python cannot filter. Each runtime call here runs with descriptor 2 pointed at a scratch file
instead, so the terminal shows mdship's progress and one-line errors only; the last line the runtime logged is
quoted in the error it explains. `mdship --verbose` (MDSHIP_VERBOSE=1) lets everything through.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Callable

import torch

from mdship.errors import BundleError

_LOG = None  # the scratch file native logs go to (one per process)
_POOL_SIZED = False  # whether runtime() has sized ExecuTorch's thread pool (once per process)


def verbose() -> bool:
    return os.environ.get("MDSHIP_VERBOSE", "") not in ("", "0")


@contextmanager
def native_logs():
    """Run the block with its log lines kept off the terminal (unless verbose); yields a function that returns what
    the runtime logged during the block. ExecuTorch logs to file descriptor 2 from C++, and through `sys.stderr`
    when its Python binding prints: both are captured."""
    global _LOG
    if verbose():
        yield lambda: ""
        return
    if _LOG is None:
        _LOG = tempfile.TemporaryFile()
    sys.stderr.flush()
    start = _LOG.seek(0, os.SEEK_END)
    saved = os.dup(2)
    os.dup2(_LOG.fileno(), 2)
    python_side = io.StringIO()

    def logged() -> str:
        _LOG.seek(start)
        return _LOG.read().decode("utf-8", errors="replace") + python_side.getvalue()

    try:
        with redirect_stderr(python_side):
            yield logged
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _last_line(text: str) -> str:
    """The runtime's own explanation: its first error line if it logged one (the cause; later lines are the
    call stack unwinding), else its last line."""
    lines = [line.split("] ", 1)[-1].strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
    return f": {(errors or lines)[0] if errors else lines[-1]}" if lines else ""


def runtime():
    """The ExecuTorch runtime, with the quantized kernels registered and its thread pool sized by mdship's thread
    policy (mdship.threads; a command's ``--threads`` resizes it afterwards)."""
    global _POOL_SIZED
    from executorch.runtime import Runtime

    try:
        import executorch.kernels.quantized  # noqa: F401  (registers quantized_decomposed::* kernels)
    except ImportError:  # pragma: no cover - the pinned wheel ships it
        pass
    with native_logs():
        rt = Runtime.get()
        if not _POOL_SIZED:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            from mdship.threads import threads
            _unsafe_reset_threadpool(threads())
            _POOL_SIZED = True
        return rt


def set_threads(count: int) -> None:
    """Resize ExecuTorch's thread pool (after runtime() has sized it by the policy, so this one holds)."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    runtime()
    with native_logs():
        _unsafe_reset_threadpool(int(count))


def load(program: bytes | str | Path, *, enable_etdump: bool = False, name: str | None = None):
    """An ExecuTorch Program from a .pte path or its bytes."""
    where = name or (str(program) if not isinstance(program, (bytes, bytearray)) else "program")
    source = program if isinstance(program, (bytes, bytearray)) else Path(program)
    rt = runtime()
    with native_logs() as logged:
        try:
            return rt.load_program(source, enable_etdump=enable_etdump) if enable_etdump else rt.load_program(source)
        except (RuntimeError, ValueError) as e:
            error = f"{where}: the ExecuTorch runtime cannot load it ({e}{_last_line(logged())})"
    raise BundleError(error)


class Method:
    """One method of a loaded program, called like a function: ``f(*inputs) -> first output``."""

    def __init__(self, program, name: str, where: str):
        self.where = f"{where} ({name})"
        with native_logs() as logged:
            try:
                self._method = program.load_method(name)
                return
            except (RuntimeError, ValueError) as e:
                error = f"{self.where}: cannot load the method ({e}{_last_line(logged())})"
        raise BundleError(error)

    def outputs(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        with native_logs() as logged:
            try:
                return list(self._method.execute(list(inputs)))
            except (RuntimeError, ValueError) as e:
                shapes = ", ".join(f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs)
                if "set_inputs" in str(e):
                    error = (f"{self.where}: the program refused its inputs ({shapes}): {e}{_last_line(logged())}; "
                             f"the bundle's manifest and program disagree, rebuild the bundle")
                else:
                    error = f"{self.where}: the program failed on inputs ({shapes}): {e}{_last_line(logged())}"
        raise BundleError(error)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.outputs(*inputs)[0]


def method(program: bytes | str | Path, name: str = "forward") -> Method:
    """A callable running one method of a program: ``f(*inputs) -> first output``."""
    where = str(program) if not isinstance(program, (bytes, bytearray)) else "program"
    method = Method(load(program), name, where)
    # the runtime reads a program given as bytes in place: a temporary (method(serialize(...).data)) freed after
    # this call would leave it reading freed memory (a segfault at the first execute)
    method.source = program
    return method


def execute(program: bytes | str | Path, inputs, name: str = "forward") -> list[torch.Tensor]:
    """Run one method once; every output."""
    return method(program, name).outputs(*inputs)
