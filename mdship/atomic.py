"""Every directory and file mdship writes appears whole or not at all: written beside its final place, then swapped in.

* `atomic_dir(final)`: checkpoints, cache entries and bundles. A new directory is renamed into place; an existing
  one is exchanged with the new one in a single step (Linux `renameat2(RENAME_EXCHANGE)`, through ctypes: Python has
  no binding), so a kill at any moment leaves either the old or the new directory at `final`, never neither.
  Where the exchange is unavailable (another OS, a file system without it) the old directory is renamed aside
  first, and the next `atomic_dir` on that path puts it back if the process died in between.
* Temp directories are named `.NAME.tmp-HOST-PID-*` (and `.NAME.old-HOST-PID`), so the next write into the same
  directory removes those of dead processes of this host: a killed build leaves no lasting litter, and a live
  build (or one on another machine sharing the directory) is never touched.
* `atomic_file(final)`: single files (PNG images, reports) the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _tag() -> str:
    return f"{socket.gethostname().replace('-', '_')[:32]}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_entry(name: str) -> bool:
    """Whether a `.X.tmp-HOST-PID-*` / `.X.old-HOST-PID` name belongs to a dead process of this host."""
    for marker in (".tmp-", ".old-"):
        if marker in name:
            host, _, rest = name.rsplit(marker, 1)[1].partition("-")
            pid = rest.split("-", 1)[0]
            return host == _tag().split("-")[0] and pid.isdigit() and not _alive(int(pid))
    return False


def sweep(parent: Path, name: str | None = None) -> None:
    """Remove dead processes' temp entries in ``parent``; first put back a `.NAME.old-*` whose swap never finished."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if not entry.name.startswith(".") or not _dead_entry(entry.name):
            continue
        stem = entry.name[1:].rsplit(".old-", 1)[0] if ".old-" in entry.name else None
        if stem is not None and not (parent / stem).exists():
            os.replace(entry, parent / stem)  # the swap was interrupted between its two renames: restore
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False when the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        return
    old = final.with_name(f".{final.name}.old-{_tag()}")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temp directory beside ``final``; on success it replaces ``final``, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:40]}.tmp-{_tag()}-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success it is renamed over ``final``, on error removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep(final.parent)
    tmp = final.with_name(f".{final.name[:40]}.tmp-{_tag()}-file")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
