"""Stage `calibrate`: run the fp32 pipeline over prompts and record every component's inputs.

The recording feeds three consumers: static-int8 calibration (PT2E observers), the bundle's test vectors
(inputs + eager outputs that `mdship verify` re-runs), and held-out fidelity checks. It holds the text
encoder's token ids, the UNet's (sample, timestep, context) at every sampler step, in the batch-2 form when
guidance is on (uncond first, then cond), and the decoder's final latents. Stored as safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from mdship.bundle import COMPONENT_IO, COMPONENTS
from mdship.cache import Cache, make_key
from mdship.pipeline import Generator, SamplerSettings, eager_generator


@dataclass
class Recording:
    """Per component, a list of input dicts (name -> tensor), in the order the pipeline made the calls."""

    calls: dict[str, list[dict[str, torch.Tensor]]] = field(default_factory=lambda: {c: [] for c in COMPONENTS})
    #: where the recording is stored (the cache entry), when it was loaded from one
    path: Path | None = None

    def save(self, path: Path) -> None:
        flat = {f"{comp}/{i}/{name}": t.contiguous() for comp, calls in self.calls.items()
                for i, call in enumerate(calls) for name, t in call.items()}
        save_file(flat, str(path))

    @classmethod
    def load(cls, path: Path) -> "Recording":
        rec = cls()
        grouped: dict[tuple[str, int], dict] = {}
        for key, t in load_file(str(path)).items():
            comp, i, name = key.split("/")
            grouped.setdefault((comp, int(i)), {})[name] = t
        for (comp, i) in sorted(grouped):
            rec.calls[comp].append(grouped[(comp, i)])
        rec.path = path
        return rec


def recording_generator(gen: Generator, rec: Recording) -> Generator:
    """A Generator whose components record their inputs into `rec` before computing."""

    def text_encoder(ids):
        rec.calls["text_encoder"].append({"input_ids": ids.clone()})
        return gen.text_encoder(ids)

    def unet(sample, timestep, context):
        rec.calls["unet"].append({"sample": sample.clone(), "timestep": timestep.clone(), "context": context.clone()})
        return gen.unet(sample, timestep, context)

    def decoder(latent):
        rec.calls["vae_decoder"].append({"latent": latent.clone()})
        return gen.decoder(latent)

    return Generator(gen.tokenize, text_encoder, unet, decoder, gen.scheduler, gen.resolution)


def record(ckpt, prompts: list[str], settings: SamplerSettings, seed: int, resolution: int,
           desc: str = "calibrate", progress: bool = True) -> Recording:
    rec = Recording()
    base = eager_generator(ckpt)
    base.resolution = resolution
    gen = recording_generator(base, rec)
    settings = SamplerSettings(settings.sampler, settings.steps, settings.guidance, batched_guidance=True)
    for i, prompt in enumerate(tqdm(prompts, desc=desc, leave=False, disable=not progress)):
        gen(prompt, seed + i, settings)
    return rec


def key(checkpoint, prompts: list[str], settings: SamplerSettings, seed: int, resolution: int) -> str:
    """The cache key of a recording: checkpoint hash + prompts + sampler settings + seed + resolution."""
    return make_key("calibrate", checkpoint.hash, prompts, vars(settings), seed, resolution)


def run(checkpoint, prompts: list[str], settings: SamplerSettings, seed: int, resolution: int, cache: Cache,
        desc: str = "calibrate", progress: bool = True) -> Recording:
    """The recording of ``prompts`` (seeds ``seed``, ``seed + 1``, ...), cached by `key`."""
    k = key(checkpoint, prompts, settings, seed, resolution)
    hit = cache.get("calibrate", k)
    if hit is None:
        rec = record(checkpoint, prompts, settings, seed, resolution, desc, progress)
        hit = cache.put("calibrate", k, lambda d: rec.save(d / "recording.safetensors"))
    return Recording.load(hit / "recording.safetensors")


def for_program(component: str, call: dict[str, torch.Tensor], batch: int) -> tuple[torch.Tensor, ...]:
    """The program inputs for a recorded call at the program's batch size.

    A batch-2 guided UNet call becomes its conditional half for a batch-1 (two-calls) program.
    """
    names = COMPONENT_IO[component][0]
    tensors = [call[n] for n in names]
    if component == "unet" and tensors[0].shape[0] != batch:
        tensors = [tensors[0][-batch:], tensors[1], tensors[2][-batch:]]
    return tuple(tensors)
