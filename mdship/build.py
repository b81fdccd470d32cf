"""`mdship build`: run a recipe through the stages (mdship.stages) and write one bundle per target.

    per component   export (+ quantize) each method -> fp16 guard (on the simulated twin) -> lower them together ->
                    serialize -> verify every method, and backend.inspect; one cache entry "program": program.pte,
                    the test vectors, report.json and, for a target that cannot run here, twin.<method>.pt2 +
                    twin.json (the exported graphs that were lowered and how their delegate computes them)
    per target      fidelity (images vs the fp32 pipeline, cached by the programs' sha256s) -> bundle

Every cache key (mdship.cache) is made of what the output depends on: the checkpoint hash, the recipe section the
stage reads, the program's inputs, the toolchain versions. An unchanged rebuild therefore loads no weights and
lowers nothing: it re-assembles the bundle from the cache. This module only loops, keys and records; what each
stage does lives in its module, what each delegate does in mdship.backends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from mdship import backends, bundle, capabilities, inputs, programs, simulate, workers
from mdship import coverage as coverage_report
from mdship.adherence import read_prompts
from mdship.bundle import COMPONENT_IO, COMPONENTS, ComponentEntry
from mdship.cache import Cache, make_key
from mdship.checkpoint import Checkpoint
from mdship.errors import UserError, VerificationError
from mdship.pipeline import SamplerSettings, eager_generator, program_generator
from mdship.recipe.schema import ComponentSpec, Recipe, Target
from mdship.stages import bundle as bundle_stage
from mdship.stages import calibrate, device, export, fidelity, lower, quantize, serialize, verify

#: first seed of the calibration prompts (the eval prompts use 0..n-1: held out by prompt and by latent)
CALIBRATION_SEED = 1000

#: how many recorded calls per component become the bundle's test vectors
TEST_VECTORS = {"text_encoder": 2, "unet": 2, "vae_decoder": 1}


@dataclass
class ComponentResult:
    name: str
    entry: ComponentEntry  # the manifest entry
    program: Path  # cached .pte
    vectors: dict[str, Path]  # bundle path (bundle.vectors_file) -> cached test vectors, one file per method
    cached: bool


@dataclass(frozen=True)
class Method:
    """One method of a component's program: the image size and UNet batch it is exported for."""

    name: str  # "forward" for the default size and guidance mode
    resolution: int
    batch: int


def component_methods(name: str, resolutions: list[int], batches: list[int]) -> list[Method]:
    """`forward` (the default size and UNet batch: resolutions[0], batches[0]), then every other combination the
    component depends on: the text encoder none, the decoder the size, the UNet the size and the batch."""
    combos = {"text_encoder": [(resolutions[0], 1)], "vae_decoder": [(r, 1) for r in resolutions],
              "unet": [(r, b) for r in resolutions for b in batches]}[name]
    methods: list[Method] = []
    for r, b in dict.fromkeys(combos):
        suffix = f"res{r}_b{b}" if name == "unet" else f"res{r}"
        methods.append(Method("forward" if not methods else suffix, r, b))
    return methods


@dataclass
class TargetResult:
    target: str
    backend: str
    bundle: Path
    components: dict[str, ComponentResult] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: coverage warnings (a component running < 90% of its FLOPs in the delegate), printed in the summary
    warnings: list[str] = field(default_factory=list)
    #: end-to-end image fidelity vs the fp32 pipeline (mdship.stages.fidelity), None until measured
    fidelity: dict | None = None


def _pick_vectors(recording: calibrate.Recording, name: str) -> list[dict]:
    """Test-vector calls: the first and the last call of the first prompt (first and last sampler step)."""
    calls = recording.calls[name]
    if name == "unet":
        per_prompt = len(calls) // max(1, len(recording.calls["vae_decoder"]))
        picks = [calls[0], calls[per_prompt - 1]] if per_prompt > 1 else calls[:1]
    else:
        picks = calls[: TEST_VECTORS[name]]
    return picks[: TEST_VECTORS[name]]


def _target_key(target: Target) -> dict:
    """The target options a program depends on: not its name (two targets that differ only in name share their
    programs) and not emit_mlpackage (the .mlpackage is unpacked from the cached .pte at bundle time)."""
    data = target.model_dump(exclude={"name"})
    options = data.get(target.backend)
    if isinstance(options, dict):
        options.pop("emit_mlpackage", None)
    return data


class Builder:
    def __init__(self, recipe: Recipe, force: bool = False, cache: Cache | None = None, progress: bool = True):
        self.recipe = recipe
        self.cache = cache or Cache(enabled=not force)
        self.progress = progress
        self.checkpoint = Checkpoint.open(recipe.checkpoint).with_lora(recipe.lora)
        self.resolution = recipe.resolution or (recipe.resolutions or [self.checkpoint.resolution])[0]
        #: every size the bundles serve, the default first
        self.resolutions = list(dict.fromkeys([self.resolution, *(recipe.resolutions or [])]))
        multiple = self.checkpoint.resolution_multiple()
        for px in self.resolutions:
            if px % multiple:
                raise UserError(f"resolution {px} px: the UNet of {recipe.checkpoint} needs a multiple of "
                                f"{multiple} px (8 per latent pixel, then halved at each level); expected e.g. "
                                f"{max(multiple, px - px % multiple)}")
        s = recipe.sampler
        self.settings = SamplerSettings.resolve(self.checkpoint.scheduler, s.kind, s.steps, s.guidance)
        self._recordings: dict[int, calibrate.Recording] = {}
        self._calibrations: dict[int, calibrate.Recording] = {}
        #: program key -> (entry, cached): found in the cache, or built by worker processes (mdship.workers: not
        #: "cached" in reports), before the component loop
        self._ready: dict[str, tuple[Path, bool]] = {}

    def unet_batches(self, backend: str) -> list[int]:
        """The UNet batch of each guidance mode the recipe asks for, the default first: 2 for batch2, 1 for
        two_calls, and 1 for all when the sampler runs no guidance."""
        s = self.recipe.sampler
        modes = [capabilities.guidance_mode(m, backend) for m in [s.guidance_mode, *(s.guidance_modes or [])]]
        return list(dict.fromkeys(2 if m == "batch2" and self.settings.guidance != 1.0 else 1 for m in modes))

    # ------------------------------------------------------------------ recordings
    def eval_recording(self, resolution: int | None = None) -> calibrate.Recording:
        """The fp32 pipeline's component inputs on the first evaluation prompt: the test vectors' source."""
        resolution = resolution or self.resolution
        if resolution not in self._recordings:
            prompts = read_prompts(self.recipe.calibration.eval_prompts)[:1]
            self._recordings[resolution] = calibrate.run(self.checkpoint, prompts, self.settings, seed=0,
                                                         resolution=resolution, cache=self.cache,
                                                         desc="test vectors", progress=self.progress)
        return self._recordings[resolution]

    def calibration_prompts(self) -> list[str]:
        c = self.recipe.calibration
        return read_prompts(c.prompts)[: c.num_prompts]

    def calibration_recording(self, resolution: int | None = None) -> calibrate.Recording:
        """The fp32 pipeline's component inputs on the calibration prompts (static int8 observers, fp16 guard).

        Seeds start at CALIBRATION_SEED, so calibration latents differ from the eval prompts' (seeds 0..n-1)."""
        resolution = resolution or self.resolution
        if resolution not in self._calibrations:
            self._calibrations[resolution] = calibrate.run(self.checkpoint, self.calibration_prompts(),
                                                           self.settings, seed=CALIBRATION_SEED,
                                                           resolution=resolution, cache=self.cache,
                                                           desc="calibrate", progress=self.progress)
        return self._calibrations[resolution]

    def _calibration_inputs(self, name: str, method: Method) -> list[tuple]:
        return [calibrate.for_program(name, call, method.batch)
                for call in self.calibration_recording(method.resolution).calls[name]]

    # ------------------------------------------------------------------ one component on one target
    def program_key(self, target: Target, name: str) -> tuple[str, list[Method], dict, bool, bool]:
        """The cache key of a component's program on `target`, its methods, test-vector inputs per method, and
        whether it needs calibration and the fp16 guard."""
        backend = backends.get(target.backend)
        spec = self.recipe.component(name)
        methods = component_methods(name, self.resolutions, self.unet_batches(target.backend))
        vectors = {m: [calibrate.for_program(name, call, m.batch)
                       for call in _pick_vectors(self.eval_recording(m.resolution), name)] for m in methods}
        guarded = spec.uses_fp16 or backend.computes_fp16(target)
        calibrated = spec.needs_calibration or guarded
        key = make_key("program", self.checkpoint.hash, name, spec.model_dump(), _target_key(target),
                       {"rewrites": backend.rewrites, "simulation": simulate.VERSION,
                        "whole_graph": self.recipe.gates.delegated_flops_share == 1.0,
                        **backend.lowering_key(spec)},
                       [[list(t.shape) for t in inputs] for m in methods for inputs in vectors[m]],
                       [[t.flatten()[:16].tolist() for t in inputs] for m in methods for inputs in vectors[m]],
                       *([[vars(m) for m in methods]] if len(methods) > 1 else []),
                       *([{"calibration": self.calibration_prompts(), "seed": CALIBRATION_SEED}] if calibrated else []))
        return key, methods, vectors, calibrated, guarded

    def component(self, target: Target, name: str, status: Callable[[str], None] = lambda _: None
                  ) -> ComponentResult:
        backend = backends.get(target.backend)
        spec = self.recipe.component(name)
        key, methods, vectors, calibrated, guarded = self.program_key(target, name)
        hit, cached = self._ready.pop(key, (None, False))
        if hit is None:
            hit = self.cache.get("program", key)
            cached = hit is not None
        if hit is None:
            calibration = {m: self._calibration_inputs(name, m) for m in methods} if calibrated else None
            hit = self.cache.put("program", key, lambda d: self._make_program(
                d, target, backend, name, spec, vectors, calibration, guarded, status))
        report = json.loads((hit / "report.json").read_text())
        gate = self.recipe.gate_for(name, backend.computes_fp16(target))
        files = {}
        for entry in [report, *report.get("methods", [])]:
            method = entry.get("name", "forward")
            entry["verification"].update(gate_db=gate, passed=entry["verification"]["psnr_db"] >= gate,
                                         vectors=bundle.vectors_file(name, method))
            files[bundle.vectors_file(name, method)] = hit / f"vectors.{method}.safetensors"
        if not report.get("methods"):
            report.pop("methods", None)
        caveats = backend.caveats(target, spec)
        entry = ComponentEntry.model_validate({"file": bundle.program_file(name), "backend": target.backend,
                                               **report, **({"caveats": caveats} if caveats else {})})
        return ComponentResult(name, entry, hit / "program.pte", files, cached)

    def _export(self, name: str, module, spec, target: Target, backend, vector_inputs, calibration):
        """Export (+ quantize) one component for ``target``, with the backend's rewrites and `keep_fp32` islands."""
        # The dtype the program is exported in; a delegate may compute it in another (Vulkan force_fp16 takes an
        # fp32 graph and runs it in fp16).
        export_precision = backend.export_precision(target, spec)
        keep = spec.keep_fp32 if export_precision == "fp16" else []
        if spec.is_quantized:
            exported = quantize.run(name, module, spec, backend, vector_inputs[0], calibration,
                                    minimum_deployment_target=getattr(target.options, "minimum_deployment_target",
                                                                      None),
                                    dtype=export.DTYPES[export_precision], keep_fp32=keep)
        else:
            exported = export.run(name, module, export_precision, vector_inputs[0], backend.rewrites, keep)
        missing = [p for p in keep if not any(quantize.keep_match(n, [p]) for n in exported.kept_fp32)]
        if missing:
            raise UserError(f"components.{name}.keep_fp32: {missing[0]!r} matches no module of {name}; expected a "
                            f"glob of qualified module names, as the fp16 guard prints them (e.g. "
                            f"{next((n for n, _ in module.named_modules() if n.count('.') == 2), 'conv_in')!r})")
        return exported, export_precision

    def _make_program(self, out: Path, target: Target, backend, name: str, spec, vector_inputs: dict,
                      calibration: dict | None, guarded: bool, status: Callable[[str], None]) -> None:
        """Export (and quantize) each method, lower them together into one program, verify every method."""
        module = self.checkpoint.modules()[name]
        methods = list(vector_inputs)
        forward = methods[0]
        with torch.no_grad():
            expected = {m: [module(*inputs).float() for inputs in vector_inputs[m]] for m in methods}
        if guarded and spec.keep_fp32:
            target = backend.mixed(target)  # the delegate computes each op in the program's dtype: islands stay fp32

        def export_all(spec: ComponentSpec, target: Target, what: str = "export"):
            """Every method exported (+ quantized) the same way: their weights are stored once in the program."""
            status(f"{name}: {what}" + (" + quantize" if spec.is_quantized else ""))
            done = {m.name: self._export(name, module, spec, target, backend, vector_inputs[m],
                                         calibration[m] if calibration else None) for m in methods}
            return {k: e for k, (e, _) in done.items()}, done["forward"][1]

        exported, export_precision = export_all(spec, target)
        guard = None
        if guarded:  # the forward method's twin on the default size's calibration inputs
            status(f"{name}: fp16 guard")
            first = exported["forward"]
            guard = fidelity.fp16_guard(simulate.twin(first.program, backend.computes_fp16(target)),
                                        calibration[forward])
            guard["action"] = "kept_layers_fp32" if first.kept_fp32 else "none"
            guard["kept_fp32"] = first.kept_fp32
            if guard["overflow"]:
                if spec.on_fp16_overflow == "fail":
                    raise VerificationError(fidelity.overflow_message(name, guard))
                guard["action"] = "kept_fp32"
                spec = spec.model_copy(update={"precision": "fp32", "keep_fp32": []})
                target = backend.in_fp32(target)
                exported, export_precision = export_all(spec, target, "export in fp32")
        compute_dtype = backend.compute_dtype(target, spec)
        twins = {}
        if not backend.runs_here:
            # The simulated twin: the very graph that is lowered next (lowering moves its constants out, so it is
            # taken and saved now), computed as the delegate computes it. Saved with the program, so the fidelity
            # stage simulates exactly what was built.
            forced = backend.computes_fp16(target)
            for m in methods:
                torch.export.save(exported[m.name].program, str(out / f"twin.{m.name}.pt2"))
                twins[m] = simulate.twin(exported[m.name].program, forced)
            (out / "twin.json").write_text(json.dumps({"forced_fp16": forced}) + "\n")
        status(f"{name}: lower" + (f" ({len(methods)} methods)" if len(methods) > 1 else ""))
        quantization = exported["forward"].quantization
        whole = self.recipe.gates.delegated_flops_share == 1.0
        with backend.lowering(target, spec, quantization):
            lowered = lower.run(exported, backend.partitioners(target, spec, whole_graph=whole),
                                backend.transform_passes())
        backend.check_lowered(name, quantization, lowered.coverage)
        status(f"{name}: serialize")
        program = serialize.run(lowered)
        (out / "program.pte").write_bytes(program.data)

        status(f"{name}: verify")
        input_names, output_names = COMPONENT_IO[name]
        described = []
        for m in methods:
            vectors = list(zip(vector_inputs[m], expected[m]))
            if backend.runs_here:
                verification = verify.run_executed(program.data, vectors, gate_db=0.0, method=m.name).to_dict()
            else:
                verification = verify.run_simulated(twins[m], vectors, gate_db=0.0).to_dict()
                verification["simulated_as"] = (simulate.SIMULATED_AS if twins[m].fp16
                                                 else "eager PyTorch, float32 compute")
            verification["vectors_from"] = "the first eval prompt (held out from calibration)"
            bundle.save_vectors(out / f"vectors.{m.name}.safetensors", vectors, input_names)
            described.append({
                "name": m.name, "resolution": m.resolution, "batch": m.batch,
                "inputs": [bundle.TensorSpec.of(n, t).model_dump() for n, t in zip(input_names, vector_inputs[m][0])],
                "outputs": [bundle.TensorSpec.of(n, t).model_dump() for n, t in zip(output_names, expected[m][:1])],
                "verification": verification,
            })
        report = {
            "precision": spec.precision,  # fp32 when the fp16 guard kept the component in fp32
            "sha256": program.sha256,
            "bytes": len(program.data),
            "inputs": described[0]["inputs"],
            "outputs": described[0]["outputs"],
            **lowered.coverage,
            "quantization": quantization,
            "verification": described[0]["verification"],
            "program_dtype": str(export.DTYPES[export_precision]).removeprefix("torch."),
            "compute_dtype": str(compute_dtype).removeprefix("torch."),
            "fp16_guard": guard,
            "structure": backend.inspect(program.data, target, spec, described[0]["inputs"], described[0]["outputs"],
                                         quantized=(quantization or {}).get("quantized", {})),
            "methods": described[1:],
        }
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    # ------------------------------------------------------------------ whole targets
    def target(self, target: Target) -> TargetResult:
        backend = backends.get(target.backend)
        result = TargetResult(target.name, target.backend, Path(self.recipe.output) / target.name)
        started = time.time()
        n_workers = self.in_workers(target)
        with tqdm(COMPONENTS, desc=f"build {target.name}", disable=not self.progress, leave=False) as bar:
            for name in bar:
                result.components[name] = self.component(target, name, bar.set_postfix_str)
        for name, comp in result.components.items():
            v = comp.entry.verification
            if not v.passed:
                result.failures.append(f"{target.name}/{name}: {v.mode} PSNR {v.psnr_db:.1f} dB vs eager fp32 "
                                       f"is below the gate {v.gate_db:.1f} dB (gates.component_psnr_db)")
            failed = [c for c in comp.entry.structure.get("checks", []) if not c["passed"]]
            if failed:
                result.failures.append(f"{target.name}/{name}: structural check "
                                       + "; ".join(f"{c['check']} failed ({c['detail']})" for c in failed))
            warning = coverage_report.warning(name, target.name, comp.entry.model_dump())
            if warning:
                result.warnings.append(warning)
            gate = self.recipe.gates.delegated_flops_share
            share = comp.entry.delegated_flops_share
            if gate is not None and (share or 0.0) < gate:
                cpu = ", ".join(f"{op} {f:,}" for op, f in list(comp.entry.fallback_flops.items())[:3])
                result.failures.append(f"{target.name}/{name}: {100 * (share or 0.0):.2f}% of its FLOPs run in the "
                                       f"delegate, below the gate {100 * gate:g}% (gates.delegated_flops_share); "
                                       f"on the CPU: {cpu or 'nothing countable'}")
        if result.failures:
            return result

        images = result.fidelity = self.fidelity(target, backend, result)
        images["gates"] = self.recipe.gates.model_dump(include={"image_psnr_db", "image_ssim"})
        result.failures.extend(f"{target.name}: {f}" for f in fidelity.check_gates(
            images, self.recipe.gates.image_psnr_db, self.recipe.gates.image_ssim))
        if result.failures:
            return result

        manifest = bundle_stage.manifest(self.recipe, self.checkpoint, target, backend, self.settings,
                                         self.resolutions, result.components, images, result.warnings, started,
                                         n_workers)
        bundle_stage.run(result.bundle, manifest, result.components, self.checkpoint, backend, target,
                         seal=lambda tmp: self.on_devices(target, tmp, manifest, result))
        return result

    def in_workers(self, target: Target) -> int:
        """The programs of `target` missing from the cache, built side by side in worker processes when more than
        one is missing and the CPUs and memory allow (mdship.workers); the component loop then reads them from the
        cache. The recordings they need are made here first, once. Returns the number of worker processes used
        (1: none, everything in this process)."""
        if not self.cache.enabled:  # --force: every stage is rebuilt here, none read back from the cache
            return 1
        missing = {}
        for name in COMPONENTS:
            key, methods, _, calibrated, _ = self.program_key(target, name)
            hit = self.cache.get("program", key)
            if hit is None:
                missing[name] = (key, methods, calibrated)
            else:
                self._ready[key] = (hit, True)
        if len(missing) < 2:
            return 1
        fp32_bytes = {n: sum(p.numel() * 4 for p in m.parameters()) for n, m in self.checkpoint.modules().items()}
        sizes = {name: fp32_bytes[name] for name in missing}
        n = workers.count(sizes, sum(fp32_bytes.values()))
        if n < 2:
            return 1
        for name, (_, methods, calibrated) in missing.items():
            if calibrated:
                for m in methods:
                    self.calibration_recording(m.resolution)
        jobs = [workers.Job(self.recipe, target.name, name, str(self.cache.root), self.cache.remote_url or "")
                for name in sorted(missing, key=lambda n: -sizes[n])]
        with tqdm(total=len(jobs), desc=f"build {target.name}: {len(jobs)} programs in {n} processes",
                  disable=not self.progress, leave=False) as bar:
            for result in workers.run(jobs, n, done=lambda job: bar.update()):
                for k, v in result["stats"].items():
                    self.cache.stats[k] += v
                self.cache.built.extend(result["built"])
        for key, _, _ in missing.values():
            self._ready[key] = (self.cache.path("program", key), False)
        return n

    # ------------------------------------------------------------------ other instruction sets
    def on_devices(self, target: Target, bundle_dir: Path, manifest, result: TargetResult) -> None:
        """The written bundle on each device lane (mdship.stages.device): recorded in the manifest beside the host's
        verification; a lane whose CPU models fail is a warning (emulated results do not gate the build)."""
        lanes = device.lanes(target.backend)
        if not lanes:
            return
        c = self.recipe.calibration
        prompt, seed = read_prompts(c.eval_prompts)[0], 0
        reference = eager_generator(self.checkpoint)
        reference.resolution = self.resolution
        eager = self.reference_images(reference, read_prompts(c.eval_prompts)[: c.num_eval_prompts])[0]
        manifest.devices = {}
        for lane in lanes:
            verdict = manifest.devices[lane.name] = device.run(lane, bundle_dir, prompt, seed, eager, self.cache)
            failed = [m for m, r in verdict.models.items() if not r.passed and not r.excluded]
            if failed:
                result.warnings.append(f"{target.name}: fails on {lane.name} ({verdict.mode}) on CPU model(s) "
                                       f"{', '.join(failed)}")
        manifest.warnings = list(result.warnings)

    # ------------------------------------------------------------------ end-to-end fidelity
    def fidelity(self, target: Target, backend, result: TargetResult) -> dict:
        """Images of the built programs vs the fp32 pipeline on the eval prompts (cached by program sha256s)."""
        c = self.recipe.calibration
        prompts = read_prompts(c.eval_prompts)[: c.num_eval_prompts]
        mode = "executed" if backend.runs_here else "simulated"
        unet_batch = result.components["unet"].entry.inputs[0].shape[0]
        key = make_key("fidelity", self.checkpoint.hash, {n: r.entry.sha256 for n, r in result.components.items()},
                       prompts, vars(self.settings), self.resolution, unet_batch, mode,
                       *([{"simulation": simulate.VERSION}] if mode == "simulated" else []))
        hit = self.cache.get("fidelity", key)
        if hit is None:
            def write(out: Path) -> None:
                reference = eager_generator(self.checkpoint)
                reference.resolution = self.resolution
                if mode == "executed":
                    calls = {n: programs.method(r.program) for n, r in result.components.items()}
                else:  # the simulated twins saved beside each program
                    calls = {n: simulate.twin(torch.export.load(str(r.program.with_name("twin.forward.pt2"))),
                                              json.loads(r.program.with_name("twin.json").read_text())["forced_fp16"])
                             for n, r in result.components.items()}
                candidate = program_generator(calls, reference.tokenize, reference.scheduler, self.resolution,
                                              unet_batch)
                report = fidelity.evaluate(self.reference_images(reference, prompts), candidate, prompts,
                                           self.settings, progress=self.progress, desc=f"fidelity {target.name}")
                report["mode"] = mode
                report["eval_prompts"] = c.eval_prompts
                (out / "fidelity.json").write_text(json.dumps(report, indent=2) + "\n")

            hit = self.cache.put("fidelity", key, write)
        return json.loads((hit / "fidelity.json").read_text())

    def reference_images(self, reference, prompts: list[str]) -> list[np.ndarray]:
        """The fp32 pipeline's eval images, cached by checkpoint, prompts, sampler and resolution: every target
        and recipe on the same checkpoint compares against the same images, computed once (at 512 px they cost
        minutes)."""
        key = fidelity.reference_key(self.checkpoint.hash, prompts, self.settings, self.resolution)
        return fidelity.cached_images(self.cache, "reference", key, lambda: fidelity.reference_images(
            reference, prompts, self.settings, progress=self.progress))


def build(recipe: Recipe, force: bool = False, progress: bool = True, cache: Cache | None = None,
          targets: list[str] | None = None) -> list[TargetResult]:
    """Build every target of `recipe` (or those named in `targets`: one CI matrix job builds one)."""
    names = [t.name for t in recipe.targets]
    unknown = [n for n in targets or [] if n not in names]
    if unknown:
        raise UserError(f"--target {unknown[0]}: {recipe.name} has no such target; expected one of "
                        f"{', '.join(names)}")
    chosen = [t for t in recipe.targets if not targets or t.name in targets]
    for t in chosen:  # before any work: a bundle that cannot be written is found now, not after an hour
        inputs.check_output_dir(Path(recipe.output) / t.name, "output")
    workers.requested()  # a bad MDSHIP_BUILD_WORKERS, likewise
    builder = Builder(recipe, force=force, cache=cache, progress=progress)
    results = [builder.target(t) for t in chosen]
    failures = [f for r in results for f in r.failures]
    if failures:
        raise VerificationError("; ".join(failures))
    return results
