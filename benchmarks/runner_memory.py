#!/usr/bin/env python3
"""The C++ runner's memory per bundle, split by phase: loading (programs mapped, weights packed) and running.

Runs `mdship-runner BUNDLE --bench ...` once per bundle and samples its RSS and file-backed RSS (psutil's `rss` and
`shared`, from /proc/PID/statm) every few milliseconds; the load phase is the first `load_ms` of the run (the
runner's own report). Reports, in MiB (2^20 bytes, as the runner's `peak_rss_mb`): the programs' size and the #16
bound 1.3 x programs + 300, the peak (the runner's own, from getrusage), the load phase's peak and how much of it was
file-backed .pte pages, RSS right after loading, the running peak, and what running added. Output: JSON (``--out``,
atomically) and a markdown table beside it.

    python -m benchmarks.runner_memory artifacts/md-xnnpack-fp32/xnnpack artifacts/md-xnnpack-w8a8/xnnpack \
        --out artifacts/bench/runner-memory.json

A sample can miss a peak shorter than the interval; the runner's own peak cannot, and the table shows both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "artifacts" / "runner-build" / "mdship-runner"
MIB = 2**20


def sample(proc: subprocess.Popen, every_s: float = 0.005) -> list[tuple[float, float, float]]:
    """(seconds since the first sample, RSS MiB, file-backed RSS MiB) of `proc` until it exits."""
    import psutil

    samples, started = [], time.perf_counter()
    p = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            m = p.memory_info()  # /proc/PID/statm: cheap enough to sample every few ms
            rss, shared = m.rss / MIB, getattr(m, "shared", 0) / MIB  # shared: file-backed (+ shmem) pages
            samples.append((time.perf_counter() - started, rss, shared))
        except psutil.Error:
            pass
        time.sleep(every_s)
    return samples


def phases(samples: list[tuple[float, float, float]], load_s: float) -> dict:
    """Split samples at `load_s` after the first non-empty one: the load phase's peak (and its file-backed part),
    RSS right after loading, the running peak and what running added."""
    live = [s for s in samples if s[1] > 0]
    if not live:
        raise ValueError("no samples: the runner exited before it could be measured")
    t0 = live[0][0]
    load = [s for s in live if s[0] - t0 <= load_s] or live[:1]
    run = [s for s in live if s[0] - t0 > load_s]
    peak_load = max(load, key=lambda s: s[1])
    out = {"load_peak_mib": round(peak_load[1], 1), "load_peak_file_mib": round(max(s[2] for s in load), 1),
           "after_load_mib": None, "running_peak_mib": None, "running_added_mib": None}
    if run:
        out.update(after_load_mib=round(run[0][1], 1), running_peak_mib=round(max(s[1] for s in run), 1),
                   running_added_mib=round(max(s[1] for s in run) - run[0][1], 1))
    return out


def measure(bundle: Path, runner: Path, threads: int, runs: int) -> dict:
    programs = sum(f.stat().st_size for f in bundle.glob("*.pte"))
    proc = subprocess.Popen([str(runner), str(bundle), "--bench", "--runs", str(runs), "--warmup", "1",
                             "--threads", str(threads), "--no-verify"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = sample(proc)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{bundle}: mdship-runner exited {proc.returncode}: "
                         f"{(err.strip().splitlines() or ['(no output)'])[-1]}")
    report = json.loads(out)
    return {"bundle": str(bundle), "programs_mib": round(programs / MIB, 1),
            "bound_mib": round(1.3 * programs / MIB + 300, 1), "peak_rss_mib": report["peak_rss_mb"],
            **phases(samples, sum(report["load_ms"].values()) / 1000),
            "one_step_ms": report["end_to_end_one_step"]["median_ms"]}


def markdown(rows: list[dict]) -> str:
    def mib(v):
        return "-" if v is None else f"{v:,.0f}"

    lines = ["| bundle | programs MiB | bound 1.3 x + 300 | peak RSS | load phase peak (file-backed) | after load | "
             "running peak | running added |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['bundle']} | {r['programs_mib']:,.1f} | {mib(r['bound_mib'])} | {mib(r['peak_rss_mib'])} | "
                     f"{mib(r['load_peak_mib'])} ({mib(r['load_peak_file_mib'])}) | {mib(r['after_load_mib'])} | "
                     f"{mib(r['running_peak_mib'])} | {mib(r['running_added_mib'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--runner", type=Path, default=RUNNER)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/runner-memory.json"))
    args = parser.parse_args(argv)
    if not args.runner.exists():
        raise SystemExit(f"{args.runner}: no C++ runner; build it with `make runner`")
    rows = []
    for bundle in args.bundles:
        rows.append(measure(bundle, args.runner, args.threads, args.runs))
        print(f"{bundle}: peak {rows[-1]['peak_rss_mib']:,.0f} MiB (bound {rows[-1]['bound_mib']:,.0f})",
              file=sys.stderr)
    from mdship.atomic import atomic_file

    results = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average": list(os.getloadavg()), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out) as f:
        f.write_text(json.dumps(results, indent=2) + "\n")
    with atomic_file(args.out.with_suffix(".md")) as f:
        f.write_text(markdown(rows))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
