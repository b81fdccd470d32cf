"""Stage `bundle`: the manifest of a built target, and the bundle directory written atomically (mdship.bundle).

    manifest.json   what is in the bundle (mdship.bundle.Manifest), how it was built, what it loses
    + the programs, test vectors, tokenizer, scheduler.json and any files the backend adds (Core ML .mlpackage)
"""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

from mdship import bundle, capabilities, threads
from mdship.bundle import Manifest
from mdship.cache import toolchain_versions


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children so far, imports included."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def manifest(recipe, checkpoint, target, backend, settings, resolutions: list[int], components: dict,
             fidelity: dict, warnings: list[str], started: float, workers: int = 1) -> Manifest:
    """The manifest of one target; ``components`` are the build's ComponentResults (entry, cached); ``workers`` the
    processes that built its programs (mdship.workers; 1: the build's own)."""
    mode = capabilities.guidance_mode(recipe.sampler.guidance_mode, target.backend)
    modes = sorted({c.entry.verification.mode for c in components.values()})
    return Manifest(
        schema_version=bundle.SCHEMA_VERSION,
        recipe={"name": recipe.name, "hash": recipe.recipe_hash()},
        checkpoint={"ref": recipe.checkpoint, "hash": checkpoint.hash,
                    **({"lora": checkpoint.adapters} if checkpoint.adapters else {})},
        versions=toolchain_versions(),
        target=json.loads(target.model_dump_json()),
        resolution=resolutions[0],
        **({"resolutions": resolutions} if len(resolutions) > 1 else {}),
        sampler={"kind": settings.sampler, "steps": settings.steps, "guidance": settings.guidance,
                 "guidance_mode": mode if settings.guidance != 1.0 else "none"},
        components={name: c.entry for name, c in components.items()},
        verification={"mode": modes[0] if len(modes) == 1 else "mixed",
                      **({} if backend.runs_here else {"note": backend.verification_note})},
        fidelity=fidelity,
        warnings=list(warnings),
        build={"seconds": round(time.time() - started, 2),
               "cpu_seconds": round(_cpu_seconds(), 2),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "threads": threads.describe(),
               "workers": workers,
               "cached": all(c.cached for c in components.values()),
               "host": f"{platform.system()} {platform.machine()}"},
    )


def run(path: Path, manifest: Manifest, components: dict, checkpoint, backend, target, seal=None) -> Path:
    """Write the bundle: programs and vectors from the cache, the checkpoint's tokenizer and scheduler, and what
    the backend adds for this target (recorded in the component's manifest entry); ``seal(tmpdir)`` runs on the
    complete bundle before it is swapped into place (the device lanes, mdship.stages.device)."""

    def write_extras(directory: Path) -> None:
        for name, c in components.items():
            written = backend.write_extras(c.program.read_bytes(), target, directory, name)
            if written:
                manifest.components[name].mlpackage = written

    return bundle.write(path, manifest, {n: c.program for n, c in components.items()},
                        {rel: src for c in components.values() for rel, src in c.vectors.items()},
                        checkpoint.write_tokenizer,
                        checkpoint.scheduler, write_extras=write_extras, seal=seal)
