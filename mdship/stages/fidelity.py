"""Stage `fidelity`: how far a built target's images are from the fp32 eager pipeline, and the fp16 overflow guard.

End to end: the evaluation prompts (recipe `calibration.eval_prompts`, the first `num_eval_prompts`) are generated
with seeds 0..n-1 by the fp32 eager pipeline and by the built programs, from the same initial latent
(`pipeline.initial_latent(seed)`), with the recipe's sampler. Image PSNR and SSIM (mean and worst over the
prompts) go into the manifest. `executed`: the .pte programs run on the ExecuTorch runtime (XNNPACK, portable).
`simulated`: the target cannot run here (Vulkan, Core ML on Linux), so each component's exported (quantized)
graph runs in eager PyTorch in the delegate's compute dtype instead.

fp16 guard: a component that computes in fp16 is run in fp16 on the calibration inputs; any Inf/NaN in its outputs
is an overflow. The recipe's `on_fp16_overflow` decides: `fail` the build, or keep that component in fp32.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from mdship.metrics import image_psnr, image_ssim, json_db
from mdship.pipeline import Generator, SamplerSettings


# ----------------------------------------------------------------------------------------------------- metrics
def compare_images(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """The manifest's `fidelity` numbers. Identical images are stored as IDENTICAL_DB (JSON has no infinity) and
    the `mean` includes them as such (the format's field since schema 1); readers count them apart
    (`metrics.psnr_summary`), as `mdship report` and `mdship compare` do."""
    psnr = [json_db(image_psnr(r, c)) for r, c in zip(reference, candidate)]
    ssim = [image_ssim(r, c) for r, c in zip(reference, candidate)]
    return {
        "image_psnr_db": {"mean": round(float(np.mean(psnr)), 3), "worst": round(float(min(psnr)), 3),
                          "per_prompt": [round(p, 3) for p in psnr]},
        "image_ssim": {"mean": round(float(np.mean(ssim)), 5), "worst": round(float(min(ssim)), 5),
                       "per_prompt": [round(s, 5) for s in ssim]},
        "prompts": len(psnr),
    }


def reference_images(reference: Generator, prompts: list[str], settings: SamplerSettings, progress: bool = True,
                     desc: str = "fp32 reference", seeds: list[int] | None = None) -> list[np.ndarray]:
    """The fp32 pipeline's images for `prompts` with `seeds` (default 0..n-1): what every candidate is compared
    with. Any generator works the same way (a bundle's, for `mdship compare`)."""
    seeds = list(range(len(prompts))) if seeds is None else seeds
    pairs = list(zip(prompts, seeds, strict=True))
    return [reference(prompt, seed, settings)
            for prompt, seed in tqdm(pairs, desc=desc, disable=not progress, leave=False)]


def reference_key(checkpoint_hash: str, prompts: list[str], settings: SamplerSettings, resolution: int,
                  seeds: list[int] | None = None) -> str:
    """The cache key of the fp32 pipeline's images: `mdship build` (seeds 0..n-1) and `mdship compare` (any seeds)
    share entries."""
    from mdship.cache import make_key

    extra = [] if seeds is None or list(seeds) == list(range(len(prompts))) else [list(seeds)]
    return make_key("reference", checkpoint_hash, prompts, vars(settings), resolution, *extra)


def cached_images(cache, stage: str, key: str, make: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
    """Images from the stage cache (mdship.cache) under (stage, key), made by ``make()`` on a miss: uint8 HWC
    arrays stored as one safetensors file."""
    from safetensors.numpy import load_file, save_file

    hit = cache.get(stage, key)
    if hit is None:
        def write(out) -> None:
            images = make()  # to_uint8 returns HWC views of CHW memory: contiguous copies are stored
            save_file({str(i): np.ascontiguousarray(im) for i, im in enumerate(images)},
                      str(out / "images.safetensors"))

        hit = cache.put(stage, key, write)
    flat = load_file(str(hit / "images.safetensors"))
    return [flat[str(i)] for i in range(len(flat))]


def evaluate(reference: list[np.ndarray], candidate: Generator, prompts: list[str], settings: SamplerSettings,
             progress: bool = True, desc: str = "fidelity") -> dict:
    """The candidate on `prompts` with seeds 0..n-1 (the reference's initial latents) against the reference
    images (`reference_images`): image PSNR / SSIM."""
    images = [candidate(prompt, seed, settings)
              for seed, prompt in enumerate(tqdm(prompts, desc=desc, disable=not progress, leave=False))]
    return {**compare_images(reference, images), "seeds": list(range(len(prompts)))}


def check_gates(fidelity: dict, image_psnr_db: float | None, image_ssim_min: float | None) -> list[str]:
    """Failures of the recipe's image gates, judged on the worst prompt (like component gates, on the worst
    test vector)."""
    failures = []
    if image_psnr_db is not None and fidelity["image_psnr_db"]["worst"] < image_psnr_db:
        failures.append(f"image PSNR {fidelity['image_psnr_db']['worst']:.1f} dB (worst of {fidelity['prompts']} "
                        f"eval prompts, mean {fidelity['image_psnr_db']['mean']:.1f}) vs the fp32 pipeline is "
                        f"below the gate {image_psnr_db:.1f} dB (gates.image_psnr_db)")
    if image_ssim_min is not None and fidelity["image_ssim"]["worst"] < image_ssim_min:
        failures.append(f"image SSIM {fidelity['image_ssim']['worst']:.3f} (worst of {fidelity['prompts']} eval "
                        f"prompts, mean {fidelity['image_ssim']['mean']:.3f}) vs the fp32 pipeline is below the "
                        f"gate {image_ssim_min:.3f} (gates.image_ssim)")
    return failures


# ----------------------------------------------------------------------------------------------------- fp16 guard
def fp16_guard(module: torch.nn.Module, inputs: list[tuple], dtype: torch.dtype = torch.float16) -> dict:
    """Run `module` (a component, fp32 interface) in `dtype` on every calibration input; look for Inf/NaN.

    Returns {"checked_calls", "overflow", "first_bad_call", "max_abs"}: max_abs is the largest finite output
    magnitude seen (how close to fp16's 65504 the component runs).
    """
    from mdship.stages.export import ProgramModule

    half = ProgramModule(module, dtype).eval()
    first_bad, max_abs = None, 0.0
    with torch.no_grad():
        for i, call in enumerate(inputs):
            out = half.component(*[x.to(dtype) if x.is_floating_point() else x for x in call])
            finite = torch.isfinite(out)
            if not finite.all() and first_bad is None:
                first_bad = i
            if finite.any():
                max_abs = max(max_abs, float(out[finite].abs().max()))
            if first_bad is not None:
                break
    return {"checked_calls": len(inputs) if first_bad is None else first_bad + 1, "overflow": first_bad is not None,
            "first_bad_call": first_bad, "max_abs": round(max_abs, 3), "dtype": str(dtype).removeprefix("torch.")}
