"""The fast fp16 simulation against real fp16 arithmetic: an XNNPACK fp16 bundle's components on their stored test
vectors, PSNR against eager fp32, as

* the fast simulation of the same exported program (mdship.simulate, the program's own dtypes: fp16 ops rounded),
* the program executed here (x86 XNNPACK: fp16 storage, fp32 arithmetic inside its kernels),
* the program executed by the arm64 lane on a CPU model with fp16 arithmetic (`mdship verify BUNDLE --device
  arm64-qemu:cortex-a76 --json > FILE`: XNNPACK's fp16 kernels, fp16 arithmetic; emulated by qemu, not a device).

    python tools/fp16_agreement.py artifacts/shapes/md-xnnpack-fp16/xnnpack --arm64 arm64.json

The worst test vector of each is printed, as `mdship verify` reports it. tests/test_simulate.py holds the simulation to
PyTorch's own fp16 kernels; this compares it with kernels that accumulate in fp16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mdship import backends, simulate
from mdship.bundle import COMPONENT_IO, Bundle, load_vectors
from mdship.checkpoint import Checkpoint
from mdship.metrics import tensor_psnr
from mdship.stages import export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="an XNNPACK bundle built with precision fp16")
    parser.add_argument("--arm64", type=Path, help="`mdship verify BUNDLE --device arm64-qemu:MODEL --json` output")
    args = parser.parse_args()
    bundle = Bundle.open(args.bundle)
    manifest = bundle.manifest
    checkpoint = Checkpoint.open(manifest.checkpoint.ref)
    modules = checkpoint.modules()
    arm64 = json.loads(args.arm64.read_text())["models"] if args.arm64 else {}
    backend = backends.get(manifest.backend)
    print("| component | fast simulation | executed here (x86 XNNPACK fp16) | "
          + " | ".join(f"arm64 {m} (XNNPACK fp16, emulated)" for m in arm64) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in arm64) + " |")
    for name, entry in manifest.components.items():
        vectors = load_vectors(args.bundle / entry.verification.vectors, COMPONENT_IO[name][0])
        program = export.run(name, modules[name], entry.precision, tuple(vectors[0][0]), backend.rewrites).program
        twin = simulate.twin(program, forced_fp16=False)
        with torch.no_grad():
            fast = min(tensor_psnr(expected, twin(*inputs)) for inputs, expected in vectors)
        cells = [f"{fast:.1f} dB", f"{entry.verification.psnr_db:.1f} dB"]
        cells += [f"{m['components'][name]['psnr_db']:.1f} dB" if "components" in m else f"did not run: {m.get('error')}"
                  for m in arm64.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
