"""Write a directory so that nobody ever sees it half-written: build it beside its final place, then rename.

Used for checkpoints, cache entries and bundles alike; a killed process leaves at most a hidden `.NAME.tmp-*`
directory, never a `NAME` that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temp directory beside ``final``; on success it replaces ``final``, on error it is removed.

    An existing ``final`` is first renamed aside and deleted only once the new directory is in place, so a crash
    in between loses nothing that was complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:40]}.tmp-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        old = None
        if final.exists():
            old = final.with_name(f".{final.name[:40]}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
