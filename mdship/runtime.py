"""The Python host runner: generate, verify and benchmark a bundle with the ExecuTorch runtime.

It reads nothing but the bundle directory (mdship.bundle: manifest, .pte programs, tokenizer files,
scheduler.json), so what works here is what an app would do on a device. Image generation reuses
`pipeline.program_generator`, so the sampler code is the eager reference's own.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import time
from pathlib import Path

import torch

from mdship import backends, programs
from mdship.atomic import atomic_file
from mdship.bundle import COMPONENTS, Bundle
from mdship.errors import BundleError
from mdship.threads import describe as threads_policy
from mdship.metrics import tensor_psnr
from mdship.pipeline import Generator, SamplerSettings, program_generator
from mdship.schedulers import SchedulerConfig


class Runner:
    """A bundle whose programs are loaded on the ExecuTorch runtime (each component once, on first use)."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self._programs: dict = {}
        self._methods: dict = {}

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Runner":
        """Open a bundle to run it; every file's sha256 is checked first unless ``verify`` is False."""
        runner = cls(Bundle.open(path))
        runner.require_runnable()
        if verify:
            runner.bundle.verify_files()
        return runner

    def require_runnable(self) -> None:
        backend = self.bundle.backend
        if not backends.get(backend).runs_here:
            here = [n for n in backends.NAMES if backends.get(n).runs_here]
            raise BundleError(f"{self.bundle.path}: a {backend} bundle cannot run on this machine (the ExecuTorch "
                              f"pip wheel runs {' and '.join(here)}); run it on the device, or check it here with "
                              f"`mdship verify`")

    def method(self, name: str, method: str = "forward"):
        """A loaded method of a component's program, as a callable (the program is loaded once)."""
        if (name, method) not in self._methods:
            program = self._programs.get(name) or programs.load(self.bundle.program(name))
            self._programs[name] = program
            self._methods[(name, method)] = programs.Method(program, method, str(self.bundle.program(name)))
        return self._methods[(name, method)]

    def call(self, name: str, *inputs: torch.Tensor, method: str = "forward") -> torch.Tensor:
        return self.method(name, method)(*inputs)

    @property
    def resolutions(self) -> list[int]:
        """Every image size the bundle serves, the default first."""
        return self.bundle.manifest.resolutions or [self.bundle.manifest.resolution]

    def variant(self, resolution: int | None = None, guidance: float | None = None) -> dict:
        """The method of each component for an image size and guidance: the UNet method of batch 2 when guidance
        runs and the bundle has one, else of batch 1 (two calls, or no guidance), else what it has."""
        resolution = resolution or self.bundle.manifest.resolution
        if resolution not in self.resolutions:
            raise BundleError(f"{self.bundle.path}: no {resolution} px programs; this bundle serves "
                              f"{', '.join(f'{r}x{r}' for r in self.resolutions)} (--width / --height)")
        guidance = self.bundle.manifest.sampler.guidance if guidance is None else guidance
        chosen = {}
        for name in COMPONENTS:
            fits = [m for m in self.bundle.methods(name) if name == "text_encoder" or m.resolution == resolution]
            want = 2 if guidance != 1.0 else 1
            chosen[name] = next((m for m in fits if m.batch == want), fits[0])
        return chosen

    def input_shape(self, name: str, index: int = 0) -> list[int]:
        return self.bundle.component(name).inputs[index].shape

    def scheduler(self) -> SchedulerConfig:
        cfg = SchedulerConfig.from_dict(self.bundle.scheduler_json())
        problems = cfg.validate()
        if problems:
            raise BundleError(f"{self.bundle.path / 'scheduler.json'}: {problems[0]}")
        return cfg

    def settings(self, sampler=None, steps=None, guidance=None, resolution: int | None = None) -> SamplerSettings:
        """Sampler settings: the bundle's recipe defaults, overridden by the user's."""
        recorded = self.bundle.manifest.sampler
        settings = SamplerSettings.resolve(self.scheduler(), sampler or recorded.kind, steps or recorded.steps,
                                           recorded.guidance if guidance is None else guidance)
        settings.batched_guidance = self.variant(resolution, settings.guidance)["unet"].batch == 2
        return settings

    @property
    def tokenizer(self):
        """The bundle's CLIP tokenizer (transformers.CLIPTokenizer), loaded once."""
        if not hasattr(self, "_tokenizer"):
            from mdship.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.bundle.tokenizer_dir)
        return self._tokenizer

    def generator(self, resolution: int | None = None, guidance: float | None = None) -> Generator:
        """The pipeline over this bundle's programs for an image size (default: the bundle's) and guidance."""
        from mdship.tokenizer import tokenize

        tokenizer = self.tokenizer
        max_length = self.input_shape("text_encoder")[1]
        chosen = self.variant(resolution, guidance)
        return program_generator({name: self.method(name, m.name) for name, m in chosen.items()},
                                 lambda prompts: tokenize(tokenizer, prompts, max_length), self.scheduler(),
                                 chosen["vae_decoder"].resolution, chosen["unet"].batch)


# ---------------------------------------------------------------------------------------------- verify
def verify(path: str | Path) -> dict:
    """Check every file against the manifest's sha256, then re-run the stored test vectors.

    Raises BundleError on a missing, truncated or tampered file; returns per-component results (a failed test
    vector is reported with passed=False; the caller decides the exit code).
    """
    bundle = Bundle.open(path)
    bundle.verify_files()
    results = {}
    runner = Runner(bundle)
    for name, comp in bundle.manifest.components.items():
        gate = comp.verification.gate_db
        if not backends.get(bundle.backend).runs_here:
            results[name] = {"mode": "structural", "passed": True, "gate_db": gate,
                             "note": f"{bundle.backend} cannot run here: files and hashes checked only"}
            continue
        scores = {m.name: min(tensor_psnr(expected, runner.call(name, *inputs, method=m.name))
                              for inputs, expected in bundle.test_vectors(name, m.name))
                  for m in bundle.methods(name)}
        worst = min(scores.values())
        results[name] = {"mode": "executed", "psnr_db": worst, "gate_db": gate, "passed": worst >= gate,
                         **({"methods": scores} if len(scores) > 1 else {})}
    return results


# ---------------------------------------------------------------------------------------------- bench
def _stats(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median_ms": round(statistics.median(ordered), 3), "p90_ms": round(p90, 3), "runs": len(ordered)}


def bench(path: str | Path, runs: int = 5, warmup: int = 1, threads: int | None = None,
          verify: bool = True) -> dict:
    """Load time, per-component latency, end-to-end latency (1-step and N-step), peak RSS."""
    runner = Runner.open(path, verify)
    if threads:
        programs.set_threads(int(threads))
    policy = threads_policy()
    report: dict = {"bundle": str(runner.bundle.path), "backend": runner.bundle.backend,
                    "threads": threads or policy["threads"], "thread_policy": policy,
                    "runs": runs, "warmup": warmup, "load_ms": {}, "components": {}}
    start = time.perf_counter()
    programs.runtime()  # one-time runtime initialisation, reported apart from the programs' load times
    report["runtime_init_ms"] = round((time.perf_counter() - start) * 1e3, 3)
    for name in COMPONENTS:
        start = time.perf_counter()
        runner.method(name)
        report["load_ms"][name] = round((time.perf_counter() - start) * 1e3, 3)
    for name in COMPONENTS:
        inputs = runner.bundle.test_vectors(name)[0][0]
        for _ in range(warmup):
            runner.call(name, *inputs)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            runner.call(name, *inputs)
            samples.append((time.perf_counter() - start) * 1e3)
        report["components"][name] = _stats(samples)

    for label, settings in (("one_step", runner.settings(sampler="one_step", guidance=1.0)),
                            (f"{runner.settings().steps}_step", runner.settings())):
        gen = runner.generator(guidance=settings.guidance)
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



def n_step_key(report: dict) -> str | None:
    """The key of `bench`'s end-to-end timing with the bundle's own sampler ("end_to_end_8_step"), or None."""
    return next((k for k in report if k.startswith("end_to_end_") and k.endswith("_step")
                 and k != "end_to_end_one_step"), None)


# ---------------------------------------------------------------------------------------------- profile
# ETDump events that wrap others (their time is the sum of what they contain) or happen once at load.
_WRAPPER_EVENTS = {"OPERATOR_CALL", "DELEGATE_CALL", "Method::execute"}


def op_label(event_name: str, delegated: bool) -> str | None:
    """'Convolution (NHWC, F32) IGEMM #12' -> 'Convolution (NHWC, F32) IGEMM'; 'native_call_add.out' -> 'aten add';
    None for an event that is not one operator (a wrapper, a load step)."""
    if event_name in _WRAPPER_EVENTS or not (delegated or event_name.startswith("native_call_")):
        return None
    if delegated:
        return re.sub(r" #\d+$", "", event_name)
    return "aten " + re.sub(r"\.\w+$", "", event_name.removeprefix("native_call_"))


def etdump_frame(etdump: Path):
    """The ETDump's execution events as executorch.devtools.Inspector's data frame (no ETRecord needed)."""
    import warnings

    from executorch.devtools import Inspector

    with warnings.catch_warnings():  # "Output Buffer not found": no intermediate tensors were asked for
        warnings.simplefilter("ignore")
        frame = Inspector(etdump_path=str(etdump)).to_dataframe()
    return frame[frame.event_block_name == "Execute"]


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
    runner = Runner.open(path, verify=False)  # bench checked the files before the timed runs
    bundle = runner.bundle
    if threads:
        programs.set_threads(int(threads))
    out = Path(out_dir) if out_dir else bundle.path.with_name(bundle.path.name + "-profile")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"bundle": str(bundle.path), "runs": runs, "warmup": warmup, "dir": str(out), "components": {}}
    for name in COMPONENTS:
        program = programs.load(bundle.program(name), enable_etdump=True)
        method = programs.Method(program, "forward", str(bundle.program(name)))
        inputs = bundle.test_vectors(name)[0][0]
        for _ in range(warmup + runs):
            method.outputs(*inputs)
        etdump = out / f"{name}.etdp"
        with atomic_file(etdump) as tmp:
            program.write_etdump_result_to_file(str(tmp), os.devnull)
        report["components"][name] = _summarize_etdump(etdump, warmup, top)
    return report


def _summarize_etdump(etdump: Path, warmup: int, top: int) -> dict:
    """Median time per run of each operator type, delegated or not, and its share of the method's time."""
    frame = etdump_frame(etdump)
    per_run = lambda raw: statistics.median(list(raw)[warmup:] or list(raw))  # noqa: E731
    method_ms = sum(per_run(r) for r in frame[frame.event_name == "Method::execute"].raw)
    ops: dict[tuple[str, bool], dict] = {}
    for name, raw, delegated in zip(frame.event_name, frame.raw, frame.is_delegated_op):
        delegated = bool(delegated)
        label = op_label(name, delegated)
        if label is None:
            continue
        entry = ops.setdefault((label, delegated), {"calls": 0, "ms": 0.0})
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
