"""`mdship compare`: which bundle do I ship? Every bundle against the fp32 reference on the same prompts, seeds and
initial latents, with sizes, fidelity, prompt adherence, latency and gates, written as a report a team attaches to a
CI run or a release (report.html, report.md, report.json: mdship.compare_report renders them).

    mdship compare artifacts/shapes/*/xnnpack recipes/md-xnnpack-w8a8.yaml --set output=/tmp/{recipe} --out DIR

* A recipe argument is built first (mdship.build, cached). `--set KEY=VALUE` overrides apply to every recipe
  argument; `{recipe}` in a value is the recipe's name, so `--set output=artifacts/shapes/{recipe}` keeps their
  outputs apart. A bundle argument is used as it is.
* Every bundle the ExecuTorch runtime can run here (its backend says so) generates the prompts x seeds (prompt i,
  repeat k: seed i + k * prompts, so one seed per prompt is the build's own fidelity set) from the same initial
  latents (pipeline.initial_latent) as the eager fp32 pipeline of its checkpoint, with the bundle's own sampler.
  Images are cached in the stage cache: a bundle's by its integrity root, prompts, seeds and sampler, the
  reference's by checkpoint hash (the same entries `mdship build` makes), so a rerun is fast.
* A bundle that cannot run here keeps its build's simulated figures, labelled simulated, in rows of its own: they are
  never recomputed as if executed and never enter the Pareto front of executed bundles.
* Statistics are honest (report.ImageStats): identical images are counted, not averaged in at a capped PSNR.
  Adherence is measured only where the checkpoint has a judge (adherence.judge_for); a difference from the fp32
  reference within the judge's own error rate is marked not significant.
* Gates: every component's PSNR gate (from its manifest), and the image PSNR / SSIM gates judged on the worst image:
  `--image-psnr-gate` / `--image-ssim-gate`, else those the build judged (manifest `fidelity.gates`).
* The recommendation is computed: per backend, the smallest bundle that passes every gate.

The 2-D Pareto front (fewest bytes, highest worst-image PSNR) is a sort and a running maximum; a library
(paretoset, pymoo) would add a dependency for five lines.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mdship import backends, report
from mdship.adherence import Judge, judge_for, read_prompts
from mdship.bundle import Bundle, manifest_digest
from mdship.cache import Cache, make_key, toolchain_versions
from mdship.errors import UserError, VerificationError
from mdship.metrics import from_json_db, image_psnr, image_ssim
from mdship.stages import fidelity

#: how many images the grid shows besides each bundle's worst one
GRID_IMAGES = 4


@dataclass
class Gate:
    """One gate of one bundle: what was measured, the threshold, and where the figure came from."""

    name: str
    value: float | None
    threshold: float
    passed: bool
    mode: str  # executed | simulated
    digits: int = 1  # how the value is shown: dB to 0.1, SSIM to 0.001

    def value_text(self) -> str:
        if self.value is None:
            return "-"
        return "inf (identical)" if math.isinf(self.value) else f"{self.value:.{self.digits}f}"

    def cell(self) -> str:
        return f"{self.name} {self.value_text()} >= {self.threshold:g}: {'pass' if self.passed else 'FAIL'}"


@dataclass
class Entry:
    """One bundle in the comparison: its report row plus what compare measured here."""

    row: report.Row
    argument: str
    built_from: str | None = None  # the recipe (and overrides) it was built from by this command
    images: list[np.ndarray] | None = None  # executed: its images, in the order of Comparison.pairs
    adherence: dict | None = None
    metrics: dict = field(default_factory=dict)  # optional metrics (LPIPS ...): per bundle, or None
    latency: dict | None = None
    latency_source: str | None = None
    gates: list[Gate] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.row.label

    @property
    def backend(self) -> str:
        return self.row.manifest.backend

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def executed(self) -> bool:
        return self.images is not None


@dataclass
class Comparison:
    entries: list[Entry]
    checkpoint: dict  # ref, hash
    prompts: list[str]
    prompts_source: str
    pairs: list[tuple[str, int]]  # (prompt, seed) per image
    reference_images: list[np.ndarray]
    baseline: report.Row | None
    judge: Judge | None = None
    judge_skipped: str | None = None
    reference_adherence: dict | None = None
    optional: dict = field(default_factory=dict)  # metric -> {"status", "why" | reference value}
    parameters: dict = field(default_factory=dict)  # what the command was asked (provenance)

    @property
    def executed(self) -> list[Entry]:
        return [e for e in self.entries if e.executed]

    @property
    def simulated(self) -> list[Entry]:
        return [e for e in self.entries if not e.executed]

    def grid_indices(self) -> list[int]:
        """The images the grid shows: every executed bundle's worst image first, then the first GRID_IMAGES."""
        worst = [e.row.images.psnr["worst_index"] for e in self.executed]
        return list(dict.fromkeys([i for i in worst if i is not None] + list(range(min(GRID_IMAGES, len(self.pairs))))))


# ---------------------------------------------------------------------------------------------- arguments
def _is_recipe(argument: str) -> bool:
    return Path(argument).suffix in (".yaml", ".yml")


def resolve(arguments: list[str], overrides: list[str], progress: bool = True) -> list[tuple[Path, str, str | None]]:
    """Each argument as bundles: (bundle dir, argument, built_from). A recipe argument is built first (cached)."""
    from mdship.build import build
    from mdship.recipe import load_recipe

    out = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            out.append((path, argument, None))
        elif _is_recipe(argument):
            values = [o.replace("{recipe}", path.stem) for o in overrides]
            recipe = load_recipe(path, values)
            built_from = " ".join([argument, *values])
            out += [(r.bundle, argument, built_from) for r in build(recipe, progress=progress)]
        else:
            raise UserError(f"{argument}: not a bundle directory nor a recipe file (.yaml); expected the output of "
                            f"`mdship build` or a recipe")
    return out


def _checkpoint(rows: list[report.Row], reference: str | None):
    """The checkpoint whose eager fp32 pipeline is the reference: --reference, else the bundles' own; every bundle
    must come from it (same hash)."""
    from mdship.checkpoint import Checkpoint

    hashes = {r.manifest.checkpoint.hash: r for r in rows}
    if len(hashes) > 1:
        a, b = list(hashes.values())[:2]
        raise UserError(f"{a.label} and {b.label} come from different checkpoints ({a.manifest.checkpoint.ref}, "
                        f"{b.manifest.checkpoint.ref}); compare the bundles of one checkpoint at a time")
    ref = reference or rows[0].manifest.checkpoint.ref
    ckpt = Checkpoint.open(ref)
    if ckpt.hash != rows[0].manifest.checkpoint.hash:
        raise UserError(f"{'--reference ' if reference else 'checkpoint '}{ref}: hash {ckpt.hash[:12]} is not the "
                        f"bundles' checkpoint ({rows[0].manifest.checkpoint.ref}, hash "
                        f"{rows[0].manifest.checkpoint.hash[:12]}); pass --reference with the checkpoint they were "
                        f"built from")
    return ckpt


def _prompts(rows: list[report.Row], prompts_file: str | None, num_prompts: int | None) -> tuple[list[str], str]:
    """--prompts (first --num-prompts), else the eval prompts the first bundle's build used (as many as it used)."""
    if prompts_file is None:
        f = next((r.manifest.fidelity for r in rows if r.manifest.fidelity), None)
        if f is None or not Path(f.eval_prompts).is_file():
            raise UserError("no --prompts given and the bundles' eval prompt file is not here; pass --prompts FILE")
        prompts_file, num_prompts = f.eval_prompts, num_prompts or f.prompts
    prompts = read_prompts(prompts_file)[:num_prompts]
    return prompts, f"{prompts_file} (first {len(prompts)})"


# ---------------------------------------------------------------------------------------------- measuring
def _one_sampler(entries: list[Entry]):
    """The manifest whose sampler and resolution the reference uses; every executed bundle must share them (one
    reference image per prompt and seed)."""
    what = lambda e: (e.row.manifest.sampler.kind, e.row.manifest.sampler.steps, e.row.manifest.sampler.guidance,
                      e.row.manifest.resolution)  # noqa: E731
    differ = [e for e in entries if what(e) != what(entries[0])]
    if differ:
        raise UserError(f"{entries[0].label} and {differ[0].label} sample differently (sampler, steps, guidance, "
                        f"resolution: {what(entries[0])} vs {what(differ[0])}); compare one sampler at a time")
    return entries[0].row.manifest


def _reference_images(ckpt, cache: Cache, manifest, pairs: list[tuple[str, int]], progress: bool):
    from mdship.pipeline import SamplerSettings, eager_generator

    s = manifest.sampler
    settings = SamplerSettings.resolve(ckpt.scheduler, s.kind, s.steps, s.guidance)
    prompts, seeds = [p for p, _ in pairs], [seed for _, seed in pairs]
    key = fidelity.reference_key(ckpt.hash, prompts, settings, manifest.resolution, seeds)

    def make():
        generate = eager_generator(ckpt)
        generate.resolution = manifest.resolution
        return fidelity.reference_images(generate, prompts, settings, progress, seeds=seeds)

    return fidelity.cached_images(cache, "reference", key, make)


def _bundle_images(path: Path, cache: Cache, pairs: list[tuple[str, int]], progress: bool) -> list[np.ndarray]:
    from mdship.runtime import Runner

    runner = Runner.open(path)
    settings = runner.settings()
    prompts, seeds = [p for p, _ in pairs], [seed for _, seed in pairs]
    key = make_key("compare-images", manifest_digest(path), prompts, seeds, vars(settings))
    return fidelity.cached_images(cache, "compare-images", key, lambda: fidelity.reference_images(
        runner.generator(), prompts, settings, progress, desc=f"run {runner.bundle.manifest.recipe.name}",
        seeds=seeds))


def _image_stats(reference: list[np.ndarray], images: list[np.ndarray], prompts: int) -> report.ImageStats:
    return report.ImageStats("executed", "measured by mdship compare",
                             [image_psnr(r, c) for r, c in zip(reference, images)],
                             [image_ssim(r, c) for r, c in zip(reference, images)], prompts)


def _adherence(judge: Judge, images: list[np.ndarray], pairs, reference: dict | None) -> dict:
    result = judge.score(images, [p for p, _ in pairs])
    if reference is not None:
        delta = result["accuracy"] - reference["accuracy"]
        result.update(delta_vs_fp32=round(delta, 4), significant=abs(delta) > judge.error_rate)
    return result


def _bench_reports(files: list[str]) -> dict[Path, tuple[dict, str]]:
    """Recorded benchmarks: `mdship bench --json` output, or tools/bench.py's results.json (its Python runner's
    first thread count), by resolved bundle path."""
    found = {}
    for name in files:
        try:
            data = json.loads(Path(name).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"--bench-json {name}: not a readable JSON file ({e})") from None
        if isinstance(data, dict) and "components" in data and "bundle" in data:
            found[Path(data["bundle"]).resolve()] = (data, f"recorded: {name}")
        for entry in (data.get("bundles") or []) if isinstance(data, dict) else []:
            runs = [r for r in entry.get("python") or [] if "result" in r]
            if runs and "bundle" in entry.get("build", {}):
                found[Path(entry["build"]["bundle"]).resolve()] = (
                    runs[0]["result"], f"recorded: {name} (Python runner, {runs[0]['threads']} threads)")
    return found


def _gates(entry: Entry, psnr_gate: float | None, ssim_gate: float | None) -> list[Gate]:
    """Each component's PSNR gate, then the image gates on the worst image (the command's, else the build's)."""
    m = entry.row.manifest
    gates = [Gate(f"{report.SHORT[n]} dB", from_json_db(c.verification.psnr_db), c.verification.gate_db,
                  c.verification.passed, c.verification.mode) for n, c in m.components.items()]
    images = entry.row.images
    recorded = (m.fidelity.gates or {}) if m.fidelity else {}
    psnr_gate = psnr_gate if psnr_gate is not None else recorded.get("image_psnr_db")
    ssim_gate = ssim_gate if ssim_gate is not None else recorded.get("image_ssim")
    if images is not None and psnr_gate is not None:
        worst = images.psnr["worst_db"]
        worst = math.inf if worst is None else worst
        gates.append(Gate("image PSNR worst dB", worst, psnr_gate, worst >= psnr_gate, images.mode))
    if images is not None and ssim_gate is not None:
        gates.append(Gate("image SSIM worst", images.ssim_worst, ssim_gate, images.ssim_worst >= ssim_gate,
                          images.mode, digits=3))
    return gates


def compare(arguments: list[str], overrides: list[str] = (), reference: str | None = None,
            prompts_file: str | None = None, num_prompts: int | None = None, seeds: int = 1, bench: bool = False,
            bench_json: list[str] = (), image_psnr_gate: float | None = None, image_ssim_gate: float | None = None,
            clip: str | None = None, lpips: str | None = None, cache: Cache | None = None,
            progress: bool = True) -> Comparison:
    """Build, run and measure everything the report shows (the numbers; mdship.compare_report renders them)."""
    if not arguments:
        raise UserError("no bundles or recipes given; expected bundle directories or recipe files")
    cache = cache or Cache()
    resolved = resolve(list(arguments), list(overrides), progress)
    entries = [Entry(report.Row(b.path, b.manifest), argument, built_from)
               for (path, argument, built_from) in resolved for b in [Bundle.open(path)]]
    ckpt = _checkpoint([e.row for e in entries], reference)
    prompts, source = _prompts([e.row for e in entries], prompts_file, num_prompts)
    pairs = [(p, i + k * len(prompts)) for i, p in enumerate(prompts) for k in range(seeds)]
    runnable = [e for e in entries if backends.get(e.backend).runs_here]
    ref_images = _reference_images(ckpt, cache, _one_sampler(runnable), pairs, progress) if runnable else []
    for e in runnable:
        e.images = _bundle_images(e.row.path, cache, pairs, progress)
        e.row.measured = _image_stats(ref_images, e.images, len(prompts))
    parameters = {"arguments": list(arguments), "set": list(overrides), "reference": reference, "prompts": prompts_file,
                  "num_prompts": num_prompts, "seeds": seeds, "bench": bench, "bench_json": list(bench_json),
                  "image_psnr_gate": image_psnr_gate, "image_ssim_gate": image_ssim_gate, "clip": clip,
                  "lpips": lpips}
    c = Comparison(entries, {"ref": str(ckpt.ref), "hash": ckpt.hash}, prompts, source, pairs, ref_images,
                   report.pick_baseline([e.row for e in entries], None), parameters=parameters)
    _judge(c, ckpt)
    _optional_metrics(c, clip, lpips)
    _latency(c, bench, list(bench_json))
    for e in entries:
        e.gates = _gates(e, image_psnr_gate, image_ssim_gate)
    return c


def _judge(c: Comparison, ckpt) -> None:
    c.judge = judge_for(str(ckpt.ref))
    if c.judge is None or not c.executed:
        c.judge, c.judge_skipped = None, (f"{ckpt.ref} has no prompt-adherence judge" if c.judge is None else
                                          "no bundle ran here (simulated figures have no images to judge)")
        return
    refusal = c.judge.refusal(c.prompts)
    if refusal:
        c.judge, c.judge_skipped = None, refusal
        return
    c.reference_adherence = _adherence(c.judge, c.reference_images, c.pairs, None)
    for e in c.executed:
        e.adherence = _adherence(c.judge, e.images, c.pairs, c.reference_adherence)


def _optional_metrics(c: Comparison, clip: str | None, lpips: str | None) -> None:
    """LPIPS and CLIP score need weights mdship never downloads: measured only from local weights the user names."""
    from mdship import metrics

    def attempt(name: str, path: str | None, option: str, run) -> None:
        if path is None:
            c.optional[name] = {"status": "skipped", "why": f"needs local weights ({option}); mdship never "
                                                            f"downloads weights"}
            return
        if not c.executed:
            c.optional[name] = {"status": "skipped", "why": "no bundle ran here"}
            return
        try:
            c.optional[name] = {"status": "measured", "weights": path, **run(path)}
        except metrics.MetricUnavailable as e:
            c.optional[name] = {"status": "skipped", "why": str(e)}

    def lpips_run(path):
        for e in c.executed:
            e.metrics["lpips"] = metrics.lpips_distances(path, c.reference_images, e.images)
        return {}

    def clip_run(path):
        prompts = [p for p, _ in c.pairs]
        for e in c.executed:
            e.metrics["clip_score"] = metrics.clip_scores(path, e.images, prompts)
        return {"reference": metrics.clip_scores(path, c.reference_images, prompts)}

    attempt("lpips", lpips, "--lpips FILE", lpips_run)
    attempt("clip_score", clip, "--clip DIR", clip_run)


def _latency(c: Comparison, bench: bool, bench_json: list[str]) -> None:
    from mdship.runtime import bench as run_bench

    recorded = _bench_reports(bench_json)
    for e in c.executed:
        if bench:
            load = os.getloadavg()[0]  # a busy machine's numbers are not comparable: say how busy it was
            e.latency, e.latency_source = run_bench(e.row.path, runs=3, warmup=1, verify=False), \
                f"measured by mdship compare --bench (3 runs after 1 warmup, this process; load average {load:.2f})"
        elif e.row.path.resolve() in recorded:
            e.latency, e.latency_source = recorded[e.row.path.resolve()]


# ---------------------------------------------------------------------------------------------- conclusions
def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (fewer bytes, higher PSNR), by bytes."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def worst_psnr(entry: Entry) -> float:
    """The figure the plots and the front use: the worst image's PSNR (inf when every image is identical)."""
    worst = entry.row.images.psnr["worst_db"] if entry.row.images else None
    return math.inf if worst is None else worst


def front(c: Comparison) -> list[Entry]:
    executed = [e for e in c.executed]
    return [executed[i] for i in pareto_front([(e.row.total_bytes, worst_psnr(e)) for e in executed])]


def recommendation(c: Comparison) -> str:
    """One paragraph from the data: per backend, the smallest bundle that passes every gate."""
    sentences = []
    for backend in dict.fromkeys(e.backend for e in c.entries):
        mine = [e for e in c.entries if e.backend == backend]
        passing = sorted((e for e in mine if e.passed), key=lambda e: e.row.total_bytes)
        if not passing:
            sentences.append(f"No {backend} bundle passes every gate ({', '.join(e.label for e in mine)}).")
            continue
        best = passing[0]
        ratio = best.row.ratio(c.baseline)
        what = [f"{report.mb(best.row.total_bytes)} MB" + (f", {ratio:.3f} of fp32" if ratio is not None else ""),
                f"passes its {len(best.gates)} gates"]
        images = best.row.images
        if images is not None:
            what.append(f"image PSNR median / worst {images.psnr_cell()} dB over {len(images.psnr_db)} images"
                        + ("" if images.mode == "executed" else ", simulated"))
        if best.adherence and "delta_vs_fp32" in best.adherence:
            what.append(f"adherence {best.adherence['accuracy']:.3f} vs {c.reference_adherence['accuracy']:.3f} "
                        f"for fp32 ({'significant' if best.adherence['significant'] else 'not significant'})")
        sim = "" if best.executed else " (simulated figures: this backend cannot run here)"
        sentences.append(f"For {backend}{sim}, ship {best.label}: {'; '.join(what)}.")
    failing = [e.label for e in c.entries if not e.passed]
    if failing:
        sentences.append(f"Missing a gate: {', '.join(failing)}.")
    return " ".join(sentences)


def check_gates(c: Comparison) -> None:
    """`--gate`: VerificationError (exit 1) naming every bundle and gate that failed."""
    failed = [f"{e.label} ({'; '.join(g.cell() for g in e.gates if not g.passed)})" for e in c.entries
              if not e.passed]
    if failed:
        raise VerificationError(f"{len(failed)} of {len(c.entries)} bundles miss a gate: {', '.join(failed)}")


# ---------------------------------------------------------------------------------------------- JSON
def _entry_json(e: Entry, c: Comparison) -> dict:
    base = report.to_json_row(e.row, c.baseline)
    return {**base, "argument": e.argument, "built_from": e.built_from, "executed_here": e.executed,
            "adherence": e.adherence,
            "optional_metrics": {k: {"mean": round(float(np.mean(v)), 5), "per_image": [round(x, 5) for x in v]}
                                 for k, v in e.metrics.items()},
            "latency": e.latency, "latency_source": e.latency_source,
            "gates": [{"name": g.name, "value": None if g.value is None or math.isinf(g.value) else g.value,
                       "identical": g.value is not None and math.isinf(g.value), "threshold": g.threshold,
                       "passed": g.passed, "mode": g.mode} for g in e.gates],
            "passed": e.passed, "on_pareto_front": e in front(c)}


def to_json(c: Comparison) -> dict:
    """Every number of the report, with provenance."""
    return {
        "provenance": {"tool": "mdship compare", "parameters": c.parameters, "created": dt.datetime.now(
            dt.timezone.utc).isoformat(timespec="seconds"), "host": f"{platform.system()} {platform.machine()}",
                       "versions": toolchain_versions()},
        "checkpoint": c.checkpoint,
        "prompts": {"source": c.prompts_source, "count": len(c.prompts), "images": len(c.pairs),
                    "pairs": [{"prompt": p, "seed": s} for p, s in c.pairs]},
        "reference": {"what": "eager PyTorch fp32 pipeline of the checkpoint, same prompts, seeds, initial latents "
                              "and sampler as each bundle", "adherence": c.reference_adherence},
        "judge": ({"name": c.judge.name, "error_rate": c.judge.error_rate, "error_source": c.judge.error_source}
                  if c.judge else {"skipped": c.judge_skipped}),
        "optional_metrics": c.optional,
        "baseline": str(c.baseline.path) if c.baseline else None,
        "bundles": [_entry_json(e, c) for e in c.entries],
        "recommendation": recommendation(c),
    }
