"""`mdship tune`: mixed precision per layer under a quality budget, written out as a plain recipe.

    mdship tune RECIPE --budget image_psnr_db=32 [--objective bytes|latency] [--backend B] --out TUNED.yaml

1. **Sensitivity** (mdship.stages.sensitivity, cached): for every quantizable layer and every format the backend
   computes correctly, its bytes and the noise it adds to its component's output, measured one layer (or one block)
   at a time on the recipe's calibration recording; plus the calibrated model of how those noises add up in the
   image, per calibration prompt (UNet content and quality layers apart, as MixDQ).
2. **Allocation** (mdship.allocate): one format per layer minimising bytes (or estimated latency) subject to the
   predicted image PSNR on every calibration prompt, an integer program solved exactly.
3. **Measured, not predicted.** The input recipe is built too, as the uniform baseline: the gap between the model's
   prediction on the calibration prompts and the worst eval prompt measured on its bundle calibrates how optimistic
   the model is. Allocations are then built with `mdship build` and measured with `mdship compare`'s code on the
   held-out evaluation prompts, walking up the model's frontier from 1 dB below the shifted budget (each step by the
   measured shortfall, at least STEP_DB) until one meets the budget (at most MAX_CANDIDATES): the smallest that meets
   it, as far as the model orders them.
4. **Output**: the chosen allocation as a plain recipe (YAML; layer types at their most common format, the other
   layers as `layers:` overrides, each with its measured sensitivity as a comment), a JSON report of every number,
   and a plot of bytes against predicted and measured image PSNR (`TUNED.tune.json`, `TUNED.tune.png`).

Objective `latency`: each layer's estimated time is its multiply-adds times the time per multiply-add of its layer
type in that format, timed here on the backend's runtime (the largest layer of each type, one program each); only a
backend that runs here can be timed.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import math
import os
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from mdship import __version__, capabilities
from mdship.errors import UserError, VerificationError

if TYPE_CHECKING:  # these import torch: the CLI imports this module for its choices only
    from mdship.recipe.schema import Recipe, Target
    from mdship.stages.sensitivity import Row, Sensitivity

#: the recipe components, in pipeline order (mdship.recipe.schema.COMPONENT_NAMES, without importing torch)
COMPONENT_NAMES = ("text_encoder", "unet", "vae_decoder")

#: budget keys: the recipe's image gates (judged on the worst eval prompt, like `mdship build`), and prompt adherence
#: where the checkpoint has a judge (mdship.adherence; measured on the candidates, not a recipe gate)
BUDGET_KEYS = ("image_psnr_db", "image_ssim", "adherence")
OBJECTIVES = ("bytes", "latency")
#: the first candidate's predicted target, relative to the budget plus the model's measured optimism (dB)
START_DB = -1.0
#: the least step up the frontier after a candidate misses the budget (dB of predicted PSNR)
STEP_DB = 0.5
#: candidates built before giving up
MAX_CANDIDATES = 6
#: optimism (dB) assumed when the input recipe gives no evidence (it is float, or not expressible per layer)
DEFAULT_OPTIMISM_DB = 2.0


# ----------------------------------------------------------------------------------------------------- inputs
def parse_budget(items: list[str]) -> dict[str, float]:
    """``["image_psnr_db=32", "image_ssim=0.95"]`` -> checked values (the recipe schema's own bounds)."""
    if not items:
        raise UserError(f"--budget: none given; expected e.g. --budget image_psnr_db=32 (keys: "
                        f"{', '.join(BUDGET_KEYS)})")
    budget: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in BUDGET_KEYS:
            raise UserError(f"--budget {item!r}: expected KEY=VALUE with KEY one of {', '.join(BUDGET_KEYS)}, e.g. "
                            f"image_psnr_db=32")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--budget {item!r}: {value.strip()!r} is not a number; expected e.g. {key}=32") from None
        budget[key] = number
    from pydantic import ValidationError

    from mdship.recipe.schema import Gates

    if not 0.0 <= budget.get("adherence", 0.0) <= 1.0:
        raise UserError(f"--budget adherence={budget['adherence']:g}: expected an accuracy in [0, 1]")
    try:
        Gates.model_validate(_gates(budget))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise UserError(f"--budget {error['loc'][0]}={budget[error['loc'][0]]}: {error['msg'].lower()}; expected "
                        f"a PSNR in (0, 200] dB or an SSIM in [0, 1]") from None
    if "image_psnr_db" not in budget:
        raise UserError("--budget: image_psnr_db is required (the allocation predicts image PSNR; image_ssim is "
                        "only checked on the built candidates); expected e.g. --budget image_psnr_db=32")
    return budget


def _gates(budget: dict[str, float]) -> dict[str, float]:
    """The part of the budget a recipe's `gates:` can hold."""
    return {k: v for k, v in budget.items() if k in ("image_psnr_db", "image_ssim")}


def select_target(recipe: Recipe, backend: str | None) -> Target:
    """The recipe's target for ``backend`` (its first target when None); a backend the recipe has no target for
    gets a target with its default options."""
    from mdship.recipe.schema import Target

    if backend is None:
        return recipe.targets[0]
    if backend not in capabilities.BACKENDS:
        raise UserError(f"--backend {backend}: unknown; expected one of {', '.join(capabilities.BACKENDS)}")
    return next((t for t in recipe.targets if t.backend == backend), None) or Target(backend=backend)


# ----------------------------------------------------------------------------------------------------- the model
@dataclass
class Model:
    """The allocation problem: per candidate layer its options (rows), each with a cost and a load per calibration
    prompt (predicted image MSE)."""

    table: Sensitivity
    items: list[list[Row]]
    costs: list[list[float]]
    fixed_bytes: int
    bytes_offset: int = 0

    @classmethod
    def build(cls, table: Sensitivity, cost: Callable[[Row], float]) -> Model:
        items = [table.options(c, layer) for c, layer in table.layers()]
        return cls(table, items, [[cost(r) for r in rows] for rows in items], sum(table.fixed_bytes.values()))

    def loads(self, row: Row) -> list[float]:
        kappa = self.table.kappa.get(row.group)
        return [0.0] * len(self.table.prompts) if kappa is None else [k * row.noise for k in kappa]

    def predicted_db(self, choice: list[int]) -> list[float]:
        """Predicted image PSNR per calibration prompt of a choice (index per item)."""
        mse = [0.0] * len(self.table.prompts)
        for rows, j in zip(self.items, choice):
            for p, load in enumerate(self.loads(rows[j])):
                mse[p] += load
        return [_db(m) for m in mse]

    def bytes(self, choice: list[int]) -> int:
        """Predicted bytes of a choice: the layers' estimated weights, the fixed bytes and ``bytes_offset`` (what
        the estimate missed on the measured baseline: program structure, scales, packing)."""
        return self.fixed_bytes + self.bytes_offset + sum(rows[j].bytes for rows, j in zip(self.items, choice))

    def best_db(self) -> float:
        """The highest worst-prompt PSNR any choice is predicted to reach: every layer at its least noisy format."""
        return min(self.predicted_db(self.extreme(lambda rows: min(rows, key=lambda r: (r.noise, r.bytes)))))

    def extreme(self, pick) -> list[int]:
        """The choice that takes ``pick(rows) -> row`` for every layer."""
        return [rows.index(pick(rows)) for rows in self.items]

    def solve(self, target_db: float) -> list[int] | None:
        """The cheapest choice whose predicted PSNR is at least ``target_db`` on every calibration prompt."""
        from mdship.allocate import allocate

        capacity = [255.0 ** 2 / 10 ** (target_db / 10)] * len(self.table.prompts)
        found = allocate(self.costs, [[self.loads(r) for r in rows] for rows in self.items], capacity)
        return None if found is None else found.choice


def _db(mse: float) -> float:
    return math.inf if mse <= 0 else 10 * math.log10(255.0 ** 2 / mse)


def _finite(value: float) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 2)


def recipe_choice(model: Model, recipe: Recipe) -> tuple[list[int] | None, list[str]]:
    """The input recipe as a choice per candidate layer, for the model to predict it: (choice, stand-ins). A layer in a
    format that is not a candidate (static int8 1x1 convs of md-xnnpack-w8a8) stands in as the candidate with the same
    weights (the same bytes; its error is the candidate's), listed in stand-ins. None when a layer has no such
    candidate (or the recipe keeps it float)."""
    from mdship.stages.quantize import keep_match, override_match
    from mdship.stages.sensitivity import format_label

    choice, stand_ins = [], []
    for rows in model.items:
        component, layer, kind = rows[0].component, rows[0].layer, rows[0].kind
        spec = recipe.component(component)
        overrides = spec.override_specs()
        if keep_match(layer, spec.keep) is not None:
            return None, stand_ins
        pattern = override_match(component, layer, overrides)
        resolved = (overrides[pattern] if pattern else spec.layer_spec(kind)).model_dump()
        j = next((i for i, r in enumerate(rows) if r.format == format_label(resolved)), None)
        if j is None:
            same = [i for i, r in enumerate(rows) if all(r.spec.get(k) == resolved.get(k) for k in ("weights",
                                                                                                     "granularity"))
                    and (r.spec["granularity"] != "per_group" or r.spec["group_size"] == resolved["group_size"])]
            if not same:
                return None, stand_ins
            j = min(same, key=lambda i: rows[i].noise)
            stand_ins.append(f"{component}.{layer}: {format_label(resolved)} as {rows[j].format}")
        choice.append(j)
    return choice, stand_ins


# ----------------------------------------------------------------------------------------------------- recipes
def _mode_spec(rows: list[Row]) -> dict | None:
    counts = Counter(json.dumps(r.spec, sort_keys=True) for r in rows)
    return json.loads(counts.most_common(1)[0][0]) if counts else None


def _yaml_spec(spec: dict) -> dict:
    """A LayerSpec as the recipe writes it: only the fields that mean something for it."""
    out = {"weights": spec["weights"]}
    if spec["weights"] in capabilities.INT_DTYPES:
        out["granularity"] = spec["granularity"]
        if spec["granularity"] == "per_group":
            out["group_size"] = spec["group_size"]
    out["activations"] = spec["activations"]
    return out


def tuned_components(model: Model, choice: list[int], recipe: Recipe) -> dict[str, dict]:
    """Per component: precision, each layer type at its most common chosen format, the other layers as overrides
    (with the sensitivity that put them there, for the comment), keep and on_fp16_overflow as the recipe had them."""
    chosen = [rows[j] for rows, j in zip(model.items, choice)]
    out: dict[str, dict] = {}
    for name in COMPONENT_NAMES:
        spec = recipe.component(name)
        mine = [r for r in chosen if r.component == name]
        entry: dict = {"precision": spec.precision}
        base: dict[str, dict] = {}
        for kind in capabilities.LAYER_TYPES:
            mode = _mode_spec([r for r in mine if r.kind == kind])
            base[kind] = mode or {"weights": spec.precision, "activations": spec.precision}
            entry[kind] = _yaml_spec(base[kind])
        overrides = {}
        for r in mine:
            if json.dumps(_yaml_spec(r.spec), sort_keys=True) != json.dumps(entry[r.kind], sort_keys=True):
                options = model.table.options(name, r.layer)
                cheaper = [o for o in options if o.bytes < r.bytes]
                why = f"output SQNR {_sqnr(r.noise)} dB as {r.format}"
                if cheaper:
                    next_down = max(cheaper, key=lambda o: o.bytes)
                    why += f", {_sqnr(next_down.noise)} dB as {next_down.format}"
                overrides[r.layer] = (_yaml_spec(r.spec), why)
        entry["keep"] = list(spec.keep)
        entry["on_fp16_overflow"] = spec.on_fp16_overflow
        entry["layers"] = overrides
        out[name] = entry
    return out


def _sqnr(noise: float) -> str:
    return "inf" if noise <= 0 else f"{-10 * math.log10(noise):.1f}"


def recipe_text(recipe: Recipe, target: Target, components: dict[str, dict], budget: dict[str, float],
                output: str, description: str, header: list[str]) -> str:
    """The tuned recipe as YAML: everything the build needs spelled out (no `extends:`), so it reads, diffs and
    builds on its own."""
    def dump(data) -> str:
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)

    top = {"description": description, "checkpoint": recipe.checkpoint, "output": output}
    if recipe.resolution is not None:
        top["resolution"] = recipe.resolution
    sampler = recipe.sampler.model_dump(exclude_defaults=True)
    gates = {**recipe.gates.model_dump(exclude_none=True), **budget}
    lines = [f"# {h}" if h else "#" for h in header]
    lines.append(dump(top).rstrip())
    if sampler:
        lines.append(dump({"sampler": sampler}).rstrip())
    lines.append(dump({"calibration": recipe.calibration.model_dump()}).rstrip())
    lines.append(dump({"gates": gates}).rstrip())
    lines.append(dump({"targets": [target.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
                                   | {"backend": target.backend}]}).rstrip())
    lines.append("components:")
    flow = lambda d: yaml.safe_dump(d, default_flow_style=True, sort_keys=False, width=10_000).strip()  # noqa: E731
    for name, entry in components.items():
        lines.append(f"  {name}:")
        lines.append(f"    precision: {entry['precision']}")
        for kind in capabilities.LAYER_TYPES:
            lines.append(f"    {kind}: {flow(entry[kind])}")
        lines.append(f"    keep: {flow(entry['keep'])}")
        lines.append(f"    on_fp16_overflow: {entry['on_fp16_overflow']}")
        if entry["layers"]:
            lines.append("    layers:   # per-layer overrides: measured output SQNR in the chosen and the next "
                         "smaller format")
            for layer, (spec, why) in entry["layers"].items():
                lines.append(f"      {layer}: {flow(spec)}   # {why}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------- measuring
@dataclass
class Candidate:
    label: str
    target_db: float | None  # the predicted worst calibration-prompt PSNR asked of the allocation
    choice: list[int]
    predicted_db: list[float]  # per calibration prompt
    predicted_bytes: int
    recipe_path: Path | None = None
    bundle: Path | None = None
    measured: dict = field(default_factory=dict)  # bytes, PSNR median / worst, SSIM, adherence, mode, passed
    error: str | None = None  # a build that failed (a component gate, a structural check)

    @property
    def predicted_worst_db(self) -> float:
        return min(self.predicted_db)

    def to_json(self) -> dict:
        return {"label": self.label, "target_db": self.target_db,
                "predicted": {"worst_calibration_db": _finite(self.predicted_worst_db),
                              "per_calibration_prompt_db": [_finite(d) for d in self.predicted_db],
                              "bytes": self.predicted_bytes},
                "recipe": str(self.recipe_path) if self.recipe_path else None,
                "bundle": str(self.bundle) if self.bundle else None, "measured": self.measured, "error": self.error}


def _measure(candidates: list[Candidate], budget: dict[str, float], eval_prompts: str, num_eval_prompts: int,
             progress: bool) -> None:
    """Every built candidate on the eval prompts through `mdship compare`'s code (images from the same latents as
    the fp32 reference, honest PSNR statistics, adherence where the checkpoint has a judge, the gates)."""
    from mdship import compare

    built = [c for c in candidates if c.bundle is not None]
    if not built:
        return
    result = compare.compare([str(c.bundle) for c in built], prompts_file=eval_prompts, num_prompts=num_eval_prompts,
                             image_psnr_gate=budget["image_psnr_db"], image_ssim_gate=budget.get("image_ssim"),
                             progress=progress)
    for c, e in zip(built, result.entries):
        images = e.row.images
        stats = images.psnr
        c.measured = {
            "bytes": e.row.total_bytes, "mode": images.mode, "images": len(images.psnr_db),
            "psnr_median_db": stats["median_db"], "psnr_worst_db": stats["worst_db"],
            "psnr_mean_db": e.row.manifest.fidelity.image_psnr_db.mean if e.row.manifest.fidelity else None,
            "identical": stats["identical"], "ssim_mean": round(images.ssim_mean, 5),
            "ssim_worst": round(images.ssim_worst, 5),
            "adherence": None if e.adherence is None else {k: e.adherence[k] for k in
                                                          ("accuracy", "delta_vs_fp32", "significant")
                                                          if k in e.adherence},
            "reference_adherence": (result.reference_adherence or {}).get("accuracy"),
            "gates": [g.cell() for g in e.gates], "passed": e.passed}
        if "adherence" in budget:
            accuracy = (e.adherence or {}).get("accuracy")
            meets = accuracy is not None and accuracy >= budget["adherence"]
            c.measured["gates"].append(f"adherence {'-' if accuracy is None else f'{accuracy:.3f}'} >= "
                                       f"{budget['adherence']:g}: {'pass' if meets else 'FAIL'}")
            c.measured["passed"] = e.passed and meets


def _budget_text(budget: dict[str, float]) -> str:
    return ", ".join(f"{k} >= {v:g}" for k, v in budget.items())


def _adherence_text(c: Candidate) -> str:
    a = c.measured.get("adherence")
    return f", adherence {a['accuracy']:.3f}" if a else ""


def _worst(c: Candidate) -> float:
    worst = c.measured.get("psnr_worst_db")
    return math.inf if c.measured and worst is None else (worst if worst is not None else -math.inf)


# ----------------------------------------------------------------------------------------------------- latency
def latency_costs(table: Sensitivity, backend, progress: bool) -> dict[tuple[str, str], float]:
    """Estimated seconds per multiply-add for each (layer type, format): the largest layer of that type, rebuilt with
    its shape and timed as a one-layer program (quantized and lowered by the build's own stages) on this machine's
    runtime. 3x3 convolutions are not timed: on the backends that run here they have one integer format, the same
    in every candidate."""
    import torch
    from torch import nn
    from tqdm import tqdm

    from mdship import programs
    from mdship.recipe.schema import ComponentSpec, Target
    from mdship.stages import lower, quantize, serialize

    if not backend.runs_here:
        raise UserError(f"--objective latency: {backend.name} programs do not run here, so their latency cannot be "
                        f"estimated; expected --objective bytes, or a backend that runs here")
    largest: dict[tuple[str, str], Row] = {}
    for r in table.rows:
        if r.macs and r.kind in ("linear", "attention", "pointwise") and (
                (r.kind, r.format) not in largest or r.macs > largest[(r.kind, r.format)].macs):
            largest[(r.kind, r.format)] = r
    per_mac: dict[tuple[str, str], float] = {}
    for (kind, label), r in tqdm(sorted(largest.items()), desc="latency model", leave=False, disable=not progress):
        shape = r.input_shape
        outputs = max(1, r.macs // max(1, math.prod(shape)))
        layer = nn.Linear(shape[-1], outputs) if kind != "pointwise" else nn.Conv2d(shape[1], outputs, 1)
        as_type = "linear" if kind == "attention" else kind  # a lone projection is a plain linear
        spec = ComponentSpec.model_validate({as_type: {k: v for k, v in r.spec.items() if v is not None},
                                             "keep": []})
        example = (torch.randn(shape),)
        exported = quantize.run("latency", nn.Sequential(layer).eval(), spec, backend, example, [example])
        program = serialize.run(lower.run(exported, backend.partitioners(Target(backend=backend.name), spec),
                                          backend.transform_passes()))
        method = programs.method(program.data)
        method(*example)  # warm up
        started = time.perf_counter()
        for _ in range(5):
            method(*example)
        per_mac[(kind, label)] = (time.perf_counter() - started) / 5 / r.macs
    return per_mac


# ----------------------------------------------------------------------------------------------------- run
@dataclass
class TuneResult:
    recipe_out: Path | None
    chosen: Candidate | None
    baseline: Candidate | None
    candidates: list[Candidate]
    report: dict
    plot: Path | None


def run(recipe_path: str, overrides: list[str], budget: dict[str, float], objective: str, backend_name: str | None,
        out: str, *, progress: bool = True, log: Callable[[str], None] = print, cache=None) -> TuneResult:
    """The whole command (see the module docstring). Raises VerificationError when no candidate meets the budget
    (the report and plot are still written, the recipe is not)."""
    from mdship import backends, inputs
    from mdship.build import CALIBRATION_SEED, Builder
    from mdship.cache import Cache
    from mdship.pipeline import eager_generator
    from mdship.recipe import load_recipe
    from mdship.stages import fidelity
    from mdship.stages import sensitivity as sensitivity_stage

    if objective not in OBJECTIVES:
        raise UserError(f"--objective {objective}: expected one of {', '.join(OBJECTIVES)}")
    out_path = Path(inputs.check_output_file(out, "--out"))
    if out_path.suffix not in (".yaml", ".yml"):
        raise UserError(f"--out {out}: expected a recipe file name ending in .yaml")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    recipe = load_recipe(recipe_path, overrides)
    target = select_target(recipe, backend_name)
    backend = backends.get(target.backend)
    if not any(f["weights"] in capabilities.INT_DTYPES for name in COMPONENT_NAMES for t in capabilities.LAYER_TYPES
               for f in capabilities.candidate_formats(target.backend, t, recipe.component(name).precision)):
        tunable = [b for b in capabilities.BACKENDS if any(f["weights"] in capabilities.INT_DTYPES for t in
                                                           capabilities.LAYER_TYPES
                                                           for f in capabilities.candidate_formats(b, t, "fp32"))]
        raise UserError(f"--backend {target.backend}: the capability table gives it no integer format for any layer, "
                        f"so there is nothing to choose; expected one of {', '.join(tunable)}")
    base = recipe.model_copy(update={"targets": [target]})
    base._source = recipe.source
    cache = cache or Cache()
    work = Path(str(out_path.with_suffix("")) + ".candidates")
    inputs.check_output_dir(str(work), "--out (its candidates folder)")

    # 1. sensitivity
    phase = time.perf_counter()
    builder = Builder(base, cache=cache, progress=progress)
    prompts = builder.calibration_prompts()
    seeds = [CALIBRATION_SEED + i for i in range(len(prompts))]
    specs = {n: base.component(n) for n in COMPONENT_NAMES}

    def make() -> Sensitivity:
        recording = builder.calibration_recording()
        generate = eager_generator(builder.checkpoint)
        generate.resolution = builder.resolution
        reference = fidelity.cached_images(
            cache, "reference", fidelity.reference_key(builder.checkpoint.hash, prompts, builder.settings,
                                                       builder.resolution, seeds),
            lambda: fidelity.reference_images(generate, prompts, builder.settings, progress, seeds=seeds))
        return sensitivity_stage.run(builder.checkpoint, specs, backend, recording,
                                     lambda p, s: generate(p, s, builder.settings), reference, prompts, seeds,
                                     progress=progress)

    key = sensitivity_stage.key(builder.checkpoint.hash, specs, backend.name, prompts, seeds, builder.settings,
                                builder.resolution)
    table = sensitivity_stage.cached(cache, key, make)
    builder = None  # its float model (GBs at paper scale) is not needed by the builds below, each opens its own
    gc.collect()
    timings["sensitivity"] = round(time.perf_counter() - phase, 1)
    log(f"sensitivity: {len(table.layers())} layers x formats, modes {table.mode}, table {table.path} "
        f"({timings['sensitivity']:.0f} s" + (", cached)" if timings["sensitivity"] < 5 else ")"))

    if objective == "latency":
        phase = time.perf_counter()
        per_mac = latency_costs(table, backend, progress)
        timings["latency model"] = round(time.perf_counter() - phase, 1)
        fallback = {}
        for (kind, label), v in per_mac.items():
            fallback.setdefault(label, v)
        cost = lambda r: r.macs * per_mac.get((r.kind, r.format), fallback.get(r.format, 0.0))  # noqa: E731
    else:
        cost = lambda r: float(r.bytes)  # noqa: E731
    model = Model.build(table, cost)

    # 2. the baseline: the input recipe itself, built and measured, calibrates the model's optimism
    phase = time.perf_counter()
    baseline = None
    optimism = DEFAULT_OPTIMISM_DB
    base_choice, stand_ins = recipe_choice(model, base)
    eval_prompts, n_eval = base.calibration.eval_prompts, base.calibration.num_eval_prompts
    if base_choice is not None and any(model.items[i][j].spec["weights"] in capabilities.INT_DTYPES
                                       for i, j in enumerate(base_choice)):
        baseline = Candidate(f"{recipe.name} (uniform)", None, base_choice, model.predicted_db(base_choice),
                             model.bytes(base_choice), recipe.source)
        ungated = base.gates.model_copy(update={"image_psnr_db": None, "image_ssim": None})  # measured below
        baseline_recipe = base.model_copy(update={"output": str(work / "baseline"), "gates": ungated})
        baseline_recipe._source = recipe.source
        baseline.bundle, baseline.error = _build(baseline_recipe, target, cache, progress)
        _measure([baseline], budget, eval_prompts, n_eval, progress)
        if baseline.measured.get("psnr_worst_db") is not None:
            optimism = max(0.0, baseline.predicted_worst_db - baseline.measured["psnr_worst_db"])
        if baseline.measured.get("bytes"):  # what the estimate leaves out (program structure, scales, packing)
            model.bytes_offset = baseline.measured["bytes"] - baseline.predicted_bytes
            baseline.predicted_bytes += model.bytes_offset
        if stand_ins:
            log(f"baseline {recipe.name}: {len(stand_ins)} layers predicted in a stand-in format of the same bytes "
                f"(e.g. {stand_ins[0]})")
        log(f"baseline {recipe.name}: {_mb(baseline.measured.get('bytes'))} MB, predicted worst calibration "
            f"{baseline.predicted_worst_db:.1f} dB, measured worst eval {_fmt(baseline.measured.get('psnr_worst_db'))}"
            f" dB: the model is {optimism:.1f} dB optimistic")
    timings["baseline"] = round(time.perf_counter() - phase, 1)

    # 3. up the model's frontier from just below the shifted budget, smallest first, until one meets the budget
    phase = time.perf_counter()
    candidates: list[Candidate] = []
    chosen = None
    ceiling = model.best_db()  # the most a choice can be predicted to reach (everything at its most accurate)
    target_db = min(budget["image_psnr_db"] + optimism + START_DB, ceiling)
    while len(candidates) < MAX_CANDIDATES:
        choice = model.solve(target_db)
        if choice is None or any(choice == c.choice for c in candidates):
            if target_db >= ceiling:
                log(f"no new allocation below the model's ceiling ({ceiling:.1f} dB predicted): stopping")
                break
            target_db = min(target_db + STEP_DB, ceiling)
            continue
        c = Candidate(f"c{len(candidates) + 1}-{target_db:.1f}dB", round(target_db, 2), choice,
                      model.predicted_db(choice), model.bytes(choice))
        c.recipe_path = work / f"{c.label}.yaml"
        text = recipe_text(base, target, tuned_components(model, c.choice, base), _gates(budget),
                           str(work / c.label), f"candidate {c.label} of mdship tune", [])
        c.recipe_path.parent.mkdir(parents=True, exist_ok=True)
        c.recipe_path.write_text(text)
        candidate_recipe = load_recipe(c.recipe_path, ["gates.image_psnr_db=null", "gates.image_ssim=null"])
        log(f"build {c.label}: predicted {_mb(c.predicted_bytes)} MB, worst calibration {c.predicted_worst_db:.1f} dB")
        c.bundle, c.error = _build(candidate_recipe, target, cache, progress)
        _measure([c], budget, eval_prompts, n_eval, progress)
        candidates.append(c)
        log(f"  {c.label}: {_mb(c.measured.get('bytes'))} MB, worst eval {_fmt(c.measured.get('psnr_worst_db'))} dB"
            + _adherence_text(c) + f", {'meets' if c.measured.get('passed') else 'misses'} the budget"
            + (f" ({c.error})" if c.error else ""))
        if c.measured.get("passed"):
            chosen = c
            break
        # the next allocation up the frontier: by the measured shortfall, at least STEP_DB (the model ranks, the
        # worst eval prompt is what counts)
        short = budget["image_psnr_db"] - _worst(c) if c.measured.get("psnr_worst_db") is not None else 0.0
        target_db = min(max(target_db, c.predicted_worst_db) + max(STEP_DB, short), ceiling)
    timings["candidates"] = round(time.perf_counter() - phase, 1)

    # 4. the outputs
    frontier = []
    cheapest = min(model.predicted_db(model.extreme(lambda rows: min(rows, key=lambda r: r.bytes))))
    widest = min(model.predicted_db(model.extreme(lambda rows: min(
        [r for r in rows if r.spec["weights"] in capabilities.INT_DTYPES] or rows, key=lambda r: (-r.bytes, r.noise)))))
    lo, hi = math.floor(cheapest), math.ceil(max(widest, budget["image_psnr_db"] + optimism) + 3)
    for target_db in [lo + (hi - lo) * k / 24 for k in range(25)]:
        choice = model.solve(target_db)
        if choice is not None:
            frontier.append({"target_db": round(target_db, 2), "predicted_bytes": model.bytes(choice),
                             "predicted_worst_calibration_db": _finite(min(model.predicted_db(choice)))})
    timings["total"] = round(time.perf_counter() - started, 1)
    command = shlex.join(["mdship", "tune", recipe_path, *overrides, *[f"--budget={k}={v}" for k, v in budget.items()],
                          f"--objective={objective}", f"--backend={target.backend}", f"--out={out}"])
    report = {
        "tool": "mdship tune",
        "bytes_offset": model.bytes_offset, "version": __version__, "command": command,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "recipe": recipe_path, "overrides": overrides, "backend": target.backend, "objective": objective,
        "budget": budget, "checkpoint": base.checkpoint,
        "eval_prompts": {"file": eval_prompts, "count": n_eval},
        "calibration_prompts": {"file": base.calibration.prompts, "count": len(prompts), "seeds": seeds},
        "sensitivity": {"table": str(table.path), "modes": table.mode, "calls": table.calls,
                        "layers": len(table.layers()), "rows": len(table.rows), "timings_s": table.timings,
                        "kappa": table.kappa,
                        "validation": [{"configuration": v["configuration"],
                                        "predicted_worst_calibration_db": _finite(min(
                                            _db(m) for m in table.image_mse(v["noise_by_group"]))),
                                        "measured_worst_calibration_db": _finite(min(
                                            _db(m) for m in v["measured_mse"]))} for v in table.validation]},
        "optimism_db": round(optimism, 2),
        "baseline_stand_ins": stand_ins,
        "baseline": baseline.to_json() if baseline else None,
        "candidates": [c.to_json() for c in candidates],
        "chosen": chosen.label if chosen else None,
        "frontier": frontier, "timings_s": timings,
    }
    from mdship.atomic import atomic_file

    plot = out_path.with_suffix(".tune.png")
    with atomic_file(plot) as tmp:
        tmp.write_bytes(_plot(frontier, baseline, candidates, chosen, budget, recipe.name, target.backend))
    report["plot"] = str(plot)
    written = None
    if chosen is not None:
        header = [f"Tuned by mdship {__version__} on {report['created'][:10]}:",
                  f"  {command}",
                  f"Chosen: {chosen.label}, {_mb(chosen.measured['bytes'])} MB; image PSNR vs fp32 on "
                  f"{chosen.measured['images']} eval prompts ({chosen.measured['mode']}): median "
                  f"{_fmt(chosen.measured['psnr_median_db'])} / worst {_fmt(chosen.measured['psnr_worst_db'])} dB"
                  + (f", adherence {chosen.measured['adherence']['accuracy']:.3f}" if chosen.measured.get("adherence")
                     else "") + ".",
                  *([f"Uniform {recipe.name}: {_mb(baseline.measured.get('bytes'))} MB, median "
                     f"{_fmt(baseline.measured.get('psnr_median_db'))} / worst "
                     f"{_fmt(baseline.measured.get('psnr_worst_db'))} dB"
                     + (f", adherence {baseline.measured['adherence']['accuracy']:.3f}"
                        if baseline.measured.get("adherence") else "") + "."] if baseline else []),
                  "Layer types take their most common chosen format; `layers:` lists the others. Sensitivities are",
                  f"measured on the calibration recording ({base.calibration.prompts}); the report is "
                  f"{out_path.with_suffix('.tune.json').name}.", ""]
        text = recipe_text(base, target, tuned_components(model, chosen.choice, base), _gates(budget),
                           str(Path(base.output).parent / out_path.stem),
                           f"{recipe.name} on {base.checkpoint}, tuned per layer by mdship tune for {target.backend} "
                           f"under {_budget_text(budget)}", header)
        with atomic_file(out_path) as tmp:
            tmp.write_text(text)
            load_recipe(tmp)  # what is written must load: validated like every recipe
        written = out_path
        report["recipe_out"] = str(out_path)
    with atomic_file(out_path.with_suffix(".tune.json")) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    result = TuneResult(written, chosen, baseline, candidates, report, plot)
    if chosen is None:
        best = max(candidates, key=_worst, default=None)
        raise VerificationError(
            f"no candidate meets the budget ({_budget_text(budget)}) on the {n_eval} eval prompts: "
            f"{len(candidates)} built (best: {best.label if best else '-'}, worst "
            f"{_fmt(best.measured.get('psnr_worst_db')) if best else '-'} dB); {out} was not written; see "
            f"{out_path.with_suffix('.tune.json')}")
    return result


def _build(recipe: Recipe, target: Target, cache, progress: bool) -> tuple[Path | None, str | None]:
    """Build one candidate: (bundle, None), or (None, why) when a gate failed or the toolchain could not build this
    mix of formats (recorded against the candidate; the tune goes on with the others)."""
    from mdship.build import Builder

    try:
        result = Builder(recipe, cache=cache, progress=progress).target(target)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - one proposal the toolchain cannot build must not end the tune
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        return None, " ".join(f"build failed: {type(exc).__name__}: {exc}{cause}".split())[:400]
    if result.failures:
        return None, "; ".join(result.failures)
    return result.bundle, None


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def _fmt(value) -> str:
    return "inf" if value is None else f"{value:.2f}"


def _plot(frontier: list[dict], baseline: Candidate | None, candidates: list[Candidate], chosen: Candidate | None,
          budget: dict, name: str, backend: str) -> bytes:
    from mdship import figures

    points = [figures.TunePoint(c.label, c.predicted_bytes, c.predicted_worst_db, c.measured.get("bytes"),
                                c.measured.get("psnr_worst_db") if c.measured else None,
                                c.measured.get("mode", "executed"), c is chosen)
              for c in candidates]
    if baseline is not None:
        points.append(figures.TunePoint(baseline.label, baseline.predicted_bytes, baseline.predicted_worst_db,
                                        baseline.measured.get("bytes"),
                                        baseline.measured.get("psnr_worst_db") if baseline.measured else None,
                                        baseline.measured.get("mode", "executed"), False, baseline=True))
    curve = [(f["predicted_bytes"], f["predicted_worst_calibration_db"]) for f in frontier
             if f["predicted_worst_calibration_db"] is not None]
    return figures.tune_plot(curve, points, budget["image_psnr_db"], f"mdship tune: {name} on {backend}")


def summary(result: TuneResult) -> str:
    """The terminal summary: every recipe built, predicted against measured, and what was written."""
    from mdship.report import Table

    r = result.report
    table = Table(["recipe", "predicted MB", "predicted worst calib dB", "MB", "image PSNR median / worst dB",
                   "SSIM worst", "adherence", "budget"])
    for c in ([result.baseline] if result.baseline else []) + result.candidates:
        m = c.measured
        adherence = m.get("adherence") or {}
        table.rows.append([c.label + (" (chosen)" if c is result.chosen else ""), _mb(c.predicted_bytes),
                           _fmt(c.predicted_worst_db), _mb(m.get("bytes")),
                           f"{_fmt(m.get('psnr_median_db'))} / {_fmt(m.get('psnr_worst_db'))}" if m else
                           (c.error or "-"), f"{m['ssim_worst']:.3f}" if m else "-",
                           f"{adherence['accuracy']:.3f}" if adherence else "-",
                           ("meets" if m.get("passed") else "misses") if m else "-"])
    lines = [f"{r['backend']}, objective {r['objective']}, budget {_budget_text(r['budget'])} (images: worst of "
             f"{r['eval_prompts']['count']} eval prompts, {r['eval_prompts']['file']})",
             *table.markdown(),
             f"time: {r['timings_s']['total']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in r["timings_s"].items()
                                                                   if k != "total")
             + f"); load average {r['load_average'][0]:.2f}"]
    if result.recipe_out:
        lines.append(f"wrote {result.recipe_out} (build it: mdship build {result.recipe_out}); report "
                     f"{Path(result.recipe_out).with_suffix('.tune.json')}; plot {result.plot}")
    return "\n".join(lines)
