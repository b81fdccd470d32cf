"""Tables and ratios of benchmarks.sidebyside: pure functions over its JSON (unit-tested without timing anything).

A ratio is a *speed-up*: eager time / contender time, taken round by round (each round calls every contender once,
eager first) and summarised by its median, so a load spike that slows one round slows every contender in it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
from pathlib import Path

from mdship.atomic import atomic_file

SCHEMA_VERSION = 1
BASELINE, COMPILED = "eager_fp32", "compile_fp32"
#: the precision of a contender, whose measured GEMM peak it is held against (bundles: by the name's precision word)
PRECISION = {"eager_fp32": "fp32", "compile_fp32": "fp32", "torchao_int8": "int8", "xnnpack_fp32": "fp32"}
#: the peak of a precision: the best GEMM of that precision measured in the run, whichever library ran it
PEAKS = {"fp32": ("torch_fp32", "xnnpack_fp32"), "int8": ("xnnpack_int8",)}


def precision(contender: str) -> str | None:
    if contender in PRECISION:
        return PRECISION[contender]
    if contender.startswith("bundle:"):
        name = contender.lower()
        if any(w in name for w in ("w8a8", "int8", "8da8w")):
            return "int8"
        if "fp32" in name:
            return "fp32"
    return None  # fp16, 8da4w: no peak of that precision is measured


def peak(peaks: dict | None, contender: str) -> float | None:
    """The practical peak (GFLOP/s) a contender is held against, None when none of its precision was measured."""
    measured = [peaks[k] for k in PEAKS.get(precision(contender), ()) if (peaks or {}).get(k)]
    return max(measured) if measured else None


def speedups(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """{contender: median over rounds of baseline time / contender time}; missing baseline -> {}."""
    if baseline not in times:
        return {}
    base = times[baseline]
    return {k: statistics.median(b / t for b, t in zip(base, v)) for k, v in times.items()}


def spread(samples: list[float]) -> float:
    """(max - min) / median: how much a contender's own times varied."""
    m = statistics.median(samples)
    return (max(samples) - min(samples)) / m if m else 0.0


def rows(component: dict, peaks: dict | None) -> list[dict]:
    """One row per contender of one component: median, spread, speed-ups vs eager and vs torch.compile, GFLOP/s,
    share of the practical peak of its precision."""
    times = component["seconds"]
    vs_eager, vs_compile = speedups(times, BASELINE), speedups(times, COMPILED)
    out = []
    for name, samples in times.items():
        median = statistics.median(samples)
        gflops = component["flops"] / median / 1e9 if median and component.get("flops") else None
        best = peak(peaks, name)
        out.append({"contender": name, "median_s": median, "spread": spread(samples),
                    "vs_eager": vs_eager.get(name), "vs_compile": vs_compile.get(name), "gflops": gflops,
                    "peak_gflops": best, "of_peak": gflops / best if gflops and best else None})
    return out


def composed_image(run: dict, contender: str, unet_calls: int) -> float | None:
    """Text encoder + `unet_calls` UNet calls + decoder from the component medians (None if one is missing).
    A composition of measured components, not a measured end-to-end run: the sampler's own arithmetic is left out."""
    c = run["components"]
    try:
        return (statistics.median(c["text_encoder"]["seconds"][contender])
                + unet_calls * statistics.median(c["unet"]["seconds"][contender])
                + statistics.median(c["vae_decoder"]["seconds"][contender]))
    except KeyError:
        return None


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Side-by-side benchmark (benchmarks/sidebyside.py)", "",
             f"Machine: {m['cpu_model']}, {m['cores_available']} of {m['cores']} cores allowed, {m['platform']}; "
             f"torch {m['versions'].get('torch')}, executorch {m['versions'].get('executorch')}, "
             f"torchao {m['versions'].get('torchao')}; {results['created']}.", "",
             "Speed-up = eager fp32 time / contender time, median over interleaved rounds (> 1 is faster). "
             "Absolute times are this machine's; the ratios are the claim.", ""]
    for run in results["runs"]:
        load = run.get("load_average", {})
        policy = run.get("thread_policy", {})
        lines += [f"## {run['checkpoint']} at {run['resolution']} px, {run['threads']} thread(s)", "",
                  f"{run['runs']} runs after {run['warmup']} warm-up; OMP_WAIT_POLICY={policy.get('omp_wait_policy')}; "
                  f"load average at start {load.get('start')}, at end {load.get('end')}.", ""]
        peaks = run.get("peak_gflops")
        if peaks:
            lines += ["Practical peak (best of the GEMMs " + peaks.get("gemm", "") + "): " + ", ".join(
                f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items() if k != "gemm")
                + ". `of peak` holds an fp32 contender against the best fp32 GEMM of the run, an int8 one against the "
                "int8 GEMM.", ""]
        lines += ["| component | contender | median s | spread | vs eager | vs compile | GFLOP/s | of peak |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, component in run["components"].items():
            for r in rows(component, peaks):
                lines.append(f"| {name} | {r['contender']} | {r['median_s']:.3f} | {r['spread']:.0%} | "
                             f"{_fmt(r['vs_eager'], '.2f')}x | {_fmt(r['vs_compile'], '.2f')}x | "
                             f"{_fmt(r['gflops'], '.1f')} | {_fmt(r['of_peak'], '.0%')} |")
        lines.append("")
        lines += composed_table(run)
        lines += images_table(run)
        lines += etdump_tables(run)
    return "\n".join(lines)


def composed_table(run: dict, steps: int = 8) -> list[str]:
    """An N-step guided image composed from the component medians, for contenders timed on all three components."""
    if set(run["components"]) != {"text_encoder", "unet", "vae_decoder"}:
        return []
    batch = run["components"]["unet"]["inputs"][0][0]
    totals = {k: composed_image(run, k, steps) for k in run["components"]["unet"]["seconds"]}
    base = totals.get(BASELINE)
    lines = [f"Composed {steps}-step image (text encoder + {steps} UNet calls at batch {batch} + decoder, from the "
             "medians above; not a measured end-to-end run):", "", "| contender | s | vs eager |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v:.3f} | {_fmt(base / v if base and v else None, '.2f')}x |"
              for k, v in totals.items() if v is not None]
    return lines + [""]


def images_table(run: dict) -> list[str]:
    """Whole images measured end to end (sidebyside --images), interleaved: median, spread and speed-ups."""
    if not run.get("images"):
        return []
    lines = ["Measured end-to-end images (tokenizer, text encoder, the sampler's UNet calls, decoder, uint8; "
             "interleaved rounds):", "",
             "| image | contender | median s | spread | vs eager | vs compile |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for label, image in run["images"].items():
        what = (f"{label}, guidance {image['guidance']:g}, {image['unet_calls']} UNet call(s) at batch "
                f"{image['unet_batch']}")
        lines += [f"| {what} | {r['contender']} | {r['median_s']:.3f} | {r['spread']:.0%} | "
                  f"{_fmt(r['vs_eager'], '.2f')}x | {_fmt(r['vs_compile'], '.2f')}x |" for r in rows(image, None)]
    return lines + [""]


def etdump_tables(run: dict) -> list[str]:
    """Per-operator ETDump tables of the run's ExecuTorch programs (sidebyside --etdump), markdown lines."""
    lines = []
    for name, component in run["components"].items():
        for kind, profile in component.get("etdump", {}).items():
            lines += [f"ETDump, {name} / {kind}: {profile['method_ms']:.1f} ms per call "
                      f"({profile['cpu_ms']:.1f} ms outside the delegate)", "",
                      "| operator | where | calls | ms | share |", "| --- | --- | ---: | ---: | ---: |"]
            lines += [f"| {o['op']} | {o['where']} | {o['calls']} | {o['ms']:.1f} | {o['share']:.0%} |"
                      for o in profile["top_ops"]]
            lines.append("")
    return lines


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.lower().startswith("model name"))
    except (OSError, StopIteration):
        pass

    def version(p):
        try:
            return importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"cpu_model": cpu, "cores": os.cpu_count(), "cores_available": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "versions": {p: version(p) for p in ("torch", "executorch", "torchao")}}


def wrap(runs: list[dict]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "runs": runs}


def write_json(data: dict, out: str | Path) -> None:
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def write(results: dict, out: str | Path) -> None:
    """results.json and the markdown next to it (same stem, .md), each atomically."""
    write_json(results, out)
    with atomic_file(Path(out).with_suffix(".md")) as tmp:
        tmp.write_text(markdown(results))
