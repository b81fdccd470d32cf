"""Where published bundles and the shared stage cache live: a directory or an S3 bucket, content-addressed.

    <store>/
      blobs/sha256/<hex>            every file, stored once under its sha256 (bundle files, stage cache files)
      index.json                    the release index (mdship.publish)
      cache/<stage>/<key>.json      a remote stage-cache entry: its files' sha256s and sizes (mdship.cache)

A `Store` is a few key -> bytes operations, implemented for a directory (`DirStore`) and for S3 or an
S3-compatible server (`S3Store`, boto3; `--endpoint-url`, or the usual AWS environment variables:
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).

* A blob is written whole or not at all (a directory store writes beside it and renames; an S3 PUT is atomic),
  then read back and hashed (`put_blob`); a blob whose sha256 is not its name is never used (`fetch_blob`).
* Small files that change (the release index) are replaced by a conditional write (`put_if`): it succeeds only if
  the file is still the version that was read, so two publishers never lose each other's releases. A directory
  store takes a lock file (fcntl) and compares the sha256 of the current content; S3 sends `If-None-Match: *` (a
  new file) or `If-Match: <etag>`. A server that rejects those headers is written unconditionally (once per
  process, with a note): the write stays atomic, only concurrent publishers could race.

Why not a library: fsspec/s3fs would give one interface over both, but no conditional writes and no read-back
check, which are most of this module; boto3 is already a dependency.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Protocol

from mdship.atomic import atomic_file
from mdship.errors import UserError

BLOBS = "blobs/sha256"
CHUNK = 1 << 22


class StoreError(UserError):
    """A store that cannot be reached, read or written (one line: the URL, what failed, what to do)."""


class Conflict(Exception):
    """A conditional write lost: the file changed since it was read."""


class CorruptBlob(StoreError):
    """A blob whose content does not hash to its name (`key`: where it is in the store)."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def blob_key(digest: str) -> str:
    return f"{BLOBS}/{digest}"


class Store(Protocol):
    url: str

    def size(self, key: str) -> int | None:
        """The size of `key` in bytes, None when absent."""

    def read(self, key: str) -> tuple[bytes, str] | None:
        """(content, version token for `put_if`), None when absent. For small files."""

    def chunks(self, key: str) -> Iterator[bytes]:
        """The content of `key`, streamed; StoreError when absent."""

    def put_file(self, key: str, path: Path) -> None:
        """Write `path` under `key`, whole or not at all."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` under `key`, whole or not at all (unconditionally)."""

    def put_if(self, key: str, data: bytes, token: str | None) -> None:
        """Write `data` only if `key` is still at version `token` (None: only if absent); Conflict otherwise."""

    def delete(self, key: str) -> None: ...


# ---------------------------------------------------------------------------------------------- directory
class DirStore:
    """A store in a local (or mounted) directory; created on the first write."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{self._path(key)}: cannot read ({e.strerror}); check the store's permissions") from None

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{self._path(key)}: cannot read ({e.strerror}); check the store's permissions") from None
        return data, hashlib.sha256(data).hexdigest()

    def chunks(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError:
            raise StoreError(f"{self._path(key)}: missing from the store (it was deleted, or never written)") from None
        with f:
            yield from iter(lambda: f.read(CHUNK), b"")

    def put_file(self, key: str, path: Path) -> None:
        self._write(key, lambda tmp: _copy(path, tmp))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda tmp: tmp.write_bytes(data))

    def put_if(self, key: str, data: bytes, token: str | None) -> None:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.with_name(f".{final.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
            current = self.read(key)
            if (current[1] if current else None) != token:
                raise Conflict(key)
            self._write(key, lambda tmp: tmp.write_bytes(data))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _write(self, key: str, write: Callable[[Path], object]) -> None:
        try:
            with atomic_file(self._path(key)) as tmp:
                write(tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        except OSError as e:
            raise StoreError(f"{self._path(key)}: cannot write ({e.strerror}); check the store's permissions and "
                             f"free space") from None


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for block in iter(lambda: fin.read(CHUNK), b""):
            fout.write(block)


# ---------------------------------------------------------------------------------------------- S3
#: what servers answer to a conditional header they do not implement
_UNSUPPORTED = {"NotImplemented", "InvalidArgument", "InvalidRequest", "UnsupportedHeader"}


class S3Store:
    """`s3://bucket/prefix` on AWS or any S3-compatible server (`endpoint_url`)."""

    def __init__(self, url: str, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config

        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise StoreError(f"{url}: no bucket; expected s3://BUCKET[/PREFIX]")
        self.url, self.bucket, self.prefix = url.rstrip("/"), bucket, prefix.strip("/")
        self.conditional = True  # False once the server rejected a conditional header
        self.client = boto3.client("s3", endpoint_url=endpoint_url or None,
                                   config=Config(retries={"max_attempts": 5, "mode": "standard"}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, e: Exception, key: str, doing: str) -> StoreError:
        from botocore.exceptions import ClientError, NoCredentialsError

        where = f"{self.url}/{key}"
        if isinstance(e, NoCredentialsError):
            return StoreError(f"{where}: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
                              f"--endpoint-url or AWS_ENDPOINT_URL_S3 for an S3-compatible server)")
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "?")
            if code == "NoSuchBucket":
                return StoreError(f"s3://{self.bucket}: no such bucket; create it, or check the URL and endpoint")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StoreError(f"{where}: access denied ({code}) while trying to {doing}; check the credentials "
                                  f"and the bucket policy")
            return StoreError(f"{where}: cannot {doing} ({code}: {e.response.get('Error', {}).get('Message', '')})")
        return StoreError(f"{where}: cannot {doing} ({' '.join(str(e).split())}); check the endpoint and network")

    @staticmethod
    def _missing(e: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey",
                                                                                           "NotFound")

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception as e:  # noqa: BLE001 - botocore's errors, mapped to one line
            if self._missing(e):
                return None
            raise self._fail(e, key, "look it up") from None

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return r["Body"].read(), r["ETag"]
        except Exception as e:  # noqa: BLE001
            if self._missing(e):
                return None
            raise self._fail(e, key, "read it") from None

    def chunks(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            yield from body.iter_chunks(CHUNK)
        except Exception as e:  # noqa: BLE001
            if self._missing(e):
                raise StoreError(f"{self.url}/{key}: missing from the store (deleted, or never written)") from None
            raise self._fail(e, key, "read it") from None

    def put_file(self, key: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key))
        except Exception as e:  # noqa: BLE001
            raise self._fail(getattr(e, "last_exception", None) or e, key, "upload it") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, key, "write it") from None

    def put_if(self, key: str, data: bytes, token: str | None) -> None:
        from botocore.exceptions import ClientError

        args = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if self.conditional:
            condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
            try:
                self.client.put_object(**args, **condition)
                return
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                    raise Conflict(key) from None
                if code not in _UNSUPPORTED and status != 501:
                    raise self._fail(e, key, "write it") from None
                self.conditional = False
                print(f"note: {self.url} rejects conditional writes ({code}); writing {key} unconditionally "
                      f"(atomic, but concurrent publishers may race)", file=sys.stderr)
            except Exception as e:  # noqa: BLE001
                raise self._fail(e, key, "write it") from None
        current = self.read(key)
        if (current[1] if current else None) != token:  # the best an unconditional store allows
            raise Conflict(key)
        try:
            self.client.put_object(**args)
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, key, "write it") from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, key, "delete it") from None


def open_store(url: str, endpoint_url: str | None = None, what: str = "--to", existing: bool = False) -> Store:
    """The store at `url`: `s3://bucket/prefix`, or a directory path (`existing`: it must be there already)."""
    url = str(url)
    if url.startswith("s3://"):
        return S3Store(url, endpoint_url)
    if "://" in url:
        raise StoreError(f"{what} {url}: unsupported scheme; expected a directory or s3://BUCKET/PREFIX")
    if Path(url).exists() and not Path(url).is_dir():
        raise StoreError(f"{what} {url}: is a file; expected a directory or s3://BUCKET/PREFIX")
    if existing and not Path(url).is_dir():
        raise StoreError(f"{what} {url}: no such store; expected a directory or s3://BUCKET/PREFIX that was "
                         f"published to")
    return DirStore(url)


# ---------------------------------------------------------------------------------------------- blobs
def put_blob(store: Store, path: Path, digest: str, size: int) -> bool:
    """Store `path` as the blob `digest` unless a blob of that size is there; read it back and hash it.
    True when uploaded. CorruptBlob (and the blob removed) when the read-back differs."""
    key = blob_key(digest)
    if store.size(key) == size:
        return False
    store.put_file(key, path)
    got = hashlib.sha256()
    for block in store.chunks(key):
        got.update(block)
    if got.hexdigest() != digest:
        store.delete(key)
        raise CorruptBlob(f"{store.url}/{key}: read back as sha256 {got.hexdigest()[:16]}..., not what was "
                          f"uploaded ({path}); the store changed the file; try again", key)
    return True


def fetch_blob(store: Store, digest: str, out: BinaryIO, progress: Callable[[int], object] = lambda n: None) -> None:
    """Write the blob `digest` to `out`, hashing as it streams; CorruptBlob when the content is not `digest`."""
    got = hashlib.sha256()
    for block in store.chunks(blob_key(digest)):
        got.update(block)
        out.write(block)
        progress(len(block))
    if got.hexdigest() != digest:
        raise CorruptBlob(f"{store.url}/{blob_key(digest)}: content hashes to sha256 {got.hexdigest()[:16]}..., not "
                          f"its name; the store's copy is corrupted: republish it (or delete the blob)", blob_key(digest))
