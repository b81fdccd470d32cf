"""A content-addressed cache for stage outputs.

Every stage output lives in `<root>/<stage>/<key>/`, where `key` hashes everything the output depends on
(checkpoint hash, the recipe section the stage reads, toolchain and mdship versions). An entry is written to
a temp directory and renamed into place, so a killed build never leaves a half entry that looks complete.
Root: $MDSHIP_CACHE_DIR, else ~/.cache/mdship.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from mdship.atomic import atomic_dir


@lru_cache(maxsize=1)
def toolchain_versions() -> dict[str, str]:
    from importlib.metadata import version

    import mdship

    versions = {"mdship": mdship.__version__}
    for pkg in ("torch", "executorch", "torchao", "coremltools", "transformers"):
        try:
            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as absent
            versions[pkg] = "absent"
    return versions


#: bumped whenever a stage's output changes for the same inputs (a new lowering rule, a new report field), so that
#: entries of an older mdship are never served to a newer one
EPOCH = 3  # 3: GroupNorm lowered from per-channel statistics (mdship.rewrites)


def make_key(*parts: Any) -> str:
    """sha256 of the canonical JSON of `parts` plus the toolchain versions and the cache epoch."""
    payload = json.dumps([EPOCH, toolchain_versions(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class Cache:
    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        default = os.environ.get("MDSHIP_CACHE_DIR") or Path.home() / ".cache" / "mdship"
        self.root = Path(root or default)
        self.enabled = enabled

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Path | None:
        path = self.path(stage, key)
        return path if self.enabled and (path / ".complete").exists() else None

    def put(self, stage: str, key: str, write: Callable[[Path], None]) -> Path:
        """Run `write(tmpdir)` and publish the directory atomically under (stage, key)."""
        final = self.path(stage, key)
        with atomic_dir(final) as tmp:
            write(tmp)
            (tmp / ".complete").write_text("")
        return final
