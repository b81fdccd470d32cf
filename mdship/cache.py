"""A content-addressed cache for stage outputs, local first and an optional shared remote second.

Every stage output lives in `<root>/<stage>/<key>/`, where `key` hashes everything the output depends on
(checkpoint hash, the recipe section the stage reads, toolchain and mdship versions). An entry is written to
a temp directory and renamed into place, so a killed build never leaves a half entry that looks complete.
Root: $MDSHIP_CACHE_DIR, else ~/.cache/mdship.

The remote tier ($MDSHIP_CACHE_URL: `s3://bucket/prefix` or a directory, mdship.store) lets CI runners share what
they built: a matrix job reuses the exports, lowered programs and calibration recordings another job made.

* `get`: the local entry; else the remote entry `cache/<stage>/<key>.json` (its files' sha256s), whose blobs
  (`blobs/sha256/<hex>`) are fetched into a new local entry, each hashed as it arrives. A blob that does not hash
  to its name makes the entry a miss: the stage is rebuilt, the corrupt blob and the listing are removed from
  the remote, and the rebuild uploads them again. A corrupt remote entry is never used.
* `put`: the local entry, then (remote configured) its files as blobs, each read back and hashed, and the
  listing last. A local hit is not uploaded again: the remote holds what was built or fetched with it set.
* A remote that cannot be reached or written is reported once (one line) and left alone for the rest of the
  run: the build goes on with the local cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from mdship.atomic import atomic_dir
from mdship.store import CorruptBlob, Store, StoreError, fetch_blob, open_store, put_blob


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
EPOCH = 5  # 3: methods per program (several sizes); 4: GroupNorm from per-channel statistics (mdship.rewrites);
#           5: fp16 norms' variance as a product of two operands (XNNPACK computes them in fp16)


def make_key(*parts: Any) -> str:
    """sha256 of the canonical JSON of `parts` plus the toolchain versions and the cache epoch."""
    payload = json.dumps([EPOCH, toolchain_versions(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class Cache:
    """The stage cache: `root` (default $MDSHIP_CACHE_DIR, else ~/.cache/mdship) and `remote` (default
    $MDSHIP_CACHE_URL; "" for none). `enabled=False` (`--force`) reads nothing but still writes both tiers."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True, remote: str | Store | None = None):
        default = os.environ.get("MDSHIP_CACHE_DIR") or Path.home() / ".cache" / "mdship"
        self.root = Path(root or default)
        self.enabled = enabled
        remote = os.environ.get("MDSHIP_CACHE_URL", "") if remote is None else remote
        self.remote: Store | None = (open_store(remote, what="MDSHIP_CACHE_URL") if isinstance(remote, str)
                                     else remote) if remote else None
        self.remote_url = self.remote.url if self.remote is not None else None
        #: what this run did: entries read locally, fetched from the remote, built here, uploaded; the stages built
        self.stats = {"local": 0, "remote": 0, "built": 0, "uploaded": 0, "corrupt": 0}
        self.built: list[str] = []

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Path | None:
        path = self.path(stage, key)
        if not self.enabled:
            return None
        if (path / ".complete").exists():
            self.stats["local"] += 1
            return path
        if self.remote is not None and self._fetch(stage, key):
            self.stats["remote"] += 1
            return path
        return None

    def put(self, stage: str, key: str, write: Callable[[Path], None]) -> Path:
        """Run `write(tmpdir)` and publish the directory atomically under (stage, key), then to the remote."""
        final = self.path(stage, key)
        with atomic_dir(final) as tmp:
            write(tmp)
            (tmp / ".complete").write_text("")
        self.stats["built"] += 1
        self.built.append(stage)
        if self.remote is not None:
            self._upload(stage, key, final)
        return final

    def summary(self) -> str | None:
        """One line about the remote tier (None without one)."""
        if self.remote_url is None:
            return None
        s = self.stats
        return (f"remote cache {self.remote_url}: {s['remote']} entries fetched, {s['uploaded']} uploaded, "
                f"{s['built']} built here, {s['local']} local hits" + (f", {s['corrupt']} corrupt entries rebuilt"
                                                                        if s["corrupt"] else ""))

    # ------------------------------------------------------------------ the remote tier
    @staticmethod
    def _listing(stage: str, key: str) -> str:
        return f"cache/{stage}/{key}.json"

    def _fetch(self, stage: str, key: str) -> bool:
        remote, listing = self.remote, self._listing(stage, key)
        try:
            found = remote.read(listing)
            if found is None:
                return False
            try:
                files = json.loads(found[0])["files"]
                entries = [(rel, f["sha256"]) for rel, f in files.items()]
                if any(Path(rel).is_absolute() or ".." in Path(rel).parts for rel, _ in entries):
                    raise ValueError("a path outside the entry")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                _warn(f"remote cache: {remote.url}/{listing} is damaged ({e}); rebuilding {stage}")
                self.stats["corrupt"] += 1
                remote.delete(listing)
                return False
            try:
                with atomic_dir(self.path(stage, key)) as tmp:
                    for rel, digest in entries:
                        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                        with open(tmp / rel, "wb") as out:
                            fetch_blob(remote, digest, out)
                    (tmp / ".complete").write_text("")
            except CorruptBlob as e:
                _warn(f"remote cache: {e}; not used: rebuilding {stage} and replacing it")
                self.stats["corrupt"] += 1
                remote.delete(e.key)
                remote.delete(listing)
                return False
            return True
        except StoreError as e:
            self._remote_failed(e)
            return False

    def _upload(self, stage: str, key: str, entry: Path) -> None:
        from mdship.bundle import sha256_file

        try:
            files = {}
            for file in sorted(p for p in entry.rglob("*") if p.is_file() and p.name != ".complete"):
                digest, size = sha256_file(file), file.stat().st_size
                put_blob(self.remote, file, digest, size)
                files[file.relative_to(entry).as_posix()] = {"sha256": digest, "bytes": size}
            self.remote.put_bytes(self._listing(stage, key), json.dumps({"files": files}, indent=1).encode())
            self.stats["uploaded"] += 1
        except StoreError as e:
            self._remote_failed(e)

    def _remote_failed(self, e: StoreError) -> None:
        _warn(f"remote cache: {e}; going on with the local cache only")
        self.remote = None


def _warn(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(" ".join(line.split()), file=sys.stderr)
