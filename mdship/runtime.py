"""The Python host runner: generate, verify and benchmark a bundle with the ExecuTorch runtime.

It reads nothing but the bundle directory (manifest, .pte programs, tokenizer files, scheduler.json), so what
works here is what an app would do on a device. Image generation reuses `pipeline.Generator`, so the sampler
code is the eager reference's own.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mdship.errors import BundleError
from mdship.metrics import tensor_psnr
from mdship.pipeline import Generator, SamplerSettings
from mdship.schedulers import SchedulerConfig
from mdship.stages.bundle import MANIFEST_SCHEMA_VERSION, sha256_file
from mdship.stages.calibrate import COMPONENT_IO, COMPONENTS

RUNNABLE_BACKENDS = ("xnnpack", "portable")


@dataclass
class Bundle:
    path: Path
    manifest: dict
    _methods: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        """Read and check a bundle's manifest; one-line BundleError for anything a user can get wrong."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root}: bundle directory not found (expected the output of `mdship build`, "
                              f"e.g. artifacts/default/xnnpack)")
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"{root}: no manifest.json; not a bundle, or a build that did not finish")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != MANIFEST_SCHEMA_VERSION:
            raise BundleError(f"{manifest_path}: schema_version {version!r} is not supported by this mdship "
                              f"(expected {MANIFEST_SCHEMA_VERSION}); rebuild the bundle with this version")
        missing = [c for c in COMPONENTS if c not in manifest.get("components", {})]
        if missing:
            raise BundleError(f"{manifest_path}: component '{missing[0]}' is missing from the manifest")
        return cls(root, manifest)

    @property
    def backend(self) -> str:
        return self.manifest["target"]["backend"]

    def require_runnable(self) -> None:
        if self.backend not in RUNNABLE_BACKENDS:
            raise BundleError(f"{self.path}: a {self.backend} bundle cannot run on this machine (the ExecuTorch "
                              f"pip wheel runs {' and '.join(RUNNABLE_BACKENDS)}); run it on the device, or check "
                              f"it here with `mdship verify`")

    def file(self, name: str) -> Path:
        path = self.path / self.manifest["components"][name]["file"]
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (the manifest lists it)")
        return path

    def method(self, name: str):
        """The loaded 'forward' method of a component (loaded once, reused)."""
        if name not in self._methods:
            self.require_runnable()
            from executorch.runtime import Runtime

            try:
                program = Runtime.get().load_program(self.file(name))
                self._methods[name] = program.load_method("forward")
            except RuntimeError as e:
                raise BundleError(f"{self.file(name)}: the ExecuTorch runtime cannot load it ({e})") from None
        return self._methods[name]

    def call(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        return self.method(name).execute(list(inputs))[0]

    def vector_inputs(self, name: str, index: int = 0) -> list[torch.Tensor]:
        """The inputs of a component's stored test vector ``index`` (real inputs from the eval prompt)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path / self.manifest["components"][name]["verification"]["vectors"]
        try:
            flat = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise BundleError(f"{path}: unreadable test vectors ({e})") from None
        return [flat[f"{index}/input/{n}"] for n in COMPONENT_IO[name][0]]

    def input_shape(self, name: str, index: int = 0) -> list[int]:
        return self.manifest["components"][name]["inputs"][index]["shape"]

    def scheduler(self) -> SchedulerConfig:
        data = json.loads((self.path / "scheduler.json").read_text())
        data.pop("sampler", None)
        return SchedulerConfig(**data)

    def settings(self, sampler=None, steps=None, guidance=None) -> SamplerSettings:
        """Sampler settings: the bundle's recipe defaults, overridden by the user's."""
        recorded = self.manifest["sampler"]
        settings = SamplerSettings.resolve(self.scheduler(), sampler or recorded["kind"], steps or recorded["steps"],
                                           recorded["guidance"] if guidance is None else guidance)
        settings.batched_guidance = self.input_shape("unet")[0] == 2
        return settings

    def generator(self) -> Generator:
        from mdship.tokenizer import load_tokenizer, tokenize

        tokenizer = load_tokenizer(self.path / "tokenizer")
        max_length = self.input_shape("text_encoder")[1]
        unet_batch = self.input_shape("unet")[0]

        def unet(sample, timestep, context):
            if sample.shape[0] < unet_batch:  # no guidance on a batch-2 program: run [x; x], keep one half
                return self.call("unet", sample.repeat(unet_batch, 1, 1, 1), timestep,
                                 context.repeat(unet_batch, 1, 1))[-sample.shape[0]:]
            return self.call("unet", sample, timestep, context)

        return Generator(lambda prompts: tokenize(tokenizer, prompts, max_length),
                         lambda ids: self.call("text_encoder", ids), unet,
                         lambda latent: self.call("vae_decoder", latent), self.scheduler(),
                         self.manifest["resolution"])


# ---------------------------------------------------------------------------------------------- verify
def verify(path: str | Path) -> dict:
    """Check every file against the manifest's sha256, then re-run the stored test vectors.

    Raises BundleError on a missing, truncated or tampered file; returns per-component results (a failed test
    vector is reported with passed=False; the caller decides the exit code).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    bundle = Bundle.open(path)
    files = dict(bundle.manifest.get("files", {}))
    for name, comp in bundle.manifest["components"].items():
        files.setdefault(comp["file"], comp["sha256"])
    for rel, digest in sorted(files.items()):
        file = bundle.path / rel
        if not file.is_file():
            raise BundleError(f"{file}: missing (the manifest lists it)")
        if sha256_file(file) != digest:
            raise BundleError(f"{file}: sha256 does not match the manifest (tampered with or truncated)")

    results = {}
    runnable = bundle.backend in RUNNABLE_BACKENDS
    for name, comp in bundle.manifest["components"].items():
        gate = comp["verification"]["gate_db"]
        if not runnable:
            results[name] = {"mode": "structural", "passed": True, "gate_db": gate,
                             "note": f"{bundle.backend} cannot run here: files and hashes checked only"}
            continue
        vectors_path = bundle.path / comp["verification"]["vectors"]
        try:
            flat = load_file(str(vectors_path))
        except (SafetensorError, OSError) as e:
            raise BundleError(f"{vectors_path}: unreadable test vectors ({e})") from None
        input_names = COMPONENT_IO[name][0]
        scores = []
        for i in sorted({int(k.split("/")[0]) for k in flat}):
            inputs = [flat[f"{i}/input/{n}"] for n in input_names]
            scores.append(tensor_psnr(flat[f"{i}/expected"], bundle.call(name, *inputs)))
        results[name] = {"mode": "executed", "psnr_db": min(scores), "gate_db": gate, "passed": min(scores) >= gate}
    return results


# ---------------------------------------------------------------------------------------------- bench
def _stats(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median_ms": round(statistics.median(ordered), 3), "p90_ms": round(p90, 3), "runs": len(ordered)}


def bench(path: str | Path, runs: int = 5, warmup: int = 1, threads: int | None = None) -> dict:
    """Load time, per-component latency, end-to-end latency (1-step and N-step), peak RSS."""
    bundle = Bundle.open(path)
    bundle.require_runnable()
    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        _unsafe_reset_threadpool(int(threads))
    report: dict = {"bundle": str(bundle.path), "backend": bundle.backend, "threads": threads, "runs": runs,
                    "warmup": warmup, "load_ms": {}, "components": {}}
    from executorch.runtime import Runtime

    start = time.perf_counter()
    Runtime.get()  # one-time runtime initialisation, reported apart from the programs' load times
    report["runtime_init_ms"] = round((time.perf_counter() - start) * 1e3, 3)
    for name in COMPONENTS:
        start = time.perf_counter()
        bundle.method(name)
        report["load_ms"][name] = round((time.perf_counter() - start) * 1e3, 3)
    for name, comp in bundle.manifest["components"].items():
        inputs = bundle.vector_inputs(name)
        for _ in range(warmup):
            bundle.call(name, *inputs)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            bundle.call(name, *inputs)
            samples.append((time.perf_counter() - start) * 1e3)
        report["components"][name] = _stats(samples)

    gen = bundle.generator()
    for label, settings in (("one_step", bundle.settings(sampler="one_step", guidance=1.0)),
                            (f"{bundle.settings().steps}_step", bundle.settings())):
        for _ in range(warmup):
            gen("a photo", 0, settings)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            gen("a photo", 0, settings)
            samples.append((time.perf_counter() - start) * 1e3)
        report[f"end_to_end_{label}"] = {**_stats(samples), "unet_calls": settings.unet_calls}
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report



# ---------------------------------------------------------------------------------------------- profile
# ETDump events that wrap others (their time is the sum of what they contain) or happen once at load.
_WRAPPER_EVENTS = {"OPERATOR_CALL", "DELEGATE_CALL", "Method::execute"}


def _op_label(event_name: str, delegated: bool) -> str:
    """'Convolution (NHWC, F32) IGEMM #12' -> 'Convolution (NHWC, F32) IGEMM'; 'native_call_add.out' -> 'aten add'."""
    if delegated:
        return re.sub(r" #\d+$", "", event_name)
    return "aten " + re.sub(r"\.\w+$", "", event_name.removeprefix("native_call_"))


def profile(path: str | Path, runs: int = 3, warmup: int = 1, threads: int | None = None, top: int = 10,
            out_dir: str | Path | None = None) -> dict:
    """Per-operator profile of each component from ExecuTorch's ETDump.

    Each program is loaded again with ETDump enabled (event tracing costs time, so this never shares runs with
    `bench`'s timings) and run ``warmup + runs`` times on its stored test vector. The pip wheel's XNNPACK
    delegate names its own operators in the ETDump ("Convolution (NHWC, F32) IGEMM"); operators left on the CPU
    appear as their portable kernels ("aten native_group_norm"). No ETRecord is needed for that: it would add a
    full copy of each graph to the bundle only to map events back to source lines. The .etdp files are written to
    ``out_dir`` (default: BUNDLE-profile beside the bundle) for `executorch.devtools.Inspector`.
    """
    import warnings

    from executorch.runtime import Runtime

    bundle = Bundle.open(path)
    bundle.require_runnable()
    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        _unsafe_reset_threadpool(int(threads))
    out = Path(out_dir) if out_dir else bundle.path.with_name(bundle.path.name + "-profile")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"bundle": str(bundle.path), "runs": runs, "warmup": warmup, "dir": str(out), "components": {}}
    for name in COMPONENTS:
        program = Runtime.get().load_program(bundle.file(name), enable_etdump=True)
        method = program.load_method("forward")
        inputs = bundle.vector_inputs(name)
        for _ in range(warmup + runs):
            method.execute(inputs)
        etdump = out / f"{name}.etdp"
        tmp = etdump.with_name(f".{etdump.name}.tmp")
        program.write_etdump_result_to_file(str(tmp), os.devnull)
        os.replace(tmp, etdump)
        with warnings.catch_warnings():  # "Output Buffer not found": no intermediate tensors were asked for
            warnings.simplefilter("ignore")
            report["components"][name] = _summarize_etdump(etdump, warmup, top)
    return report


def _summarize_etdump(etdump: Path, warmup: int, top: int) -> dict:
    """Median time per run of each operator type, delegated or not, and its share of the method's time."""
    from executorch.devtools import Inspector

    frame = Inspector(etdump_path=str(etdump)).to_dataframe()
    frame = frame[frame.event_block_name == "Execute"]
    per_run = lambda raw: statistics.median(list(raw)[warmup:] or list(raw))  # noqa: E731
    method_ms = sum(per_run(r) for r in frame[frame.event_name == "Method::execute"].raw)
    ops: dict[tuple[str, bool], dict] = {}
    for name, raw, delegated in zip(frame.event_name, frame.raw, frame.is_delegated_op):
        delegated = bool(delegated)
        if name in _WRAPPER_EVENTS or not (delegated or name.startswith("native_call_")):
            continue
        entry = ops.setdefault((_op_label(name, delegated), delegated), {"calls": 0, "ms": 0.0})
        entry["calls"] += 1
        entry["ms"] += per_run(raw)
    delegated_ms = sum(e["ms"] for (_, d), e in ops.items() if d)
    ranked = sorted(ops.items(), key=lambda kv: -kv[1]["ms"])
    return {
        "etdump": str(etdump),
        "method_ms": round(method_ms, 3),
        "delegated_ms": round(delegated_ms, 3),
        "cpu_ms": round(sum(e["ms"] for (_, d), e in ops.items() if not d), 3),
        "top_ops": [{"op": op, "where": "delegate" if d else "cpu", "calls": e["calls"], "ms": round(e["ms"], 3),
                     "share": round(e["ms"] / method_ms, 4) if method_ms else 0.0}
                    for (op, d), e in ranked[:top]],
    }
