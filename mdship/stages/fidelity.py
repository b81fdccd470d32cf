"""Stage `fidelity`: how far a built target's images are from the fp32 eager pipeline, and the fp16 overflow guard.

End to end: the evaluation prompts (recipe `calibration.eval_prompts`, the first `num_eval_prompts`) are generated
with seeds 0..n-1 by the fp32 eager pipeline and by the built programs, from the same initial latent
(`pipeline.initial_latent(seed)`), with the recipe's sampler. Image PSNR and SSIM (mean and worst over the
prompts) go into the manifest. `executed`: the .pte programs run on the ExecuTorch runtime (XNNPACK, portable).
`simulated`: the target cannot run here (Vulkan, Core ML on Linux), so each component's exported (quantized)
graph runs in eager PyTorch in the delegate's compute dtype instead.

fp16 guard: a component that computes in fp16 runs as its simulated twin (mdship.simulate, the exported graph as the
delegate computes it) on the calibration inputs, every op watched; the first op that makes an Inf / NaN names the
layer. The recipe decides: `on_fp16_overflow: fail` the build (naming the layer and the `keep_fp32:` that would keep
just it in fp32), or `fp32`, the whole component in fp32; `keep_fp32: [layer]` computes the named layers in fp32.
"""

from __future__ import annotations

import time
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
    images (`reference_images`): image PSNR / SSIM, and the seconds the candidate took to generate them."""
    started = time.time()
    images = [candidate(prompt, seed, settings)
              for seed, prompt in enumerate(tqdm(prompts, desc=desc, disable=not progress, leave=False))]
    return {**compare_images(reference, images), "seeds": list(range(len(prompts))),
            "seconds": round(time.time() - started, 1)}


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
def fp16_guard(twin: torch.nn.Module, inputs: list[tuple]) -> dict:
    """Run the program's simulated twin (mdship.simulate: computed as its fp16 delegate computes it) on every
    calibration input, watching every op; stop at the first overflow.

    Returns {"checked_calls", "overflow", "first_bad_call", "max_abs", "dtype", "simulated_as", "first_overflow",
    "closest_layers", "seconds"}: ``first_overflow`` is the first op that made an Inf / NaN from finite values ({"layer", "op",
    "max_abs", "nonfinite", "call"}; None if none), ``max_abs`` the largest finite output magnitude, and
    ``closest_layers`` the layers whose values came nearest fp16's 65504 (how much headroom the component has).
    """
    from mdship import simulate

    watch = simulate.Watch()
    first_bad, max_abs, started = None, 0.0, time.time()
    with torch.no_grad():
        for i, call in enumerate(inputs):
            watch.call = i
            out = twin(*call, watch=watch)
            finite = torch.isfinite(out)
            if finite.any():
                max_abs = max(max_abs, float(out[finite].abs().max()))
            if watch.first_overflow is not None or not finite.all():
                first_bad = i
                break
    overflow = watch.first_overflow
    if overflow is not None:
        overflow = {**overflow, "max_abs": round(overflow["max_abs"], 3)}
    return {"checked_calls": len(inputs) if first_bad is None else first_bad + 1, "overflow": first_bad is not None,
            "first_bad_call": first_bad, "max_abs": round(max_abs, 3), "dtype": "float16",
            "simulated_as": simulate.SIMULATED_AS, "first_overflow": overflow, "closest_layers": watch.closest(5),
            "seconds": round(time.time() - started, 1)}


def overflow_message(component: str, guard: dict) -> str:
    """One line: where the fp16 guard found an overflow, and the recipe keys that deal with it."""
    first = guard.get("first_overflow")
    if first is None:
        return (f"{component}: fp16 output has Inf/NaN on calibration call {guard['first_bad_call']} (largest finite "
                f"|value| {guard['max_abs']:g}) and no single layer made it; set "
                f"components.{component}.on_fp16_overflow: fp32 to keep the component in fp32, or fix the checkpoint")
    size = (f"|value| up to {first['max_abs']:g} > fp16's 65504" if first["max_abs"] >= 65504
            else f"{first['nonfinite']} Inf/NaN values from finite inputs")
    return (f"{component}: fp16 overflow in layer {first['layer']} ({first['op']}, {size}) on calibration call "
            f"{first['call']}; set components.{component}.keep_fp32: [{first['layer']}] to compute that layer in "
            f"fp32, components.{component}.on_fp16_overflow: fp32 for the whole component, or fix the checkpoint")
