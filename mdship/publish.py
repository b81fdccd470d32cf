"""`mdship publish` / `mdship pull` / `mdship ci-matrix`: releases of bundles in a content-addressed store.

    <store>/                            a directory or s3://bucket/prefix (mdship.store)
      blobs/sha256/<hex>                every file of every published bundle, stored once
      index.json                        the release index: one entry per recipe x version x target

An index entry names the recipe, target, backend, version, checkpoint, the bundle's integrity root (the sha256 of
its manifest.json, as manifest.json.sha256 records it), its size, its quality figures (per-component PSNR against
eager fp32 with the gate, image PSNR / SSIM against the fp32 pipeline), whether it passed, and every file with its
sha256 and size. docs/publishing.md specifies the index.

Publishing is safe to re-run and to interrupt: every blob is uploaded first (skipped when the store has it),
read back and hashed; the index is replaced last, by a conditional write (mdship.store.Store.put_if) that is
retried on a fresh read when another publisher got there first. Until then the previous index is untouched, and
blobs nobody lists yet are harmless. A bundle whose recorded verification or gates failed is refused unless
`allow_failed` (the entry then says so). Pulling fetches every file into a temp directory beside `--out`, checks
each sha256 against the index and then the whole bundle (mdship.bundle), and renames the directory into place.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mdship.atomic import atomic_dir
from mdship.bundle import INTEGRITY, MANIFEST, Bundle, manifest_digest, sha256_file
from mdship.errors import BundleError, UserError, VerificationError
from mdship.store import Conflict, Store, StoreError, blob_key, fetch_blob, put_blob

INDEX = "index.json"
INDEX_FORMAT = "mdship-release-index"
INDEX_VERSION = 1
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
#: conditional index writes retried after losing to another publisher
ATTEMPTS = 8


# ---------------------------------------------------------------------------------------------- the index
def read_index(store: Store) -> tuple[dict, str | None]:
    """(index, version token); an empty index when the store has none. StoreError when it is not an index."""
    found = store.read(INDEX)
    if found is None:
        return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "releases": []}, None
    data, token = found
    where = f"{store.url}/{INDEX}"
    try:
        index = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{where}: not valid JSON ({e}); the store's index is damaged") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("releases"),
                                                                                              list):
        raise StoreError(f"{where}: not an mdship release index (expected format '{INDEX_FORMAT}'); "
                         f"is --to the right store?")
    if index.get("version") != INDEX_VERSION:
        raise StoreError(f"{where}: index version {index.get('version')!r} is not supported by this mdship "
                         f"(expected {INDEX_VERSION}); use a matching mdship")
    return index, token


def _index_bytes(index: dict) -> bytes:
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()


def _same_release(a: dict, b: dict) -> bool:
    return (a["recipe"], a["version"], a["target"]) == (b["recipe"], b["version"], b["target"])


# ---------------------------------------------------------------------------------------------- publish
def failures(bundle: Bundle) -> list[str]:
    """What the bundle's build recorded as failed: component verification below its gate, structural checks,
    the recipe's image gates (the build's judgement, mdship.stages.fidelity.check_gates)."""
    m, out = bundle.manifest, []
    for name, c in m.components.items():
        v = c.verification
        if not v.passed or v.psnr_db < v.gate_db:
            out.append(f"{name}: {v.mode} PSNR {v.psnr_db:.1f} dB is below the gate {v.gate_db:.1f} dB")
        if not c.structure.get("ok", True):
            out.append(f"{name}: structural checks failed")
    gates = (m.fidelity.gates or {}) if m.fidelity else {}
    if any(v is not None for v in gates.values()):
        from mdship.stages.fidelity import check_gates

        out.extend(check_gates(m.fidelity.model_dump(), gates.get("image_psnr_db"), gates.get("image_ssim")))
    return out


def _quality(m) -> dict:
    quality = {"verification": m.verification.mode,
               "components": {n: {"psnr_db": c.verification.psnr_db, "gate_db": c.verification.gate_db,
                                  "mode": c.verification.mode, "precision": c.precision, "bytes": c.bytes}
                              for n, c in m.components.items()}}
    if m.fidelity is not None:
        quality["images"] = {"psnr_db": {"mean": m.fidelity.image_psnr_db.mean, "worst": m.fidelity.image_psnr_db.worst},
                             "ssim": {"mean": m.fidelity.image_ssim.mean, "worst": m.fidelity.image_ssim.worst},
                             "prompts": m.fidelity.prompts, "mode": m.fidelity.mode, "gates": m.fidelity.gates}
    return quality


@dataclass
class Prepared:
    bundle: Bundle
    entry: dict  # the index entry
    paths: dict[str, Path]  # sha256 -> a file with that content


def prepare(path: str | Path, version: str, allow_failed: bool) -> Prepared:
    """Open and check one bundle (integrity root, every file's sha256, recorded gates); its index entry."""
    b = Bundle.open(path)
    b.verify_files()
    failed = failures(b)
    if failed and not allow_failed:
        raise VerificationError(f"{b.path}: not published, its build recorded failures ({'; '.join(failed)}); "
                                f"fix the recipe, or pass --allow-failed to publish it marked as failed")
    listed = b.expected_files()  # verify_files has just checked these
    files, paths = {}, {}
    for rel in sorted([*listed, MANIFEST, INTEGRITY]):
        file = b.path / rel
        digest = listed.get(rel) or sha256_file(file)
        files[rel] = {"sha256": digest, "bytes": file.stat().st_size}
        paths[digest] = file
    m = b.manifest
    entry = {"recipe": m.recipe.name, "version": version, "target": m.target.get("name", m.backend),
             "backend": m.backend, "recipe_hash": m.recipe.hash, "checkpoint": m.checkpoint.model_dump(),
             "resolution": m.resolution, "manifest_sha256": manifest_digest(b.path),
             "bytes": sum(f["bytes"] for f in files.values()), "quality": _quality(m),
             "passed": not failed, "failures": failed, "allow_failed": bool(failed),
             "versions": m.versions, "files": files}
    return Prepared(b, entry, paths)


@dataclass
class PublishResult:
    url: str
    version: str
    releases: list[str]  # recipe@version/target
    uploaded: int  # blobs
    uploaded_bytes: int
    stored: int  # blobs already in the store
    index: str  # "updated" | "unchanged"
    changed: list[str]  # the releases the index gained or replaced
    seconds: float

    def summary(self) -> str:
        if self.uploaded == 0 and self.index == "unchanged":
            return (f"nothing to upload: {len(self.releases)} bundle(s) already published as {self.version} at "
                    f"{self.url} ({self.stored} blobs already stored, index unchanged)")
        return (f"published {', '.join(self.releases)} to {self.url}: {self.uploaded} blobs uploaded "
                f"({self.uploaded_bytes / 2**20:.2f} MiB, each read back and hashed), {self.stored} already stored; "
                f"index {self.index} ({len(self.changed)} release(s) added or replaced) in {self.seconds:.1f} s")


def default_version() -> str:
    """`git describe --tags --always --dirty` of the current directory."""
    try:
        out = subprocess.run(["git", "describe", "--tags", "--always", "--dirty"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"--version: not given and `git describe` failed ({e}); pass --version V") from None
    if out.returncode != 0:
        raise UserError(f"--version: not given and `git describe` failed ({out.stderr.strip() or out.returncode}); "
                        f"run inside the git checkout, or pass --version V")
    return out.stdout.strip()


def check_version(version: str, name: str = "--version") -> str:
    if not VERSION_RE.match(version):
        raise UserError(f"{name} {version!r}: expected letters, digits and . _ + - (e.g. v1.2.0 or 1.2.0-3-gabc1234)")
    return version


def publish(bundles: list[str], store: Store, version: str | None = None, allow_failed: bool = False,
            progress: bool = True) -> PublishResult:
    started = time.time()
    if not bundles:
        raise UserError("no bundles given; expected bundle directories (the output of `mdship build`)")
    version = check_version(version or default_version())
    prepared = [prepare(p, version, allow_failed) for p in bundles]
    seen: dict[tuple, Path] = {}
    for p in prepared:
        k = (p.entry["recipe"], p.entry["target"])
        if k in seen:
            raise UserError(f"{p.bundle.path}: same recipe and target as {seen[k]} ({k[0]}/{k[1]}); publish one")
        seen[k] = p.bundle.path
    read_index(store)  # a store whose index is damaged is refused before anything is uploaded

    blobs: dict[str, Path] = {d: f for p in prepared for d, f in p.paths.items()}
    uploaded = uploaded_bytes = 0
    with tqdm(total=sum(f.stat().st_size for f in blobs.values()), unit="B", unit_scale=True, desc="publish",
              disable=not progress, leave=False) as bar:
        for digest, file in sorted(blobs.items()):
            size = file.stat().st_size
            if put_blob(store, file, digest, size):
                uploaded, uploaded_bytes = uploaded + 1, uploaded_bytes + size
            bar.update(size)

    changed: list[str] = []
    for _ in range(ATTEMPTS):
        index, token = read_index(store)
        releases, changed = index["releases"], []
        for p in prepared:
            old = next((r for r in releases if _same_release(r, p.entry)), None)
            if old is not None and old["manifest_sha256"] == p.entry["manifest_sha256"] and \
                    old.get("allow_failed") == p.entry["allow_failed"]:
                continue
            entry = {**p.entry, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            releases[:] = [r for r in releases if not _same_release(r, p.entry)] + [entry]
            changed.append(_name(entry))
        if not changed:
            break
        try:
            store.put_if(INDEX, _index_bytes(index), token)
            break
        except Conflict:
            continue  # another publisher wrote the index since it was read: merge into theirs
    else:
        raise StoreError(f"{store.url}/{INDEX}: changed by other publishers {ATTEMPTS} times in a row; try again")
    return PublishResult(store.url, version, [_name(p.entry) for p in prepared], uploaded, uploaded_bytes,
                         len(blobs) - uploaded, "updated" if changed else "unchanged", changed,
                         time.time() - started)


def _name(entry: dict) -> str:
    return f"{entry['recipe']}@{entry['version']}/{entry['target']}"


# ---------------------------------------------------------------------------------------------- pull
def select(index: dict, spec: str, where: str) -> list[dict]:
    """The entries of `RECIPE[@VERSION]`: every target of that version; without one, the recipe's newest."""
    recipe, _, version = spec.partition("@")
    mine = [r for r in index["releases"] if r["recipe"] == recipe]
    if not mine:
        names = sorted({r["recipe"] for r in index["releases"]})
        raise UserError(f"{where}: no releases of recipe '{recipe}'; published: {', '.join(names) or 'none'}")
    if not version:
        version = max(mine, key=lambda r: r["published"])["version"]
    chosen = [r for r in mine if r["version"] == version]
    if not chosen:
        versions = sorted({r["version"] for r in mine})
        raise UserError(f"{where}: recipe '{recipe}' has no version '{version}'; published: {', '.join(versions)}")
    return sorted(chosen, key=lambda r: r["target"])


@dataclass
class PullResult:
    out: Path
    releases: list[dict]
    files: int
    bytes: int
    seconds: float

    def summary(self) -> str:
        names = ", ".join(_name(r) for r in self.releases)
        return (f"pulled {names} into {self.out} ({self.files} files, {self.bytes / 2**20:.2f} MiB, every sha256 "
                f"checked) in {self.seconds:.1f} s")


def _check_out(out: Path) -> None:
    """--out is new, empty, or a previous pull (only bundle directories): it is then replaced whole."""
    from mdship.inputs import check_output_dir

    check_output_dir(out, "--out")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not (p.is_dir() and (p / MANIFEST).is_file())]
        if foreign:
            raise UserError(f"--out {out}: holds files that are not bundles ({', '.join(sorted(foreign)[:3])}); "
                            f"expected a new directory, or a previous pull to replace")


def pull(store: Store, spec: str, out: str | Path, progress: bool = True) -> PullResult:
    started = time.time()
    out = Path(out)
    _check_out(out)
    where = f"{store.url}/{INDEX}"
    index, token = read_index(store)
    if token is None:
        raise UserError(f"{where}: no release index; nothing was published to {store.url} (check the URL)")
    releases = select(index, spec, where)
    total = sum(r["bytes"] for r in releases)
    with atomic_dir(out) as tmp, tqdm(total=total, unit="B", unit_scale=True, desc="pull", disable=not progress,
                                      leave=False) as bar:
        for r in releases:
            root = tmp / r["target"]
            for rel, f in sorted(r["files"].items()):
                dest = root / rel
                if not dest.resolve().is_relative_to(root.resolve()):
                    raise BundleError(f"{where}: {_name(r)} lists '{rel}', outside the bundle; the index is damaged")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as fout:
                    fetch_blob(store, f["sha256"], fout, bar.update)
            b = Bundle.open(root)
            b.verify_files()
            if manifest_digest(root) != r["manifest_sha256"]:
                raise BundleError(f"{where}: {_name(r)}: the bundle's integrity root is not the index's "
                                  f"manifest_sha256; the index is damaged")
    return PullResult(out, releases, sum(len(r["files"]) for r in releases), total, time.time() - started)


# ---------------------------------------------------------------------------------------------- CI matrix
def ci_matrix(recipes: list[str], directory: str | Path = "recipes") -> dict:
    """A GitHub Actions matrix of recipe x target: {"include": [{recipe, name, target, backend}, ...]}. Without
    RECIPES: every shipped recipe in `directory`."""
    from mdship.recipe import load_recipe

    if not recipes:
        if not Path(directory).is_dir():
            raise UserError(f"{directory}: recipe folder not found (run from the project root or pass --dir)")
        recipes = [str(p) for p in sorted(Path(directory).glob("*.yaml"))]  # bases live in subfolders
    include = []
    for path in recipes:
        r = load_recipe(path)
        include += [{"recipe": str(path), "name": r.name, "target": t.name, "backend": t.backend} for t in r.targets]
    return {"include": include}
