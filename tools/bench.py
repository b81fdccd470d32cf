#!/usr/bin/env python3
"""The mdship performance suite, run by ``make bench``: build the XNNPACK bundles, time them, write a report.

Performance is measured here, never as timed assertions in tests. For each recipe this script

1. builds the bundle with ``mdship build RECIPE ... --json`` (cached: an unchanged rebuild takes seconds). The
   default recipe builds as shipped (``builtin:shapes`` -> ``artifacts/default/xnnpack``); the XNNPACK recipes
   ``md-xnnpack-{fp32,fp16,w8a8,8da4w}`` are paper-scale as shipped and run here on the embedded checkpoint with
   ``checkpoint=builtin:shapes resolution=null`` and the shapes prompt sets, into
   ``artifacts/shapes/<recipe>/xnnpack``;
2. benchmarks every bundle at each thread count (default 1 and 2) with the Python host runner (``mdship bench
   --json``: load ms, per-component median / p90, end-to-end one-step and N-step latency, peak RSS) and with the C++
   runner (``mdship-runner --bench``) when its binary exists. Every measurement runs in a fresh process, so
   peak RSS belongs to one bundle and one thread count. A missing C++ runner is reported as skipped rather than
   built here: building it takes minutes of compiler time that would land in the middle of the measurements
   (``make bench`` builds it first, through its ``runner`` prerequisite);
3. writes ``artifacts/bench/results.json`` (everything measured, plus the machine: CPU model, core count, torch and
   executorch versions, date, load average) and ``artifacts/bench/results.md`` (the tables), atomically.

Numbers taken on a loaded machine mean little: the 1-minute load average is recorded at start and end, and a
warning is printed (and written into both files) when it exceeds 0.5 at start.

Usage::

    make bench                                              # everything, 5 runs after 1 warmup
    python tools/bench.py --recipes default --runs 2 --warmup 1
    python tools/bench.py --threads 1 2 4 --out-dir /tmp/bench
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow running from a checkout without installing
    sys.path.insert(0, str(ROOT))

from mdship import threads  # noqa: E402  (importing mdship applies the thread policy to this process's children)

SCHEMA_VERSION = 1
DEFAULT_RUNNER = ROOT / "artifacts" / "runner-build" / "mdship-runner"
DEFAULT_OUT_DIR = ROOT / "artifacts" / "bench"
LOAD_WARN_THRESHOLD = 0.5
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
SHORT = {"text_encoder": "text enc", "unet": "UNet", "vae_decoder": "decoder"}

# The shipped XNNPACK recipes target the 512 px paper model; on builtin:shapes they need the shapes prompt sets.
SHAPES_RECIPES = ("md-xnnpack-fp32", "md-xnnpack-fp16", "md-xnnpack-w8a8", "md-xnnpack-8da4w")
RECIPES = ("default",) + SHAPES_RECIPES
SHAPES_OVERRIDES = ("checkpoint=builtin:shapes", "resolution=null",
                    "calibration.prompts=calibration/shapes-calib.txt",
                    "calibration.eval_prompts=calibration/shapes-eval.txt", "calibration.num_eval_prompts=16")

# `mdship` in a fresh interpreter of this Python (the venv's when run as .venv/bin/python or by `make bench`).
MDSHIP = [sys.executable, "-c", "from mdship.cli import main; main()"]


def recipe_command(name: str) -> list[str]:
    """The `mdship build` arguments for one recipe name (see the module docstring)."""
    if name == "default":
        return ["build", "recipes/default.yaml", "--json"]
    return ["build", f"recipes/{name}.yaml", *SHAPES_OVERRIDES, f"output=artifacts/shapes/{name}", "--json"]


# ------------------------------------------------------------------------------------------- machine info
def machine_info() -> dict:
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gib": mem_total_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("mdship", "torch", "executorch", "torchao")},
        "git": git_revision(),
        # what every child `mdship bench` / runner process inherits unless --threads says otherwise (mdship.threads)
        "thread_policy": threads.describe(),
    }


def git_revision() -> str | None:
    """HEAD's short hash, with "-dirty" when the working tree has changes; None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def runner_status(runner: Path) -> str | None:
    """None when the C++ runner can be used; else why it is skipped."""
    if not (runner.is_file() and os.access(runner, os.X_OK)):
        return f"skipped: {_rel(runner)} not found (run `make runner`)"
    return None


def runner_stale(runner: Path) -> bool:
    """True when a runner source is newer than the binary (`make runner` would rebuild it)."""
    sources = [*(ROOT / "runner" / "src").glob("*"), ROOT / "runner" / "CMakeLists.txt"]
    built = runner.stat().st_mtime
    return any(s.is_file() and s.stat().st_mtime > built for s in sources)


def _rel(path: Path | str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------- build + bench
def _error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()]
    return f"exit {proc.returncode}: " + (lines[-1] if lines else "no message")


def build(name: str) -> dict:
    """Build one recipe (cached). Returns {"bundle", "cached", "seconds"} or {"error"}."""
    start = time.perf_counter()
    proc = subprocess.run(MDSHIP + recipe_command(name), cwd=ROOT, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        return {"error": _error(proc), "seconds": seconds}
    summary = json.loads(proc.stdout)
    [bundle] = summary["bundles"]  # every benchmarked recipe has exactly one (xnnpack) target
    return {"bundle": bundle, "cached": all(c["cached"] for c in summary["components"]), "seconds": seconds}


def _parse_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def bench_python(bundle: str, threads: int, runs: int, warmup: int) -> dict:
    """`mdship bench --json` in a fresh interpreter: its peak RSS is this bundle's alone."""
    cmd = MDSHIP + ["bench", bundle, "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads), "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"threads": threads, "error": _error(proc)}
    return {"threads": threads, "result": _parse_json(proc.stdout)}


def bench_cpp(runner: Path, bundle: str, threads: int, runs: int, warmup: int) -> dict:
    cmd = [str(runner), bundle, "--bench", "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"threads": threads, "error": _error(proc)}
    return {"threads": threads, "result": _parse_json(proc.stdout)}


def size_and_quality(bundles: list[str]) -> dict[str, dict]:
    """Per bundle, what `mdship report --json` reads from the manifests: bytes, ratio to fp32, PSNR / SSIM."""
    from mdship import report

    if not bundles:
        return {}
    rows = report.to_json([ROOT / b for b in bundles])["bundles"]
    keep = ("label", "bytes", "total_bytes", "ratio_vs_fp32", "component_psnr_db", "fidelity", "images", "verification")
    return {b: {k: row[k] for k in keep} for b, row in zip(bundles, rows)}


# ------------------------------------------------------------------------------------------- output
def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ms(stats: dict | None) -> str:
    return "-" if not stats else f"{stats['median_ms']:.1f}"


def _n_step(result: dict) -> str:
    from mdship.runtime import n_step_key

    key = n_step_key(result)
    if key is None:
        return "-"
    steps = key.removeprefix("end_to_end_").removesuffix("_step")
    return f"{result[key]['median_ms']:.1f} (N={steps})"


def _psnr(entry: dict) -> str:
    """Median / worst over the images that differ from fp32 (identical ones, infinite PSNR, counted apart)."""
    from mdship.report import psnr_text

    images = (entry.get("size") or {}).get("images")
    return psnr_text(images["psnr_db"]) if images else "-"


def _total_mb(entry: dict) -> str:
    size = entry.get("size")
    return "-" if not size else f"{size['total_bytes'] / 1e6:.1f}"


def latency_table(bundles: list[dict], runner: str) -> list[str]:
    """Markdown rows for one runner ("python" or "cpp"): one row per bundle and thread count."""
    head = (["bundle", "total MB", "image PSNR dB median / worst", "threads", "load ms"]
            + [f"{SHORT[c]} ms" for c in COMPONENTS] + ["1-step ms", "N-step ms", "peak RSS MiB"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for entry in bundles:
        runs = entry.get(runner)
        if not isinstance(runs, list):
            continue
        for run in runs:
            if "result" not in run:
                continue
            r = run["result"]
            cells = ([entry["recipe"], _total_mb(entry), _psnr(entry), str(run["threads"]),
                      f"{sum(r['load_ms'].values()):.1f}"]
                     + [_ms(r["components"].get(c)) for c in COMPONENTS]
                     + [_ms(r.get("end_to_end_one_step")), _n_step(r), f"{r['peak_rss_mb']:.1f}"])
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def failures(results: dict) -> list[str]:
    """One line per build or benchmark that failed (a skipped C++ runner is not a failure)."""
    out = []
    for entry in results["bundles"]:
        if "error" in entry.get("build", {}):
            out.append(f"{entry['recipe']}: build failed: {entry['build']['error']}")
        for runner in ("python", "cpp"):
            runs = entry.get(runner)
            for run in runs if isinstance(runs, list) else []:
                if "error" in run:
                    out.append(f"{entry['recipe']}: {runner} runner, {run['threads']} threads: {run['error']}")
    return out


def format_markdown(results: dict) -> str:
    """The human-readable report (results.md) from a results dict (the content of results.json)."""
    m, s = results["machine"], results["settings"]
    v = m["versions"]
    load = results["load_average"]
    lines = ["# mdship benchmarks", ""]
    lines += [f"- date: {results['created']}",
              f"- machine: {m['cpu_model']}, {m['cores']} cores ({m['cores_available']} available), "
              f"{m['mem_total_gib']} GiB; {m['platform']}",
              f"- versions: mdship {v.get('mdship')}, torch {v.get('torch')}, executorch {v.get('executorch')}, "
              f"python {m['python']}, git {m.get('git')}",
              f"- load average (1 / 5 / 15 min): start {_load(load.get('start'))}, end {_load(load.get('end'))}",
              f"- {s['runs']} timed runs after {s['warmup']} warmup per number; each (bundle, runner, threads) "
              f"in a fresh process"]
    if m.get("thread_policy"):
        p = m["thread_policy"]
        lines.append(f"- thread policy (mdship.threads): {p['threads']} thread(s) unless --threads, "
                     f"OMP_WAIT_POLICY={p['omp_wait_policy']}, {p['cpus_allowed']} CPU(s) allowed")
    for warning in results.get("warnings", []):
        lines += ["", f"> **Warning:** {warning}"]
    notes = ("Times are medians in ms (p90s and per-component load times are in results.json). `load ms`: the "
             "three programs loaded; component ms: one call on its stored test vector; 1-step / N-step: prompt to "
             "image with the one-step sampler (guidance 1) and with the bundle's own sampler (N steps). "
             "Total MB: the .pte programs (10^6 bytes); image PSNR: the bundle's images against the eager fp32 "
             "pipeline's, from the build manifest. Peak RSS: the whole process (for the Python runner, the "
             "interpreter with torch imported).")
    lines += ["", "## Python runner (`mdship bench`, executorch.runtime)", ""] + latency_table(results["bundles"], "python")
    lines += ["", "## C++ runner (`mdship-runner --bench`)", ""]
    cpp = results.get("cpp_runner", {})
    if cpp.get("skipped"):
        lines.append(cpp["skipped"])
    else:
        lines += latency_table(results["bundles"], "cpp")
    lines += ["", notes]
    problems = failures(results)
    if problems:
        lines += ["", "## Failures", ""] + [f"- {_cell(p)}" for p in problems]
    return "\n".join(lines) + "\n"


def _load(values: list[float] | None) -> str:
    return "n/a" if not values else " / ".join(f"{x:.2f}" for x in values)


def write_atomic(path: Path, text: str) -> None:
    from mdship.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_results(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """results.json and results.md, each written to a temp file and renamed into place."""
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    write_atomic(json_path, json.dumps(results, indent=2) + "\n")
    write_atomic(md_path, format_markdown(results))
    return json_path, md_path


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES), metavar="RECIPE",
                    help=f"recipes to build and benchmark (default: all of {', '.join(RECIPES)})")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per number (default: 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before them (default: 1)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("--runner", type=Path, default=DEFAULT_RUNNER,
                    help=f"C++ runner binary (default: {_rel(DEFAULT_RUNNER)}, built by `make runner`)")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                    help=f"where results.json and results.md go (default: {_rel(DEFAULT_OUT_DIR)})")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or min(args.threads) < 1:
        ap.error("--runs and --threads must be >= 1, --warmup >= 0")

    from tqdm import tqdm

    recipes = list(dict.fromkeys(args.recipes))
    results: dict = {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": {"start": load_average(), "end": None},
        "settings": {"recipes": recipes, "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                     "shapes_overrides": list(SHAPES_OVERRIDES)},
        "warnings": [],
        "cpp_runner": {"path": _rel(args.runner)},
        "bundles": [{"recipe": name} for name in recipes],
    }

    def warn(text: str) -> None:
        results["warnings"].append(text)
        tqdm.write(f"warning: {text}", file=sys.stderr)

    start_load = results["load_average"]["start"]
    if start_load and start_load[0] > LOAD_WARN_THRESHOLD:
        warn(f"1-minute load average {start_load[0]:.2f} > {LOAD_WARN_THRESHOLD} at start: other processes are "
             f"using the CPU, so these latencies are not comparable with a quiet machine's")
    skipped = runner_status(args.runner)
    if skipped:
        results["cpp_runner"]["skipped"] = skipped
        tqdm.write(f"C++ runner {skipped}", file=sys.stderr)
    elif runner_stale(args.runner):
        warn(f"{_rel(args.runner)} is older than runner/ sources (run `make runner`)")

    runners = ["python"] + ([] if skipped else ["cpp"])
    total = len(recipes) * (1 + len(runners) * len(args.threads))
    with tqdm(total=total, desc="bench", unit="task", file=sys.stderr) as bar:
        for entry in results["bundles"]:
            bar.set_description(f"build {entry['recipe']}")
            entry["build"] = build(entry["recipe"])
            bar.update(1)
            if "error" in entry["build"]:
                tqdm.write(f"{entry['recipe']}: build failed: {entry['build']['error']}", file=sys.stderr)
                bar.update(len(runners) * len(args.threads))
        built = [e for e in results["bundles"] if "bundle" in e["build"]]
        sizes = size_and_quality([e["build"]["bundle"] for e in built])
        for entry in built:
            bundle = entry["build"]["bundle"]
            entry["size"] = sizes.get(bundle)
            entry["python"], entry["cpp"] = [], ([] if not skipped else {"skipped": skipped})
            for runner in runners:
                for threads in args.threads:
                    bar.set_description(f"{runner} {entry['recipe']} x{threads}")
                    if runner == "python":
                        run = bench_python(bundle, threads, args.runs, args.warmup)
                    else:
                        run = bench_cpp(args.runner, bundle, threads, args.runs, args.warmup)
                    entry[runner].append(run)
                    if "error" in run:
                        tqdm.write(f"{entry['recipe']}: {runner} runner, {threads} threads: {run['error']}",
                                   file=sys.stderr)
                    bar.update(1)

    results["load_average"]["end"] = load_average()
    results["failures"] = failures(results)
    json_path, md_path = write_results(results, args.out_dir)
    print(f"wrote {_rel(json_path)} and {_rel(md_path)}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
