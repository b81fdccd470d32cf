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

import numpy as np
import torch
from tqdm import tqdm

from mdship import backends, simulate
from mdship import coverage as coverage_report
from mdship.adherence import read_prompts
from mdship.cache import Cache, make_key, toolchain_versions
from mdship.errors import VerificationError
from mdship.pipeline import SamplerSettings, eager_generator
from mdship.recipe import Recipe, Target
from mdship.stages import bundle, calibrate, export, fidelity, load, lower, quantize, serialize, structure, verify
from mdship.stages.calibrate import COMPONENT_IO, COMPONENTS

#: first seed of the calibration prompts (the eval prompts use 0..n-1: held out by prompt and by latent)
CALIBRATION_SEED = 1000

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


def _program_batch(name: str, settings: SamplerSettings, mode: str) -> int:
    return 2 if name == "unet" and settings.guidance != 1.0 and mode == "batch2" else 1


def _target_key(target: Target) -> dict:
    """The target options a program depends on: not its name (two targets that differ only in name share their
    programs) and not emit_mlpackage (the .mlpackage is unpacked from the cached .pte at bundle time)."""
    data = target.model_dump(exclude={"name"})
    if data.get("coreml"):
        data["coreml"].pop("emit_mlpackage", None)
    return data


def _fp16_guarded(target: Target, spec) -> bool:
    """Whether a component computes in fp16 (its precision, or a delegate that computes fp16 anyway)."""
    return spec.uses_fp16 or target.computes_fp16


def _in_fp32(spec, target: Target):
    """The spec and target that compute a component in fp32 (on_fp16_overflow: fp32)."""
    spec = spec.model_copy(update={"precision": "fp32"})
    if target.vulkan is not None:
        target = target.model_copy(update={"vulkan": target.vulkan.model_copy(update={"force_fp16": False})})
    if target.coreml is not None:
        target = target.model_copy(update={"coreml": target.coreml.model_copy(update={"compute_precision": "fp32"})})
    return spec, target


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
        self._calibration: calibrate.Recording | None = None

    # ------------------------------------------------------------------ recordings
    def eval_recording(self) -> calibrate.Recording:
        """The fp32 pipeline's component inputs on the first evaluation prompt(s): the test vectors' source."""
        if self._recording is None:
            prompts = read_prompts(self.recipe.calibration.eval_prompts)[:1]
            self._recording = calibrate.run(self.model, prompts, self.settings, seed=0, resolution=self.resolution,
                                            cache=self.cache, desc="test vectors")
        return self._recording

    def calibration_prompts(self) -> list[str]:
        c = self.recipe.calibration
        return read_prompts(c.prompts)[: c.num_prompts]

    def calibration_recording(self) -> calibrate.Recording:
        """The fp32 pipeline's component inputs on the calibration prompts (static int8 observers, fp16 guard).

        Seeds start at CALIBRATION_SEED, so calibration latents differ from the eval prompts' (seeds 0..n-1)."""
        if self._calibration is None:
            self._calibration = calibrate.run(self.model, self.calibration_prompts(), self.settings,
                                              seed=CALIBRATION_SEED, resolution=self.resolution, cache=self.cache,
                                              desc="calibrate")
        return self._calibration

    def _needs_calibration(self, target: Target, spec) -> bool:
        return spec.needs_calibration or _fp16_guarded(target, spec)

    # ------------------------------------------------------------------ one component on one target
    def component(self, target: Target, name: str, bar) -> ComponentResult:
        backend = backends.get(target.backend)
        spec = self.recipe.component(name)
        mode = backends.guidance_mode(self.recipe.sampler.guidance_mode, backend)
        batch = _program_batch(name, self.settings, mode)
        vector_inputs = [calibrate.for_program(name, call, batch) for call in _pick_vectors(self.eval_recording(), name)]
        shapes = [[list(t.shape) for t in inputs] for inputs in vector_inputs]
        key = make_key("program", self.model.hash, name, spec.model_dump(), _target_key(target), shapes,
                       [[t.flatten()[:16].tolist() for t in inputs] for inputs in vector_inputs],
                       *([{"calibration": self.calibration_prompts(), "seed": CALIBRATION_SEED}]
                         if self._needs_calibration(target, spec) else []))
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

        calibration = None
        if self._needs_calibration(target, spec):
            batch = vector_inputs[0][0].shape[0]
            calibration = [calibrate.for_program(name, call, batch)
                           for call in self.calibration_recording().calls[name]]
        guard = None
        if _fp16_guarded(target, spec):
            bar.set_postfix_str(f"{name}: fp16 guard")
            guard = fidelity.fp16_guard(module, calibration)
            if guard["overflow"]:
                where = (f"{name}: fp16 output has Inf/NaN on calibration call {guard['first_bad_call']} "
                         f"(largest finite |value| {guard['max_abs']:g})")
                if spec.on_fp16_overflow == "fail":
                    raise VerificationError(f"{where}; set components.{name}.on_fp16_overflow: fp32 to keep it in "
                                            f"fp32, or fix the checkpoint")
                guard["action"] = "kept_fp32"
                spec, target = _in_fp32(spec, target)
            else:
                guard["action"] = "none"

        bar.set_postfix_str(f"{name}: export" + (" + quantize" if spec.is_quantized else ""))
        # The dtype the program is exported in; a delegate may compute it in another (Vulkan force_fp16 takes an
        # fp32 graph and runs it in fp16: its int4 linear fusion breaks on fp16 graphs).
        export_precision = backend.export_precision(target, spec)
        if spec.is_quantized:
            exported = quantize.run(name, module, spec, backend.name, vector_inputs[0], calibration,
                                    minimum_deployment_target=target.coreml.minimum_deployment_target
                                    if target.coreml else None, dtype=export.DTYPES[export_precision])
        else:
            exported = export.run(name, module, export_precision, vector_inputs[0])
        compute_dtype = backend.compute_dtype(target, spec)
        # The eager twin for simulated verification, taken before lowering (which moves constants out of the
        # exported program): the same (quantized) graph, every float op in the delegate's compute dtype.
        simulated = None if backend.executes_here else simulate.in_dtype(exported.program, compute_dtype)
        bar.set_postfix_str(f"{name}: lower")
        lowered = lower.run(exported, backend.partitioners(target, spec), backend.transform_passes())
        quantize.check_lowered(name, backend.name, exported.quantization, lowered.coverage)
        bar.set_postfix_str(f"{name}: serialize")
        program = serialize.run(lowered)
        bar.set_postfix_str(f"{name}: verify")
        if backend.executes_here:
            verification = verify.run_executed(program.data, vectors, gate_db=0.0).to_dict()
        else:  # nothing runs this target here (Vulkan, Core ML on Linux)
            verification = verify.run_simulated(simulated, vectors, gate_db=0.0).to_dict()
            verification["simulated_as"] = f"eager PyTorch, {str(compute_dtype).removeprefix('torch.')} compute"

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
            "verification": {**verification, "vectors_from": "the first eval prompt (held out from calibration)"},
            "precision": spec.precision,
            "program_dtype": str(export.DTYPES[export_precision]).removeprefix("torch."),
            "compute_dtype": str(compute_dtype).removeprefix("torch."),
            "fp16_guard": guard,
            "structure": structure.run(program.data, target, spec,
                                       [bundle.tensor_spec(n, t) for n, t in zip(input_names, vector_inputs[0])],
                                       [bundle.tensor_spec(n, t) for n, t in zip(output_names, expected[:1])],
                                       compute_fp16=compute_dtype == torch.float16,
                                       quantized=(exported.quantization or {}).get("quantized", {})),
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
            failed = [c for c in comp.entry.get("structure", {}).get("checks", []) if not c["passed"]]
            if failed:
                result.failures.append(f"{target.name}/{name}: structural check "
                                       + "; ".join(f"{c['check']} failed ({c['detail']})" for c in failed))
            warning = coverage_report.warning(name, target.name, comp.entry)
            if warning:
                result.warnings.append(warning)
        if result.failures:
            return result

        images = result.fidelity = self.fidelity(target, backend, result)
        result.failures.extend(f"{target.name}: {f}" for f in fidelity.check_gates(
            images, self.recipe.gates.image_psnr_db, self.recipe.gates.image_ssim))
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
            "verification": _verification_summary(backend, result),
            "fidelity": images,
            "warnings": list(result.warnings),
            "build": {
                "seconds": round(time.time() - started, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "cached": all(c.cached for c in result.components.values()),
                "host": f"{platform.system()} {platform.machine()}",
            },
        }
        write_extras = None
        if target.coreml is not None and target.coreml.emit_mlpackage:
            def write_extras(directory: Path) -> None:
                # The standalone Core ML model of each component: the delegate's own .mlpackage, unpacked from
                # the .pte (one per Core ML partition; with several, each is only a piece of the component).
                for n, c in result.components.items():
                    written = structure.extract_mlpackages(c.program.read_bytes(), directory, n)
                    manifest["components"][n]["mlpackage"] = [p.name for p in written]
        bundle.write(result.bundle, {n: c.program for n, c in result.components.items()},
                     {n: c.vectors for n, c in result.components.items()}, self.model.write_tokenizer,
                     self.model.scheduler(), sampler, manifest, write_extras=write_extras)
        return result

    # ------------------------------------------------------------------ end-to-end fidelity
    def fidelity(self, target: Target, backend, result: TargetResult) -> dict:
        """Images of the built programs vs the fp32 pipeline on the eval prompts (cached by program sha256s)."""
        c = self.recipe.calibration
        prompts = read_prompts(c.eval_prompts)[: c.num_eval_prompts]
        mode = "executed" if backend.executes_here else "simulated"
        unet_batch = result.components["unet"].entry["inputs"][0]["shape"][0]
        key = make_key("fidelity", self.model.hash, {n: r.entry["sha256"] for n, r in result.components.items()},
                       prompts, vars(self.settings), self.resolution, unet_batch, mode)
        hit = self.cache.get("fidelity", key)
        if hit is None:
            def write(out: Path) -> None:
                ckpt = self.model.checkpoint()
                reference = eager_generator(ckpt)
                reference.resolution = self.resolution
                if mode == "executed":
                    candidate = fidelity.pte_generator({n: r.program for n, r in result.components.items()},
                                                       reference.tokenize, reference.scheduler, self.resolution,
                                                       unet_batch)
                else:
                    modules = {n: self._simulated(target, backend, n, r.entry) for n, r in result.components.items()}
                    candidate = fidelity.module_generator(modules, reference.tokenize, reference.scheduler,
                                                          self.resolution, unet_batch)
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
        from safetensors.numpy import load_file, save_file

        key = make_key("reference", self.model.hash, prompts, vars(self.settings), self.resolution)
        hit = self.cache.get("reference", key)
        if hit is None:
            def write(out: Path) -> None:
                images = fidelity.reference_images(reference, prompts, self.settings, progress=self.progress)
                save_file({str(i): np.ascontiguousarray(im) for i, im in enumerate(images)},
                          str(out / "images.safetensors"))  # to_uint8 returns HWC views of CHW memory

            hit = self.cache.put("reference", key, write)
        flat = load_file(str(hit / "images.safetensors"))
        return [flat[str(i)] for i in range(len(prompts))]

    def _simulated(self, target: Target, backend, name: str, entry: dict) -> torch.nn.Module:
        """The eager twin of a built component (exported again, not lowered) in the delegate's compute dtype."""
        spec = self.recipe.component(name)
        if (entry.get("fp16_guard") or {}).get("action") == "kept_fp32":
            spec, target = _in_fp32(spec, target)
        module = self.model.checkpoint().modules()[name]
        mode = backends.guidance_mode(self.recipe.sampler.guidance_mode, backend)
        batch = _program_batch(name, self.settings, mode)
        example = calibrate.for_program(name, _pick_vectors(self.eval_recording(), name)[0], batch)
        if spec.is_quantized:
            calibration = None
            if spec.needs_calibration:
                calibration = [calibrate.for_program(name, call, batch)
                               for call in self.calibration_recording().calls[name]]
            exported = quantize.run(name, module, spec, backend.name, example, calibration,
                                    minimum_deployment_target=target.coreml.minimum_deployment_target
                                    if target.coreml else None)
        else:
            exported = export.run(name, module, spec.precision, example)
        return simulate.in_dtype(exported.program, backend.compute_dtype(target, spec))

    @property
    def recipe_name(self) -> str:
        return self.recipe.source.stem if self.recipe.source else "recipe"


def _verification_summary(backend, result: TargetResult) -> dict:
    modes = sorted({c.entry["verification"]["mode"] for c in result.components.values()})
    summary = {"mode": modes[0] if len(modes) == 1 else "mixed"}
    if not backend.executes_here:
        summary["note"] = (f"{backend.name} programs cannot run on this machine: they were checked structurally "
                           f"(delegate blobs, {'Core ML spec' if backend.name == 'coreml' else 'delegate graph'}) "
                           f"and numerically by running the same exported graph in eager PyTorch in the "
                           f"delegate's compute dtype (simulated, not measured on the ExecuTorch runtime)")
    return summary


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
                         "delegated_flops_share": e.get("delegated_flops_share"),
                         "fallback_ops": e.get("fallback_ops", {}),
                         "structure_ok": e.get("structure", {}).get("ok"),
                         "verification": e["verification"]["mode"], "psnr_db": round(e["verification"]["psnr_db"], 2),
                         "gate_db": e["verification"]["gate_db"], "cached": c.cached})
    return rows


def format_summary(results: list[TargetResult]) -> str:
    header = (f"{'target':<10} {'component':<13} {'prec':<5} {'MiB':>8} {'parts':>5} {'cpu ops':>7} {'deleg%':>6} "
              f"{'check':<9} {'PSNR dB':>8} {'gate':>5}  cache")
    lines = [header, "-" * len(header)]
    fallbacks = []
    for row in summary_rows(results):
        share = row["delegated_flops_share"]
        lines.append(f"{row['target']:<10} {row['component']:<13} {row['precision']:<5} {row['bytes'] / 2**20:8.2f} "
                     f"{row['partitions']:>5} {row['non_delegated_ops']:>7} "
                     f"{'-' if share is None else f'{100 * share:.1f}':>6} {row['verification']:<9} "
                     f"{row['psnr_db']:>8.1f} {row['gate_db']:>5.0f}  {'hit' if row['cached'] else 'built'}")
        if row["fallback_ops"]:
            ops = ", ".join(f"{op} x{n}" for op, n in list(row["fallback_ops"].items())[:6])
            more = len(row["fallback_ops"]) - 6
            fallbacks.append(f"  {row['target']}/{row['component']}: {ops}{f', +{more} more' if more > 0 else ''}")
    if fallbacks:
        lines.append("ops left on the CPU (portable kernels):")
        lines.extend(fallbacks)
    for r in results:
        simulated = [n for n, c in r.components.items() if c.entry["verification"]["mode"] == "simulated"]
        if simulated:
            lines.append(f"note: {r.target} cannot run here; {', '.join(simulated)} verified by simulation "
                         f"(eager PyTorch in the delegate's dtype) and structural checks, not on the runtime")
        f = r.fidelity
        if f:
            lines.append(f"{r.target} images vs fp32 ({f['mode']}, {f['prompts']} eval prompts): PSNR mean "
                         f"{f['image_psnr_db']['mean']:.1f} / worst {f['image_psnr_db']['worst']:.1f} dB, SSIM mean "
                         f"{f['image_ssim']['mean']:.3f} / worst {f['image_ssim']['worst']:.3f}")
        for w in r.warnings:
            lines.append(f"warning: {w}")
    for r in results:
        lines.append(f"bundle: {r.bundle}")
    return "\n".join(lines)
