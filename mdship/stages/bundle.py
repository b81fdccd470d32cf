"""Stage `bundle`: assemble `<output>/<target>/` and its manifest, atomically.

    text_encoder.pte  unet.pte  vae_decoder.pte      one ExecuTorch program per component
    tokenizer/                                        CLIP tokenizer files (vocab.json, merges.txt, ...)
    scheduler.json                                    the checkpoint's scheduler config + the recipe's sampler
    test_vectors/<component>.safetensors              inputs and eager fp32 outputs, re-run by `mdship verify`
    manifest.json                                     what is in the bundle, how it was built, what it loses

The bundle is written into a temp directory beside its final place and renamed into place: a failed or
interrupted build never leaves a directory that looks like a complete bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from mdship.atomic import atomic_dir

MANIFEST_SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_spec(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def save_vectors(path: Path, vectors: list[tuple[tuple, torch.Tensor]], input_names: tuple[str, ...]) -> None:
    flat = {}
    for i, (inputs, expected) in enumerate(vectors):
        for name, t in zip(input_names, inputs):
            flat[f"{i}/input/{name}"] = t.contiguous()
        flat[f"{i}/expected"] = expected.contiguous()
    save_file(flat, str(path))


def write(final: Path, programs: dict[str, Path], vectors: dict[str, Path], write_tokenizer, scheduler,
          sampler: dict, manifest: dict, write_extras=None) -> Path:
    """Write the bundle to a temp dir, fill in file hashes, then swap it into `final`.

    `write_extras(tmpdir)`, when given, adds target-specific files (Core ML `<component>.mlpackage`) before the
    file hashes are taken.
    """
    with atomic_dir(final) as tmp:
        for name, src in programs.items():
            shutil.copyfile(src, tmp / f"{name}.pte")
        (tmp / "test_vectors").mkdir()
        for name, src in vectors.items():
            shutil.copyfile(src, tmp / "test_vectors" / f"{name}.safetensors")
        write_tokenizer(tmp / "tokenizer")
        scheduler_json = {**dataclasses.asdict(scheduler), "sampler": sampler}
        (tmp / "scheduler.json").write_text(json.dumps(scheduler_json, indent=2, sort_keys=True) + "\n")
        if write_extras is not None:
            write_extras(tmp)
        manifest["files"] = {str(p.relative_to(tmp)).replace(os.sep, "/"): sha256_file(p)
                             for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return final
