"""The mdship bundle: the directory `mdship build` writes and every reader (the Python runner, reports, the C++
runner in runner/src/bundle.cpp) reads. This module is the format and nothing else; writers and readers import it,
never each other.

    <bundle>/
      manifest.json                         `Manifest`: what is in the bundle, how it was built, what it loses
      manifest.json.sha256                  the integrity root: sha256 of manifest.json ("<hex>  manifest.json",
                                            the format of `sha256sum -c`)
      text_encoder.pte unet.pte vae_decoder.pte    one ExecuTorch program per component ("forward" method)
      tokenizer/                            CLIP tokenizer files (vocab.json, merges.txt, ...)
      scheduler.json                        the checkpoint's scheduler config + "sampler" (the recipe's settings)
      test_vectors/<component>.safetensors  inputs and eager fp32 outputs: "{i}/input/{name}", "{i}/expected"

`manifest.json` lists the sha256 of every other file, and `manifest.json.sha256` holds the manifest's own: one
digest covers every byte of the bundle (a publish index records the same digest). `Bundle.open` checks it and
validates the manifest against `Manifest` (a missing or mistyped field is one line naming it);
`Bundle.verify_files` checks every other file. A bundle is written into a temp directory beside its final place
and swapped into place (`write`): a failed or interrupted build never leaves a directory that looks like a
complete bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from mdship.atomic import atomic_dir
from mdship.errors import BundleError

SCHEMA_VERSION = 2  # 2: manifest.json.sha256 (the integrity root)

#: program input and output names per component, in call order (the runners use these)
COMPONENT_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text_encoder": (("input_ids",), ("hidden_states",)),
    "unet": (("sample", "timestep", "context"), ("prediction",)),
    "vae_decoder": (("latent",), ("image",)),
}
#: the components of a bundle, in pipeline order
COMPONENTS = tuple(COMPONENT_IO)

MANIFEST = "manifest.json"
INTEGRITY = "manifest.json.sha256"
SCHEDULER = "scheduler.json"
TOKENIZER = "tokenizer"
VECTORS = "test_vectors"


def program_file(component: str) -> str:
    return f"{component}.pte"


def vectors_file(component: str, method: str = "forward") -> str:
    return f"{VECTORS}/{component}.safetensors" if method == "forward" else f"{VECTORS}/{component}.{method}.safetensors"


# ---------------------------------------------------------------------------------------------- manifest
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Model):
    name: str
    shape: list[int]
    dtype: str  # torch dtype name without "torch.": float32, int64, ...

    @classmethod
    def of(cls, name: str, tensor) -> TensorSpec:
        return cls(name=name, shape=list(tensor.shape), dtype=str(tensor.dtype).removeprefix("torch."))


class Verification(_Model):
    """A component's program against eager fp32 on its test vectors (worst vector)."""

    mode: Literal["executed", "simulated"]
    psnr_db: float
    per_vector_psnr_db: list[float]
    gate_db: float
    passed: bool
    simulated_as: Optional[str] = None  # simulated only: what ran instead of the delegate
    vectors_from: str
    vectors: str  # path of the test vectors, relative to the bundle


class MethodEntry(_Model):
    """A further method of a component's program: the same weights at another image size or UNet batch."""

    name: str  # e.g. res384_b2 (UNet), res384 (decoder)
    resolution: int  # the image size in pixels it serves
    batch: int  # the UNet batch (2: guidance as one call; 1: two calls, or no guidance); 1 otherwise
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    verification: Verification


class ComponentEntry(_Model):
    """A component's program: its `forward` method (the default image size and guidance mode) is described by
    inputs / outputs / verification; `methods` lists any further ones (several sizes or guidance modes)."""

    file: str
    backend: str
    precision: str
    sha256: str
    bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # delegate coverage (mdship.coverage)
    partitions: int
    delegated_ops: int
    non_delegated_ops: int
    fallback_ops: dict[str, int]
    flops: int
    delegated_flops: int
    delegated_flops_share: Optional[float]
    partitions_by_backend: dict[str, int]
    fallback_flops: dict[str, int]
    quantization: dict[str, Any]  # the quantize stage's report (scheme, quantized, kept_float, skipped)
    verification: Verification
    program_dtype: str
    compute_dtype: str
    fp16_guard: Optional[dict[str, Any]] = None
    structure: dict[str, Any]  # the backend's structural checks ({"ok", "checks", ...})
    mlpackage: Optional[list[str]] = None  # Core ML `emit_mlpackage`: the unpacked models in the bundle
    methods: Optional[list[MethodEntry]] = None  # further methods, when the bundle serves several sizes or modes
    # published device failures of this component's formats on this target ("ANE-unverified: ..."), not refusals
    caveats: Optional[list[str]] = None


class Stat(_Model):
    mean: float
    worst: float
    per_prompt: list[float]


class Fidelity(_Model):
    """The bundle's images against the fp32 pipeline's (same prompts, seeds, initial latents)."""

    image_psnr_db: Stat
    image_ssim: Stat
    prompts: int
    seeds: list[int]
    mode: Literal["executed", "simulated"]
    eval_prompts: str
    gates: Optional[dict[str, Optional[float]]] = None  # the recipe's image gates the build judged (null: none)
    seconds: Optional[float] = None  # wall time the candidate (programs, or simulated twins) took for the images


class RecipeInfo(_Model):
    name: str
    hash: str


class CheckpointInfo(_Model):
    ref: str
    hash: str  # of the checkpoint's files, and of the LoRA adapters merged into it
    lora: Optional[list[dict[str, Any]]] = None  # adapters merged into the weights: path, sha256, scale, target


class SamplerInfo(_Model):
    kind: str
    steps: int
    guidance: float
    guidance_mode: str  # batch2 | two_calls | none


class VerificationSummary(_Model):
    mode: Literal["executed", "simulated", "mixed"]
    note: Optional[str] = None


class DeviceComponent(_Model):
    psnr_db: float
    gate_db: float
    passed: bool


class DeviceModel(_Model):
    """One CPU model's run of the bundle on a device (mdship.devices): test vectors, one image, what ran."""

    cpu: str  # e.g. qemu's -cpu model
    role: str  # the real CPUs it stands for
    features: list[str]  # what the kernels dispatch on (HWCAP names: asimddp, fphp, i8mm, sme, ...)
    components: dict[str, DeviceComponent] = {}
    image_psnr_vs_host_db: Optional[float] = None  # the prompt's image against the host runner's
    image_psnr_vs_eager_db: Optional[float] = None  # ... and against the eager fp32 pipeline's
    operators: dict[str, list[str]] = {}  # component -> the operators that ran (ETDump; the delegate's by name)
    microkernels: list[str] = []  # KleidiAI routines that ran (kai_run_*)
    error: Optional[str] = None  # the runner failed on this model (one line)
    excluded: Optional[str] = None  # why this model does not count (an emulator artefact), with the evidence
    passed: bool


class DeviceVerification(_Model):
    """The bundle executed on another instruction set (mdship.devices), per CPU model."""

    device: str  # arm64-qemu
    mode: Literal["emulated", "device"]
    emulator: Optional[str] = None
    runner: str
    note: str
    prompt: Optional[str] = None  # the eval prompt whose image is compared
    seed: int
    models: dict[str, DeviceModel]
    passed: bool  # every model that is not excluded passed


class Manifest(_Model):
    schema_version: int
    recipe: RecipeInfo
    checkpoint: CheckpointInfo
    versions: dict[str, str]
    target: dict[str, Any]  # the recipe target (name, backend, fallback, backend options)
    resolution: int  # the default image size
    resolutions: Optional[list[int]] = None  # every size the bundle serves (when more than one), default first
    sampler: SamplerInfo
    components: dict[str, ComponentEntry]
    verification: VerificationSummary
    fidelity: Optional[Fidelity] = None
    devices: Optional[dict[str, DeviceVerification]] = None  # device name (arm64-qemu) -> its verification
    warnings: list[str]
    build: dict[str, Any]  # seconds, cpu_seconds, peak_rss_mb, threads (mdship.threads.describe), workers, cached, host
    files: dict[str, str] = {}  # relative path -> sha256, every file but manifest.json

    @property
    def backend(self) -> str:
        return self.target["backend"]

    def to_json(self) -> str:
        # exclude_unset: an optional field a build did not set is absent, as it was written
        return json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=2) + "\n"


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + str(part))
    return out


def parse_manifest(text: str, where: Path) -> Manifest:
    """Validate manifest.json's text; one-line BundleError naming the field at fault."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {version!r} is not supported by this mdship (expected "
                          f"{SCHEMA_VERSION}); rebuild the bundle with this version")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        raise BundleError(f"{where}: {_field_path(error['loc']) or 'manifest'}: {error['msg'][:1].lower()}"
                          f"{error['msg'][1:]}; the manifest is damaged, rebuild the bundle") from None
    missing = [c for c in COMPONENTS if c not in manifest.components]
    if missing:
        raise BundleError(f"{where}: components.{missing[0]}: missing from the manifest; rebuild the bundle")
    return manifest


# ---------------------------------------------------------------------------------------------- test vectors
def save_vectors(path: Path, vectors: list[tuple[tuple, Any]], input_names: tuple[str, ...]) -> None:
    """Test vectors as safetensors: "{i}/input/{name}" for each input, "{i}/expected" for the output."""
    from safetensors.torch import save_file

    flat = {}
    for i, (inputs, expected) in enumerate(vectors):
        for name, t in zip(input_names, inputs):
            flat[f"{i}/input/{name}"] = t.contiguous()
        flat[f"{i}/expected"] = expected.contiguous()
    save_file(flat, str(path))


def load_vectors(path: Path, input_names: tuple[str, ...]) -> list[tuple[list, Any]]:
    """[(inputs, expected), ...] in index order; one-line BundleError when unreadable or incomplete."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{path}: unreadable test vectors ({e})") from None
    vectors = []
    for i in sorted({int(k.split("/")[0]) for k in flat if k.split("/")[0].isdigit()}):
        keys = [f"{i}/input/{n}" for n in input_names] + [f"{i}/expected"]
        missing = [k for k in keys if k not in flat]
        if missing:
            raise BundleError(f"{path}: test vector '{missing[0]}' is missing")
        vectors.append(([flat[k] for k in keys[:-1]], flat[keys[-1]]))
    if not vectors:
        raise BundleError(f"{path}: no test vectors")
    return vectors


# ---------------------------------------------------------------------------------------------- reading
def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class Bundle:
    """An opened bundle: its directory and its validated manifest."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Read and validate a bundle's manifest; one-line BundleError for anything a user can get wrong."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root}: bundle directory not found (expected the output of `mdship build`, "
                              f"e.g. artifacts/default/xnnpack)")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{root}: no {MANIFEST}; not a bundle, or a build that did not finish")
        try:
            data = manifest_path.read_bytes()
        except OSError as e:
            raise BundleError(f"{manifest_path}: cannot read ({e.strerror or e})") from None
        check_integrity(root, data)
        return cls(root, parse_manifest(data.decode("utf-8", errors="replace"), manifest_path))

    @property
    def backend(self) -> str:
        return self.manifest.backend

    def component(self, name: str) -> ComponentEntry:
        return self.manifest.components[name]

    def file(self, relative: str) -> Path:
        """A file of the bundle; BundleError when the manifest names it but it is not there."""
        path = self.path / relative
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (the manifest lists it)")
        return path

    def program(self, name: str) -> Path:
        return self.file(self.component(name).file)

    def test_vectors(self, name: str, method: str = "forward") -> list[tuple[list, Any]]:
        entry = self.component(name) if method == "forward" else self.method(name, method)
        return load_vectors(self.file(entry.verification.vectors), COMPONENT_IO[name][0])

    def methods(self, name: str) -> list[MethodEntry]:
        """Every method of a component's program, `forward` first (with the manifest's default size)."""
        c = self.component(name)
        batch = c.inputs[0].shape[0] if name == "unet" else 1
        forward = MethodEntry(name="forward", resolution=self.manifest.resolution, batch=batch, inputs=c.inputs,
                              outputs=c.outputs, verification=c.verification)
        return [forward, *(c.methods or [])]

    def method(self, name: str, method: str) -> MethodEntry:
        for m in self.methods(name):
            if m.name == method:
                return m
        raise BundleError(f"{self.path}: {name} has no method {method!r}")

    def scheduler_json(self) -> dict:
        path = self.file(SCHEDULER)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise BundleError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{path}: expected a JSON object")
        return data

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER

    def expected_files(self) -> dict[str, str]:
        """Every file the manifest covers, relative path -> sha256."""
        files = dict(self.manifest.files)
        for comp in self.manifest.components.values():
            files.setdefault(comp.file, comp.sha256)
        return files

    def verify_files(self) -> None:
        """Check every file against its sha256; BundleError naming the first missing or changed file."""
        for rel, digest in sorted(self.expected_files().items()):
            file = self.file(rel)
            if sha256_file(file) != digest:
                raise BundleError(f"{file}: sha256 does not match the manifest (tampered with or truncated)")


def integrity_line(manifest_bytes: bytes) -> str:
    """The integrity root's content: `sha256sum` format, so `sha256sum -c manifest.json.sha256` checks it too."""
    return f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST}\n"


def manifest_digest(root: Path) -> str:
    """The digest the integrity root records (what a publish index stores for this bundle)."""
    return (root / INTEGRITY).read_text(encoding="ascii").split()[0]


def check_integrity(root: Path, manifest_bytes: bytes) -> None:
    """manifest.json against manifest.json.sha256; BundleError when missing, malformed or different."""
    path = root / INTEGRITY
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (the bundle's integrity root); rebuild the bundle, or fetch it again")
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: unreadable ({e}); rebuild the bundle, or fetch it again") from None
    fields = text.split()
    if len(fields) != 2 or fields[1] != MANIFEST or len(fields[0]) != 64:
        raise BundleError(f"{path}: expected one line '<sha256>  {MANIFEST}'; the bundle is damaged")
    if hashlib.sha256(manifest_bytes).hexdigest() != fields[0]:
        raise BundleError(f"{root / MANIFEST}: sha256 does not match {INTEGRITY} (tampered with or truncated)")


# ---------------------------------------------------------------------------------------------- writing
def write(final: Path, manifest: Manifest, programs: dict[str, Path], vectors: dict[str, Path],
          write_tokenizer: Callable[[Path], None], scheduler, write_extras: Callable[[Path], None] | None = None,
          seal: Callable[[Path], None] | None = None) -> Path:
    """Write a bundle into a temp dir, fill in `manifest.files`, then swap it into `final` atomically.

    ``scheduler`` is the checkpoint's SchedulerConfig: scheduler.json is its diffusers form (see
    docs/bundle-format.md) with the manifest's sampler beside it.
    ``write_extras(tmpdir)``, when given, adds target-specific files (Core ML `<component>.mlpackage`) before the
    file hashes are taken.
    ``seal(tmpdir)``, when given, runs on the complete bundle before it is swapped into place (a device runs it
    there) and may add to the manifest, which is then written again: a bundle is never in place without it.
    """
    with atomic_dir(final) as tmp:
        for name, src in programs.items():
            shutil.copyfile(src, tmp / program_file(name))
        (tmp / VECTORS).mkdir()
        for relative, src in vectors.items():  # vectors_file(component, method) -> the cached file
            shutil.copyfile(src, tmp / relative)
        write_tokenizer(tmp / TOKENIZER)
        scheduler_json = {**scheduler.to_diffusers(), "sampler": manifest.sampler.model_dump(mode="json")}
        (tmp / SCHEDULER).write_text(json.dumps(scheduler_json, indent=2, sort_keys=True) + "\n")
        if write_extras is not None:
            write_extras(tmp)
        manifest.files = {str(p.relative_to(tmp)).replace(os.sep, "/"): sha256_file(p)
                          for p in sorted(tmp.rglob("*")) if p.is_file()}
        _write_manifest(tmp, manifest)
        if seal is not None:
            seal(tmp)
            _write_manifest(tmp, manifest)
    return final


def _write_manifest(root: Path, manifest: Manifest) -> None:
    data = manifest.to_json().encode("utf-8")
    (root / MANIFEST).write_bytes(data)
    (root / INTEGRITY).write_text(integrity_line(data), encoding="ascii")


def write_json_schema(path: Path = Path(__file__).parents[1] / "docs" / "manifest.schema.json") -> Path:
    """docs/manifest.schema.json, generated from `Manifest` (tests/test_bundle_spec.py keeps it current)."""
    path.write_text(json.dumps(Manifest.model_json_schema(), indent=2) + "\n")
    return path
