"""Worker processes for `mdship build`: a target's programs that miss the cache, built side by side.

A build is single-threaded Python most of the time (ExecuTorch's lowering retraces the graph through ~80 passes:
`build.cpu_seconds` ~= `build.seconds` in every manifest), so one process leaves the other cores of a CI runner idle.
`mdship.build` hands the components whose programs are not cached to worker processes, which build them into the
cache exactly as the build's own process would (`Builder.component`); the build's loop then reads them as cache
hits. The recordings they need (calibration, test vectors) are made first, by the build's process, and cached.

How many workers: ``MDSHIP_BUILD_WORKERS`` if set (1: everything in the build's own process), else one per CPU the
build may use (mdship.threads), no more than the components missing, and only while the workers' estimated memory
fits in half of what the machine has available (psutil: ``MemAvailable``): a paper-scale build stays in one process
unless the machine has room to spare. Workers keep the build's thread policy (mdship.threads, inherited through the
environment) rather than a share of it: PyTorch's CPU kernels round differently with another thread count (the
tiny decoder's output moves by 6e-7), which would move a static-int8 program's calibrated scales and so its bytes; a
program is the same bytes whether a worker built it or not. What the workers overlap, ExecuTorch's lowering, is one
thread.

Built on concurrent.futures (ProcessPoolExecutor, "spawn": no forked torch or OpenMP state). As with any spawned
process, a Python script that calls `mdship.build.build` at its top level needs the usual
``if __name__ == "__main__":`` guard (the workers import the main module), or ``MDSHIP_BUILD_WORKERS=1``. The memory
estimate is this module's own: no library estimates what a lowering needs. It is deliberately rough (measured: the
paper-scale w8a8 build peaked at 5.8 GB for 2.2 GB of fp32 weights; a tiny worker at ~0.9 GB, mostly imports).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Callable

from mdship import threads
from mdship.errors import UserError

VARIABLE = "MDSHIP_BUILD_WORKERS"

#: a worker's memory before it builds anything: Python, torch, torchao, ExecuTorch imported (measured ~0.7 GB)
WORKER_BASE_BYTES = 900 * 2**20
#: a worker holds the checkpoint's modules (fp32) and, while lowering a component, about this many copies of it
LOWERING_COPIES = 3


@dataclass(frozen=True)
class Job:
    """One component's program, built in a worker: `recipe` (a mdship.recipe.Recipe) for `target` (its name)."""

    recipe: object
    target: str
    component: str
    cache_root: str
    cache_remote: str  # "" for none


def mem_available() -> int | None:
    """Bytes that can be allocated without swapping (psutil's `available`: MemAvailable on Linux)."""
    import psutil

    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):
        return None


def requested(environ=os.environ) -> int | None:
    """The worker count ``MDSHIP_BUILD_WORKERS`` asks for (None: unset, mdship decides)."""
    wanted = environ.get(VARIABLE, "")
    if not wanted:
        return None
    if not wanted.isdigit() or int(wanted) < 1:
        raise UserError(f"{VARIABLE}={wanted!r}: expected a positive whole number of worker processes "
                        f"(1 builds every program in the build's own process)")
    return int(wanted)


def count(component_bytes: dict[str, int], checkpoint_bytes: int, environ=os.environ,
          available: int | None = -1) -> int:
    """How many workers build the programs of `component_bytes` (missing component -> its fp32 parameter bytes),
    the checkpoint's modules being `checkpoint_bytes` in all; 1 means: in the build's own process.

    ``MDSHIP_BUILD_WORKERS`` decides where set; otherwise the CPUs allowed, the components missing and the memory
    estimate against `available` bytes (default: what the machine has now) do."""
    wanted = requested(environ)
    if wanted is not None:
        return min(wanted, max(1, len(component_bytes)))
    available = mem_available() if available == -1 else available
    if available is None:
        return 1
    n = min(threads.cpus_allowed(), len(component_bytes))
    largest = sorted(component_bytes.values(), reverse=True)
    while n > 1 and sum(estimate(b, checkpoint_bytes) for b in largest[:n]) > available / 2:
        n -= 1
    return max(1, n)


def estimate(component: int, checkpoint: int) -> int:
    """A worker's peak memory in bytes while it lowers a component of `component` fp32 bytes."""
    return WORKER_BASE_BYTES + checkpoint + LOWERING_COPIES * component


def _start() -> None:
    """In each worker, before its first job: quiet third-party logs, and death with the build (a killed build leaves
    no worker behind)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    from mdship.quiet import quiet_toolchain

    quiet_toolchain()


def _build(job: Job) -> dict:
    """A worker's job: the component's program into the cache; returns the worker's cache statistics."""
    from mdship.build import Builder
    from mdship.cache import Cache

    cache = Cache(job.cache_root, remote=job.cache_remote)
    builder = Builder(job.recipe, cache=cache, progress=False)
    target = next(t for t in job.recipe.targets if t.name == job.target)
    builder.component(target, job.component)
    return {"stats": cache.stats, "built": cache.built}


def run(jobs: list[Job], workers: int, done: Callable[[Job], None] = lambda _: None) -> list[dict]:
    """Build `jobs` (largest first) in `workers` processes; `done(job)` as each finishes. Returns each worker's
    cache statistics. A job's UserError or VerificationError is raised here as it was raised there."""
    results = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start) as pool:
        futures = {pool.submit(_build, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                results.append(future.result())
                done(futures[future])
        except BrokenProcessPool as e:
            raise UserError(f"a build worker process died ({e}): out of memory, or a script that starts a build "
                            f"without an `if __name__ == '__main__':` guard; run with {VARIABLE}=1 to build in one "
                            f"process") from None
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results
