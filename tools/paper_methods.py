"""Bytes of a paper-scale UNet program with several image sizes as methods, against one size alone.

The MobileDiffusion preset (random init: sizes and structure are the paper's, the weights are not trained), exported
and lowered to XNNPACK exactly as `mdship build` does (mdship.stages export -> lower -> serialize), once as a single
`forward` method at the first size and once with every size as a method of one program; each method is then run
once on the ExecuTorch runtime and compared with eager PyTorch. Prints and writes a JSON of the bytes.

    python tools/paper_methods.py --sizes 512 384 --out artifacts/paper-methods.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mdship import backends
from mdship.checkpoint import Checkpoint
from mdship.metrics import tensor_psnr
from mdship.programs import method as load_method
from mdship.recipe.schema import ComponentSpec, Target
from mdship.stages import export, lower, serialize


def unet_inputs(ckpt: Checkpoint, px: int, batch: int = 2) -> tuple:
    cfg = ckpt.unet_config()
    g = torch.Generator().manual_seed(px)
    latent = torch.randn(batch, cfg.in_channels, px // 8, px // 8, generator=g)
    context = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g)
    return latent, torch.tensor([500]), context


def build(ckpt: Checkpoint, sizes: list[int], precision: str = "fp32") -> tuple[bytes, dict]:
    backend = backends.get("xnnpack")
    target, spec = Target(backend="xnnpack"), ComponentSpec(precision=precision)
    inputs = {("forward" if i == 0 else f"res{px}_b2"): unet_inputs(ckpt, px) for i, px in enumerate(sizes)}
    exported = {m: export.run("unet", ckpt.unet, precision, x, backend.rewrites) for m, x in inputs.items()}
    with backend.lowering(target, spec):
        lowered = lower.run(exported, backend.partitioners(target, spec), backend.transform_passes())
    return serialize.run(lowered).data, inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 384])
    parser.add_argument("--out", type=Path, default=Path("artifacts/paper-methods.json"))
    args = parser.parse_args()
    ckpt = Checkpoint.open("preset:mobilediffusion")
    report = {"checkpoint": "preset:mobilediffusion (random init)", "precision": "fp32", "runs": []}
    for sizes in ([args.sizes[0]], args.sizes):
        start = time.perf_counter()
        program, inputs = build(ckpt, sizes)
        seconds = time.perf_counter() - start
        psnr = {}
        with torch.no_grad():
            for m, x in inputs.items():
                psnr[m] = round(tensor_psnr(ckpt.unet(*x), load_method(program, m)(*x)), 1)
        run = {"sizes": sizes, "methods": list(inputs), "bytes": len(program), "build_s": round(seconds, 1),
               "psnr_db_vs_eager": psnr}
        print(json.dumps(run), flush=True)
        report["runs"].append(run)
    single, multi = report["runs"]
    report["ratio"] = round(multi["bytes"] / single["bytes"], 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'+'.join(map(str, args.sizes))} px in one program: {multi['bytes'] / 1e6:.1f} MB vs "
          f"{single['bytes'] / 1e6:.1f} MB for {args.sizes[0]} px alone ({report['ratio']:.4f}x)")


if __name__ == "__main__":
    main()
