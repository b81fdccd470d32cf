"""`mdship build`: run a recipe through the stages (mdship.stages) and write one bundle per target.

Per target and component: export -> lower -> serialize -> verify, cached content-addressed under a key made of
the checkpoint hash, the recipe sections the component reads, the program's input shapes and the toolchain
versions. An unchanged rebuild therefore loads no weights and lowers nothing: it re-assembles the bundle from
the cache. Weights are loaded only when some stage misses.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mdship import backends
from mdship.adherence import read_prompts
from mdship.cache import Cache, make_key, toolchain_versions
from mdship.errors import VerificationError
from mdship.pipeline import SamplerSettings
from mdship.recipe import Recipe, Target
from mdship.stages import bundle, calibrate, export, load, lower, serialize, verify
from mdship.stages.calibrate import COMPONENT_IO, COMPONENTS

#: how many recorded calls per component become the bundle's test vectors
TEST_VECTORS = {"text_encoder": 2, "unet": 2, "vae_decoder": 1}


@dataclass
class ComponentResult:
    name: str
    entry: dict  # the manifest entry
    program: Path  # cached .pte
    vectors: Path  # cached test vectors
    cached: bool


@dataclass
class TargetResult:
    target: str
    backend: str
    bundle: Path
    components: dict[str, ComponentResult] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _pick_vectors(recording: calibrate.Recording, name: str) -> list[dict]:
    """Test-vector calls: the first and the last call of the first prompt (first and last sampler step)."""
    calls = recording.calls[name]
    if name == "unet":
        per_prompt = len(calls) // max(1, len(recording.calls["vae_decoder"]))
        picks = [calls[0], calls[per_prompt - 1]] if per_prompt > 1 else calls[:1]
    else:
        picks = calls[: TEST_VECTORS[name]]
    return picks[: TEST_VECTORS[name]]


def _program_batch(name: str, settings: SamplerSettings, mode: str) -> int:
    return 2 if name == "unet" and settings.guidance != 1.0 and mode == "batch2" else 1


class Builder:
    def __init__(self, recipe: Recipe, force: bool = False, cache: Cache | None = None, progress: bool = True):
        self.recipe = recipe
        self.cache = cache or Cache(enabled=not force)
        self.progress = progress
        self.model = load.run(recipe.checkpoint)
        self.resolution = recipe.resolution or self.model.native_resolution
        s = recipe.sampler
        self.settings = SamplerSettings.resolve(self.model.scheduler(), s.kind, s.steps, s.guidance)
        self._recording: calibrate.Recording | None = None

    # ------------------------------------------------------------------ recordings
    def eval_recording(self) -> calibrate.Recording:
        """The fp32 pipeline's component inputs on the first evaluation prompt(s): the test vectors' source."""
        if self._recording is None:
            prompts = read_prompts(self.recipe.calibration.eval_prompts)[:1]
            self._recording = calibrate.run(self.model, prompts, self.settings, seed=0, resolution=self.resolution,
                                            cache=self.cache, desc="test vectors")
        return self._recording

    # ------------------------------------------------------------------ one component on one target
    def component(self, target: Target, name: str, bar) -> ComponentResult:
        backend = backends.get(target.backend)
        spec = self.recipe.component(name)
        mode = backends.guidance_mode(self.recipe.sampler.guidance_mode, backend)
        batch = _program_batch(name, self.settings, mode)
        vector_inputs = [calibrate.for_program(name, call, batch) for call in _pick_vectors(self.eval_recording(), name)]
        shapes = [[list(t.shape) for t in inputs] for inputs in vector_inputs]
        key = make_key("program", self.model.hash, name, spec.model_dump(), target.model_dump(), shapes,
                       [[t.flatten()[:16].tolist() for t in inputs] for inputs in vector_inputs])
        hit = self.cache.get("program", key)
        cached = hit is not None
        if hit is None:
            hit = self.cache.put("program", key, lambda d: self._make_program(d, target, backend, name, spec,
                                                                               vector_inputs, bar))
        report = json.loads((hit / "report.json").read_text())
        gate = self.recipe.gate_for(name, target)
        report["verification"]["gate_db"] = gate
        report["verification"]["passed"] = report["verification"]["psnr_db"] >= gate
        report["verification"]["vectors"] = f"test_vectors/{name}.safetensors"
        entry = {"file": f"{name}.pte", "backend": target.backend, "precision": spec.precision, **report}
        return ComponentResult(name, entry, hit / "program.pte", hit / "vectors.safetensors", cached)

    def _make_program(self, out: Path, target: Target, backend, name: str, spec, vector_inputs, bar) -> None:
        module = self.model.checkpoint().modules()[name]
        with torch.no_grad():
            expected = [module(*inputs).float() for inputs in vector_inputs]
        vectors = list(zip(vector_inputs, expected))

        bar.set_postfix_str(f"{name}: export")
        exported = export.run(name, module, spec.precision, vector_inputs[0])
        bar.set_postfix_str(f"{name}: lower")
        lowered = lower.run(exported, backend.partitioners(target, spec), backend.transform_passes())
        bar.set_postfix_str(f"{name}: serialize")
        program = serialize.run(lowered)
        bar.set_postfix_str(f"{name}: verify")
        if backend.executes_here:
            verification = verify.run_executed(program.data, vectors, gate_db=0.0)
        else:
            verification = verify.run_simulated(exported.program.module(), vectors, gate_db=0.0)

        (out / "program.pte").write_bytes(program.data)
        input_names, output_names = COMPONENT_IO[name]
        bundle.save_vectors(out / "vectors.safetensors", vectors, input_names)
        report = {
            "sha256": program.sha256,
            "bytes": len(program.data),
            "inputs": [bundle.tensor_spec(n, t) for n, t in zip(input_names, vector_inputs[0])],
            "outputs": [bundle.tensor_spec(n, t) for n, t in zip(output_names, expected[:1])],
            **lowered.coverage,
            "quantization": exported.quantization,
            "verification": verification.to_dict(),
        }
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    # ------------------------------------------------------------------ whole targets
    def target(self, target: Target) -> TargetResult:
        backend = backends.get(target.backend)
        result = TargetResult(target.name, target.backend, Path(self.recipe.output) / target.name)
        started = time.time()
        with tqdm(COMPONENTS, desc=f"build {target.name}", disable=not self.progress, leave=False) as bar:
            for name in bar:
                result.components[name] = self.component(target, name, bar)
        for name, comp in result.components.items():
            v = comp.entry["verification"]
            if not v["passed"]:
                result.failures.append(f"{target.name}/{name}: {v['mode']} PSNR {v['psnr_db']:.1f} dB vs eager fp32 "
                                       f"is below the gate {v['gate_db']:.1f} dB (gates.component_psnr_db)")
        if result.failures:
            return result

        mode = backends.guidance_mode(self.recipe.sampler.guidance_mode, backend)
        sampler = {"kind": self.settings.sampler, "steps": self.settings.steps, "guidance": self.settings.guidance,
                   "guidance_mode": mode if self.settings.guidance != 1.0 else "none"}
        manifest = {
            "schema_version": bundle.MANIFEST_SCHEMA_VERSION,
            "recipe": {"name": self.recipe_name, "hash": self.recipe.recipe_hash()},
            "checkpoint": {"ref": self.recipe.checkpoint, "hash": self.model.hash},
            "versions": toolchain_versions(),
            "target": json.loads(target.model_dump_json()),
            "resolution": self.resolution,
            "sampler": sampler,
            "components": {name: c.entry for name, c in result.components.items()},
            "build": {
                "seconds": round(time.time() - started, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "cached": all(c.cached for c in result.components.values()),
                "host": f"{platform.system()} {platform.machine()}",
            },
        }
        bundle.write(result.bundle, {n: c.program for n, c in result.components.items()},
                     {n: c.vectors for n, c in result.components.items()}, self.model.write_tokenizer,
                     self.model.scheduler(), sampler, manifest)
        return result

    @property
    def recipe_name(self) -> str:
        return self.recipe.source.stem if self.recipe.source else "recipe"


def build(recipe: Recipe, force: bool = False, progress: bool = True) -> list[TargetResult]:
    builder = Builder(recipe, force=force, progress=progress)
    results = [builder.target(t) for t in recipe.targets]
    failures = [f for r in results for f in r.failures]
    if failures:
        raise VerificationError("; ".join(failures))
    return results


def summary_rows(results: list[TargetResult]) -> list[dict]:
    rows = []
    for r in results:
        for name, c in r.components.items():
            e = c.entry
            rows.append({"target": r.target, "component": name, "precision": e["precision"], "bytes": e["bytes"],
                         "partitions": e["partitions"], "non_delegated_ops": e["non_delegated_ops"],
                         "verification": e["verification"]["mode"], "psnr_db": round(e["verification"]["psnr_db"], 2),
                         "gate_db": e["verification"]["gate_db"], "cached": c.cached})
    return rows


def format_summary(results: list[TargetResult]) -> str:
    header = f"{'target':<10} {'component':<13} {'prec':<5} {'MiB':>8} {'parts':>5} {'cpu ops':>7} {'check':<9} {'PSNR dB':>8} {'gate':>5}  cache"
    lines = [header, "-" * len(header)]
    for row in summary_rows(results):
        lines.append(f"{row['target']:<10} {row['component']:<13} {row['precision']:<5} {row['bytes'] / 2**20:8.2f} "
                     f"{row['partitions']:>5} {row['non_delegated_ops']:>7} {row['verification']:<9} "
                     f"{row['psnr_db']:>8.1f} {row['gate_db']:>5.0f}  {'hit' if row['cached'] else 'built'}")
    for r in results:
        lines.append(f"bundle: {r.bundle}")
    return "\n".join(lines)
