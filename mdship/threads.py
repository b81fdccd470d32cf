"""mdship's thread policy: how many threads, and how idle threads wait, for builds, runners and benchmarks alike.

Chosen once, when the `mdship` package is imported (before torch, whose OpenMP runtime reads the environment only
at start-up), and only where the user has not chosen:

* ``OMP_NUM_THREADS``: the CPUs this process may use: its affinity mask (``os.sched_getaffinity``), capped by a
  cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``, what a container or CI runner is granted). ``os.cpu_count()``
  counts the host's cores, which a container may not have.
* ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning. On a shared machine (CI runners, a
  developer box with other jobs) spinning threads fight the work for the same cores: one 64 px eager image took
  73 s with the defaults and 1.9 s with PASSIVE on a loaded 2-core machine, pixel-identical (issue #16).

``MDSHIP_THREADS=N`` overrides the count; an ``OMP_NUM_THREADS`` or ``OMP_WAIT_POLICY`` already set is kept as it is.
The ExecuTorch thread pool (XNNPACK's pthreadpool, sized to the core count by default) is resized to the same count
by `mdship.programs.runtime` unless a command passes ``--threads``. `describe()` is what results and logs record.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpus_allowed(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 quota (rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def chosen(environ=os.environ, cpu_max: Path = CGROUP_CPU_MAX) -> dict[str, str]:
    """The OpenMP variables mdship would set: {name: value}, without those the environment already sets."""
    threads = environ.get("MDSHIP_THREADS") or str(cpus_allowed(cpu_max))
    if not threads.isdigit() or int(threads) < 1:
        raise ValueError(f"MDSHIP_THREADS={threads!r}: expected a positive integer")
    wanted = {"OMP_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}
    return {k: v for k, v in wanted.items() if k not in environ}


def apply(environ=os.environ) -> None:
    """Set the policy's variables in `environ` where unset (call before torch is imported)."""
    try:
        environ.update(chosen(environ))
    except ValueError as e:  # a bad MDSHIP_THREADS: say so once, keep the libraries' defaults
        import sys
        print(f"mdship: {e}; using the libraries' thread defaults", file=sys.stderr)


def threads(environ=os.environ) -> int:
    """The thread count in force: OMP_NUM_THREADS (set by `apply` or the user), else the CPUs allowed."""
    value = environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else cpus_allowed()


def describe(environ=os.environ) -> dict:
    """What a result records: the thread count, the wait policy, and the CPUs the process may use."""
    return {"threads": threads(environ), "omp_wait_policy": environ.get("OMP_WAIT_POLICY", "default"),
            "cpus_allowed": cpus_allowed(), "mdship_threads": environ.get("MDSHIP_THREADS")}
