#!/usr/bin/env python3
"""mdship's programs side by side with what a user would run instead, per component, in one process, interleaved.

Contenders (each component, same inputs, same thread count):

    eager_fp32       the checkpoint's PyTorch module: the baseline every ratio is taken against
    compile_fp32     ``torch.compile`` (inductor, CPU) of the same module
    torchao_int8     eager after ``torchao.quantization.quantize_(Int8DynamicActivationInt8WeightConfig())``: what a
                     user of torchao alone gets (Linear layers only; convolutions stay fp32)
    xnnpack_fp32     the component exported and lowered here through mdship's own stages (export -> lower ->
                     serialize) and run by the ExecuTorch Python runtime: the fp32 bundle's program, without a build
    bundle:NAME      a built bundle's program for the component (``--bundle NAME=DIR``; fp16 / w8a8 / 8da4w ...)

Every round calls each contender once, eager first, so a load spike on a shared machine hits every contender of
that round: the ratio reported is the median over rounds of (contender time / eager time in the same round), with
the median and spread of each contender's own times beside it. A practical peak is measured in the same process
(large fp32 GEMMs through torch and through XNNPACK, and an int8 dynamically quantized GEMM through XNNPACK), and
each contender's achieved GFLOP/s (FLOPs of the eager fp32 module from ``torch.utils.flop_counter``) is reported as
a share of the peak of its precision.

The thread count is mdship's policy (mdship.threads) or ``--threads``, set before torch is imported; several
counts run as one child process each. Output: JSON (``--out``, written atomically) and the markdown tables
(``benchmarks.report``).

    python -m benchmarks.sidebyside --preset mobilediffusion --resolution 256 --components vae_decoder \
        --threads 1 2 --runs 5 --out artifacts/bench/sidebyside.json

``--images 1 8`` adds whole images measured end to end, interleaved the same way (mdship.pipeline's Generator over
each contender's three components: tokenizer, sampler arithmetic and uint8 conversion included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
CONTENDERS = ("eager_fp32", "compile_fp32", "torchao_int8", "xnnpack_fp32")
#: the square GEMM of the peak measurement: large enough that every library runs its best kernel (17 GFLOP)
GEMM_SIZE = 2048


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint ref (dir | builtin:NAME | preset:NAME@SEED)")
    p.add_argument("--preset", default="mobilediffusion", help="used when --checkpoint is not given")
    p.add_argument("--resolution", type=int, default=None, help="image size (default: the checkpoint's)")
    p.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=COMPONENTS)
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR",
                   help="also time this bundle's programs (repeatable); its checkpoint should be the same")
    p.add_argument("--unet-batch", type=int, default=2, help="UNet batch (2 = classifier-free guidance)")
    p.add_argument("--threads", type=int, nargs="+", default=None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-peak", action="store_true", help="skip the GEMM peak measurement")
    p.add_argument("--images", type=int, nargs="+", default=[], metavar="STEPS",
                   help="also time whole images end to end (needs all three components), e.g. --images 1 8")
    p.add_argument("--guidance", type=float, default=2.0,
                   help="classifier-free guidance of the --images of more than one step (1-step images run without)")
    p.add_argument("--etdump", action="store_true",
                   help="also profile each ExecuTorch program per operator (ETDump; separate runs, after timing)")
    p.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "sidebyside.json"))
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    if args.images and set(args.components) != set(COMPONENTS):
        p.error("--images needs every component: leave out --components or name all three")
    if any(n < 1 for n in args.images) or args.guidance <= 1.0:
        p.error("--images takes step counts >= 1 and --guidance must be above 1.0")
    for b in args.bundle:
        name, _, path = b.partition("=")
        if not name or not path or not Path(path, "manifest.json").is_file():
            p.error(f"--bundle {b}: expected NAME=DIR with DIR a bundle (DIR/manifest.json)")
    return args


# --------------------------------------------------------------------------------------------- contenders
def example_inputs(checkpoint, name: str, resolution: int, unet_batch: int) -> tuple:
    import torch

    g = torch.Generator().manual_seed(0)
    latent = resolution // 8
    tokens = checkpoint.text_encoder.config  # the prompt length is the text encoder's context
    if name == "text_encoder":
        return (torch.randint(0, tokens["vocab_size"], (1, tokens["max_position_embeddings"]), generator=g),)
    unet_cfg = checkpoint.unet.config
    if name == "unet":
        return (torch.randn(unet_batch, unet_cfg.in_channels, latent, latent, generator=g), torch.tensor([500]),
                torch.randn(unet_batch, tokens["max_position_embeddings"], unet_cfg.cross_attention_dim,
                            generator=g))
    return (torch.randn(1, checkpoint.vae.config.latent_channels, latent, latent, generator=g),)


def torchao_int8(module):
    import copy

    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    module = copy.deepcopy(module)
    quantize_(module, Int8DynamicActivationInt8WeightConfig())
    return module


def xnnpack_fp32(name: str, module, inputs: tuple):
    """The component through mdship's export -> lower -> serialize stages (the fp32 XNNPACK bundle's program)."""
    from mdship.backends.xnnpack import XnnpackBackend
    from mdship.recipe import ComponentSpec, Target
    from mdship.stages import export, lower, serialize

    backend = XnnpackBackend()
    with backend.lowering(Target(backend="xnnpack"), ComponentSpec()):  # as `mdship build` lowers it
        lowered = lower.run(export.run(name, module, "fp32", inputs), backend.partitioners(None, None),
                            backend.transform_passes())
    return _method(serialize.run(lowered).data)


def _method(data: bytes):
    """A callable program from .pte bytes, holding the bytes: the runtime reads them in place, without a copy."""
    from mdship import programs

    method = programs.method(data)
    method.pte_bytes = data
    return method


def make_contender(kind: str, name: str, module, inputs: tuple):
    import torch

    if kind == "eager_fp32":
        return module
    if kind == "compile_fp32":
        return torch.compile(module)
    if kind == "torchao_int8":
        return torchao_int8(module)
    if kind == "xnnpack_fp32":
        return xnnpack_fp32(name, module, inputs)
    raise ValueError(kind)


def bundle_contender(directory: str, name: str, inputs: tuple):
    """A bundle's program for `name`, refused in one line when it was built for other input shapes."""
    import json

    from mdship.bundle import Bundle

    bundle = Bundle.open(directory)
    expected = [i["shape"] for i in json.loads((Path(directory) / "manifest.json").read_text())["components"][name]["inputs"]]
    if expected != [list(t.shape) for t in inputs]:
        raise SystemExit(f"--bundle {directory}: {name} takes inputs {expected}, the benchmark's are "
                         f"{[list(t.shape) for t in inputs]} (same checkpoint, --resolution and --unet-batch?)")
    return _method(bundle.program(name).read_bytes())


def etdump_dir(out: str, threads: int) -> Path:
    """OUT.json (or a child's OUT.json.N.part) -> OUT-etdump/N-thread: the .etdp files of one thread count."""
    return Path(re.sub(r"\.json(\.\d+\.part)?$", "", str(out)) + "-etdump") / f"{threads}-thread"


def etdump_profile(pte: bytes, inputs: tuple, runs: int, warmup: int, path: Path) -> dict:
    """Per-operator times of one program from ExecuTorch's ETDump (mdship bench --profile's summary)."""
    from mdship import programs
    from mdship.runtime import _summarize_etdump

    program = programs.load(pte, enable_etdump=True)
    method = programs.Method(program, "forward", str(path))
    for _ in range(warmup + runs):
        method.outputs(*inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.write_etdump_result_to_file(str(path), os.devnull)
    return _summarize_etdump(path, warmup, top=12)


def flops_of(module, inputs: tuple) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------------------------- timing
def interleave(contenders: dict, inputs: tuple, runs: int, warmup: int, clock=time.perf_counter) -> dict:
    """{name: [seconds per round]}: each round calls every contender once, in the given order (baseline first)."""
    import torch

    times = {k: [] for k in contenders}
    with torch.no_grad():
        for round_ in range(warmup + runs):
            for k, f in contenders.items():
                start = clock()
                f(*inputs)
                if round_ >= warmup:
                    times[k].append(clock() - start)
    return times


def gemm_peaks(size: int = GEMM_SIZE, runs: int = 5) -> dict:
    """GFLOP/s of a [size x size] @ [size x size] fp32 GEMM through torch and through XNNPACK, and of the int8
    dynamically quantized GEMM (8da8w, mdship's int8 linear) through XNNPACK: the best of `runs` after warm-up."""
    import torch
    from torch import nn

    from mdship.backends.xnnpack import XnnpackBackend
    from mdship.stages import export, lower, serialize

    torch.manual_seed(0)
    linear = nn.Linear(size, size, bias=False).eval()
    x = torch.randn(size, size)
    flops = 2 * size ** 3
    backend = XnnpackBackend()

    def lowered(module):
        return _method(serialize.run(lower.run(export.run("gemm", module, "fp32", (x,)),
                                               backend.partitioners(None, None), backend.transform_passes())).data)

    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerAxis, quantize_

    int8 = nn.Sequential(nn.Linear(size, size, bias=False)).eval()
    int8[0].weight.data.copy_(linear.weight.data)
    quantize_(int8, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)))
    fns = {"torch_fp32": linear, "xnnpack_fp32": lowered(linear), "xnnpack_int8": lowered(int8)}
    times = interleave(fns, (x,), runs, 1)
    return {k: round(flops / min(v) / 1e9, 2) for k, v in times.items()} | {"gemm": f"{size}x{size}x{size}"}


# --------------------------------------------------------------------------------------------- one process
def measure(args) -> dict:
    """One thread count (this process's), every component and contender."""
    import torch

    from mdship import threads
    from mdship.checkpoint import Checkpoint

    ref = args.checkpoint or f"preset:{args.preset}@0"
    checkpoint = Checkpoint.open(ref)
    resolution = args.resolution or checkpoint.resolution
    modules = checkpoint.modules()
    result = {"checkpoint": ref, "resolution": resolution, "threads": torch.get_num_threads(),
              "thread_policy": threads.describe(), "runs": args.runs, "warmup": args.warmup,
              "load_average": {"start": list(os.getloadavg())}, "components": {}}
    if not args.no_peak:
        result["peak_gflops"] = gemm_peaks()
    made: dict[str, dict] = {}  # contender -> {component: callable}: what --images composes
    for name in args.components:
        module, inputs = modules[name], example_inputs(checkpoint, name, resolution, args.unet_batch)
        entry = {"inputs": [list(t.shape) for t in inputs], "flops": flops_of(module, inputs), "build_s": {}}
        contenders = {}
        for kind in args.contenders:
            start = time.perf_counter()
            contenders[kind] = make_contender(kind, name, module, inputs)
            if kind == "compile_fp32":  # compilation happens on the first call: count it as build time
                with torch.no_grad():
                    contenders[kind](*inputs)
            entry["build_s"][kind] = round(time.perf_counter() - start, 2)
        for spec in args.bundle:
            label, _, directory = spec.partition("=")
            contenders[f"bundle:{label}"] = bundle_contender(directory, name, inputs)
        entry["seconds"] = interleave(contenders, inputs, args.runs, args.warmup)
        for kind, f in contenders.items():
            made.setdefault(kind, {})[name] = f
        if args.etdump:
            entry["etdump"] = {
                kind: etdump_profile(f.pte_bytes, inputs, min(args.runs, 3), 1,
                                     etdump_dir(args.out, result["threads"]) / f"{name}-{kind.replace(':', '-')}.etdp")
                for kind, f in contenders.items() if hasattr(f, "pte_bytes")}
        result["components"][name] = entry
        print(f"{name}: " + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.3f}s" for k, v in entry["seconds"].items()),
              file=sys.stderr)
    if args.images:
        result["images"] = images(checkpoint, resolution, made, args)
    result["load_average"]["end"] = list(os.getloadavg())
    return result


#: the prompt of the end-to-end images (its length does not matter: the text encoder takes a fixed context)
IMAGE_PROMPT = "a large red circle on a blue background, top left"


def images(checkpoint, resolution: int, made: dict, args) -> dict:
    """Whole images, measured end to end and interleaved like the components: mdship.pipeline's Generator (tokenize,
    text encoder, the sampler's UNet calls and arithmetic, decoder, uint8) over each contender's three component
    callables. A 1-step image runs without guidance; more steps use DDIM with ``--guidance`` (two UNet calls per
    step, batched as ``--unet-batch`` says)."""
    from mdship.pipeline import SamplerSettings, program_generator
    from mdship.tokenizer import tokenize

    max_len = checkpoint.text_encoder.max_length
    out = {}
    for steps in args.images:
        settings = SamplerSettings.resolve(checkpoint.scheduler, "ddim", steps, 1.0 if steps == 1 else args.guidance)
        runs = {}
        for kind, calls in made.items():
            generator = program_generator(calls, lambda prompts: tokenize(checkpoint.tokenizer, prompts, max_len),
                                          checkpoint.scheduler, resolution, args.unet_batch)
            runs[kind] = lambda g=generator: g(IMAGE_PROMPT, 0, settings)
        # program calls: a guided step is one batch-2 call, or two batch-1 calls
        calls = steps * (2 if settings.guidance != 1.0 and args.unet_batch == 1 else 1)
        out[f"{steps}-step"] = {"steps": steps, "guidance": settings.guidance, "unet_calls": calls,
                                "unet_batch": args.unet_batch, "flops": None,
                                "seconds": interleave(runs, (), args.runs, args.warmup)}
        print(f"image {steps}-step: " + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.3f}s"
                                                  for k, v in out[f"{steps}-step"]["seconds"].items()), file=sys.stderr)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from benchmarks import report

    out = Path(args.out)
    if args.threads and "_MDSHIP_SIDEBYSIDE_CHILD" not in os.environ:
        runs = []
        for n in args.threads:  # one process per thread count: OpenMP reads its thread count at start-up
            child = _without_option(list(argv if argv is not None else sys.argv[1:]), ("--threads", "--out")) + ["--threads", str(n), "--out", f"{out}.{n}.part"]
            env = {**os.environ, "OMP_NUM_THREADS": str(n), "MDSHIP_THREADS": str(n),
                   "_MDSHIP_SIDEBYSIDE_CHILD": "1"}
            done = subprocess.run([sys.executable, "-m", "benchmarks.sidebyside", *child], cwd=ROOT, env=env)
            if done.returncode != 0:  # the child said why on stderr
                print(f"sidebyside: the {n}-thread run exited {done.returncode}; nothing written", file=sys.stderr)
                return done.returncode
            part = Path(f"{out}.{n}.part")
            runs.append(json.loads(part.read_text()))
            part.unlink()
        results = report.wrap(runs)
        report.write(results, out)
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
        return 0
    results = measure(args)
    if "_MDSHIP_SIDEBYSIDE_CHILD" in os.environ:
        report.write_json(results, out)
    else:
        report.write(report.wrap([results]), out)
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def _without_option(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv without `options` and the values that follow them (up to the next --flag)."""
    kept, skipping = [], False
    for a in argv:
        if a in options:
            skipping = True
            continue
        if skipping and not a.startswith("--"):
            continue
        skipping = False
        kept.append(a)
    return kept


if __name__ == "__main__":
    sys.exit(main())
