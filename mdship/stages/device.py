"""Stage `device`: the finished bundle executed on another instruction set (mdship.devices), next to the host's
verification.

Runs inside `mdship.bundle.write`'s temp directory, on the bundle exactly as it will be published, once per
available device lane (today `arm64-qemu`: the arm64 C++ runner under qemu, every CPU model of the matrix): the
stored test vectors (component PSNR against eager fp32), then the first eval prompt's image against the host
runner's and the eager fp32 pipeline's. Cached by the programs' and vectors' sha256s, the prompt, the lane's
runner binary and emulator version, so an unchanged rebuild runs no emulator.

Which lanes: MDSHIP_BUILD_DEVICES, a comma list of device names, or "auto" (the default: every lane that is
installed here, e.g. after `make runner-arm64`) or "none". A lane that is asked for by name but missing is an
error; under "auto" a missing lane is skipped silently (the manifest then has no `devices` entry).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mdship import devices
from mdship.bundle import Bundle, DeviceVerification, sha256_file
from mdship.cache import Cache, make_key
from mdship.errors import UserError


def lanes(backend: str) -> list:
    """The device lanes this build runs for a `backend` bundle (MDSHIP_BUILD_DEVICES)."""
    wanted = os.environ.get("MDSHIP_BUILD_DEVICES", "auto").strip()
    if wanted in ("", "none"):
        return []
    if wanted == "auto":
        found = [devices.get(n) for n in devices.NAMES if n != "host"]
        return [d for d in found if d.unavailable() is None and devices.runs(d, backend)]
    chosen = [devices.get(n.strip()) for n in wanted.split(",") if n.strip()]
    for d in chosen:
        if d.unavailable():
            raise UserError(f"MDSHIP_BUILD_DEVICES={wanted}: {d.unavailable()}")
    return [d for d in chosen if devices.runs(d, backend)]


def key(device, bundle_dir: Path, prompt: str, seed: int) -> str:
    files = Bundle.open(bundle_dir).expected_files()
    return make_key("device", device.name, [m.name for m in device.models], device.emulator(),
                    sha256_file(device.runner), files, prompt, seed)


def run(device, bundle_dir: Path, prompt: str, seed: int, eager_image: np.ndarray, cache: Cache) -> DeviceVerification:
    """The device's verification of the bundle in `bundle_dir` (cached)."""
    k = key(device, bundle_dir, prompt, seed)
    hit = cache.get("device", k)
    if hit is None:
        def write(out: Path) -> None:
            references = {"host": host_image(bundle_dir, prompt, seed), "eager": eager_image}
            result = device.verify(bundle_dir, prompt, seed, references)
            (out / "device.json").write_text(json.dumps(result, indent=2) + "\n")

        hit = cache.put("device", k, write)
    return DeviceVerification.model_validate(json.loads((hit / "device.json").read_text()))


def host_image(bundle_dir: Path, prompt: str, seed: int) -> np.ndarray:
    """The host runner's image (mdship.runtime, the ExecuTorch pip wheel) with the bundle's own sampler."""
    from mdship.runtime import Runner

    runner = Runner.open(bundle_dir, verify=False)
    return runner.generator()(prompt, seed, runner.settings())
