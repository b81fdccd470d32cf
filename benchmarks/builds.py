#!/usr/bin/env python3
"""Build time: each recipe built cold (an empty stage cache of its own) and then again with nothing to do (no-op),
one `mdship build` process at a time, as a user or CI runs it.

Per build: wall time of the process (from here) and the peak of the summed RSS of it and its worker processes
(sampled here, mdship.workers), and from the manifest it writes (`build`): CPU seconds (the build process and its
children, imports included), the worker processes used and the thread policy in force; plus the load average before
and after, since the machine may be shared. Output: JSON (``--out``, written atomically) and a markdown table beside
it (same stem, .md).

    python -m benchmarks.builds recipes/default.yaml recipes/md-xnnpack-w8a8.yaml --set checkpoint=builtin:shapes \
        --out artifacts/bench/builds.json

``--set KEY=VALUE`` overrides go to every recipe (the embedded default's overrides, as in the README).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_once(recipe: str, overrides: list[str], output: Path, cache: Path) -> dict:
    """One `mdship build` process; its wall time and the manifest's build record."""
    env = {**os.environ, "MDSHIP_CACHE_DIR": str(cache), "MDSHIP_BUILD_DEVICES": "none"}
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mdship.cli", "build", recipe, *overrides, f"output={output}"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        tree_peak = _peak_tree_rss(proc)
        wall = time.perf_counter() - started
        log.seek(0)
        printed = log.read()
    if proc.returncode != 0:
        tail = printed.strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"{recipe}: mdship build exited {proc.returncode}: {tail[0]}")
    manifests = sorted(output.glob("*/manifest.json"))
    build = json.loads(manifests[0].read_text()).get("build", {}) if manifests else {}
    return {"wall_s": round(wall, 2), "cpu_s": build.get("cpu_seconds"), "peak_rss_mb": build.get("peak_rss_mb"),
            "peak_tree_rss_mb": round(tree_peak / 2**20, 1), "workers": build.get("workers"),
            "cached": build.get("cached"), "threads": build.get("threads"),
            "load_average": {"before": load_before, "after": list(os.getloadavg())}}


def _peak_tree_rss(proc: subprocess.Popen, every_s: float = 0.1) -> int:
    """Wait for `proc`, sampling the summed RSS of it and its children (the build's worker processes): the peak,
    in bytes. psutil; a sample can miss a peak shorter than `every_s`."""
    import psutil

    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # exited between the listing and the sample
                pass
        peak = max(peak, total)
        time.sleep(every_s)
    return peak


def measure(recipes: list[str], overrides: list[str]) -> list[dict]:
    rows = []
    for recipe in recipes:
        with tempfile.TemporaryDirectory(prefix="mdship-bench-build-") as tmp:
            cache, output = Path(tmp) / "cache", Path(tmp) / "out"
            cold = build_once(recipe, overrides, output, cache)
            noop = build_once(recipe, overrides, output, cache)
        rows.append({"recipe": recipe, "overrides": overrides, "cold": cold, "noop": noop})
        print(f"{recipe}: cold {cold['wall_s']:.1f} s, no-op {noop['wall_s']:.1f} s", file=sys.stderr)
    return rows


def markdown(results: dict) -> str:
    lines = ["| recipe | cold wall s | cold CPU s | workers | cold peak RSS MB (all processes) | no-op wall s | "
             "load before / after (1 min) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results["builds"]:
        cold, noop = r["cold"], r["noop"]
        load = f"{cold['load_average']['before'][0]:.2f} / {noop['load_average']['after'][0]:.2f}"
        lines.append(f"| {Path(r['recipe']).stem} | {cold['wall_s']:.1f} | {cold['cpu_s'] or 0:.1f} | "
                     f"{cold.get('workers') or 1} | {cold.get('peak_tree_rss_mb') or cold['peak_rss_mb'] or 0:,.0f} | "
                     f"{noop['wall_s']:.1f} | {load} |")
    threads = next((r["cold"]["threads"] for r in results["builds"] if r["cold"].get("threads")), None)
    machine = results["machine"]
    lines += ["", f"{machine['cpu_model']}, {machine['cores_available']} cores available; threads: {threads}; "
                  f"overrides: {' '.join(results['builds'][0]['overrides']) if results['builds'] else ''}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="artifacts/bench/builds.json")
    args = parser.parse_args(argv)
    from benchmarks import report

    results = {**report.wrap([]), "builds": measure(args.recipes, args.overrides)}
    results.pop("runs")
    report.write_json(results, args.out)
    from mdship.atomic import atomic_file

    with atomic_file(Path(args.out).with_suffix(".md")) as tmp:
        tmp.write_text(markdown(results))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
