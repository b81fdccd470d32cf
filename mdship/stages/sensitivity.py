"""Stage `sensitivity`: what each candidate format costs each layer, in bytes and in image error (for `mdship tune`).

    run   Checkpoint + recipe intent + Backend + calibration recording -> Sensitivity (a table, cached as JSON)

For every quantizable layer of every component (Linear, Conv2d, Embedding; `keep:` layers stay float) the
candidates are the formats the capability table lets the backend run for that layer type
(`capabilities.candidate_formats`) whose shape fits. Each candidate layer is computed in that format exactly as the
build would quantize it (`quantize.layer_in_format`: the same torchao configs, the backend's own PT2E quantizer for
static int8) and swapped into the float model:

1. **Local proxy** (every layer x format, cheap): the layer alone on its recorded inputs, relative noise power
   ``||f(X) - l(X)||^2 / ||l(X)||^2``.
2. **Component-output noise** (the end-to-end part of MixDQ's measurement): the component runs on K recorded calls
   with the candidate swapped in; relative noise power of its output against fp32 (the UNet's output SQNR is
   ``-10 log10`` of it). In *layer* mode every (layer, format) is measured like this; when that would take too
   long (paper scale) the stage runs in *block* mode: each block (the layers under one indexed module, e.g.
   ``down.1.resnets.0``, split into content and quality layers) is measured once with every layer at its cheapest
   format, and each (layer, format)'s output noise is the block's gain (measured / sum of local proxies) times its
   local proxy.
3. **How errors add up in the image** (the calibrated model): component-output noise of different components (and
   of the UNet's content layers, cross-attention and feed-forward, against its quality layers: MixDQ's metric
   decoupling) reaches the image differently. Each such group is quantized as a whole, at its cheapest and at its
   8-bit formats, and the full pipeline generates the calibration prompts (their own seeds, never the eval ones);
   per prompt, the gain ``kappa = image MSE / sum of the group's output noise`` (geometric mean of the two) makes
   the model ``image MSE(prompt) = sum over groups of kappa(group, prompt) x sum of chosen output noise``. Two
   whole-model configurations (everything cheapest, everything 8-bit) are measured too, to check that model.

Not modelled: fp16 compute on delegates that compute in fp16 (the sensitivity runs in fp32; fp16 costs ~60 dB of
image PSNR where quantization costs 30-45); interactions beyond additive noise power (the tuner measures the
candidates it proposes, so the model only has to rank them).

No library measures this for ExecuTorch formats (torchao has the formats, not the search; Apple's and MixDQ's
scripts are tied to their models): the measurement is this module, the formats are the build's own.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mdship import capabilities
from mdship.bundle import COMPONENT_IO, COMPONENTS
from mdship.cache import Cache, make_key
from mdship.metrics import image_psnr
from mdship.models.unet import CONTENT_LAYERS
from mdship.stages import quantize

#: bumped when what the stage measures changes for the same inputs (so no older table is served)
VERSION = 2
#: at most this many recorded calls per component are replayed (spread over the recording: every sampler step)
MAX_CALLS = 16
#: per-layer measurement runs when it is estimated to take at most this long per component (else block mode)
LAYER_MODE_SECONDS = 240.0
#: recorded layer inputs kept for the local proxy and static calibration: at most this many tokens of a linear's
#: input, a crop of this many pixels a side of a convolution's
CAPTURE_TOKENS, CAPTURE_PIXELS = 1024, 32


@dataclass
class Row:
    """One (layer, format) candidate."""

    component: str
    layer: str
    kind: str  # linear | conv | attention | pointwise | embedding
    block: str  # measurement unit in block mode (and for the report)
    group: str  # image-error group: a component, or "unet:content"
    format: str  # short label, e.g. "int4 g32 + a8 dynamic"
    spec: dict  # LayerSpec fields
    bytes: int  # estimated bytes of the layer's weight in this format
    macs: int  # multiply-adds of one call of the layer on the recorded inputs (the latency model's size)
    input_shape: list[int]  # of the layer's first recorded input
    local_noise: float  # relative noise power of the layer's own output
    noise: float  # relative noise power of the component's output (measured in layer mode, estimated in block mode)


@dataclass
class Sensitivity:
    rows: list[Row]
    fixed_bytes: dict[str, int]  # per component: bytes of everything that is not a candidate weight
    kappa: dict[str, list[float]]  # image-error group -> per calibration prompt: image MSE per unit output noise
    validation: list[dict]  # whole-model configurations: measured per-prompt image MSE (and what they were)
    prompts: list[str]
    seeds: list[int]
    mode: dict[str, str]  # per component: layer | block
    calls: dict[str, int]  # per component: recorded calls replayed
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = None  # the cache entry it was loaded from

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data

    @classmethod
    def from_json(cls, data: dict, path: Path | None = None) -> Sensitivity:
        return cls(**{**data, "rows": [Row(**r) for r in data["rows"]]}, path=path)

    def layers(self) -> list[tuple[str, str]]:
        """(component, layer) of every candidate layer, in model order."""
        return list(dict.fromkeys((r.component, r.layer) for r in self.rows))

    def options(self, component: str, layer: str) -> list[Row]:
        return [r for r in self.rows if r.component == component and r.layer == layer]

    def image_mse(self, noise_by_group: dict[str, float]) -> list[float]:
        """Predicted image MSE per calibration prompt for a configuration's summed output noise per group."""
        return [sum(self.kappa[g][p] * n for g, n in noise_by_group.items() if g in self.kappa)
                for p in range(len(self.prompts))]


# ----------------------------------------------------------------------------------------------------- formats
def format_label(spec: dict) -> str:
    """Short, readable name of a format: 'fp32', 'int8 pc + a8 dynamic', 'int4 g32 + a8 dynamic', 'int8 pc'."""
    if spec["weights"] in capabilities.FLOAT_DTYPES:
        return spec["weights"]
    grain = "pc" if spec["granularity"] == "per_channel" else f"g{spec['group_size']}"
    act = {"int8_dynamic": " + a8 dynamic", "int8_static": " + a8 static"}.get(spec["activations"], "")
    return f"{spec['weights']} {grain}{act}"


def weight_bytes(layer: nn.Module, spec: dict) -> int:
    """Estimated bytes of ``layer``'s weight in format ``spec``: packed values plus one fp32 scale per channel or
    group (biases are the same in every format and counted with the fixed bytes). An estimate: delegates pack
    differently; `mdship tune` builds what it proposes and reports the measured size."""
    n = layer.weight.numel()
    rows = layer.weight.shape[0]
    if spec["weights"] in capabilities.FLOAT_DTYPES:
        return n * (4 if spec["weights"] == "fp32" else 2)
    bits = 8 if spec["weights"] == "int8" else 4
    scales = rows if spec["granularity"] == "per_channel" else math.ceil(n / spec["group_size"])
    return math.ceil(n * bits / 8) + 4 * scales


def _spec(fields: dict):
    from mdship.recipe.schema import LayerSpec

    return LayerSpec.model_construct(**fields)


def _block(name: str) -> str:
    """A layer's block: its name up to the last indexed module (``down.1.resnets.0.conv1.pointwise`` ->
    ``down.1.resnets.0``), or its first part when nothing is indexed (``mid_resnet.conv1.depthwise`` ->
    ``mid_resnet``). ModuleList indices mark the repeated units of a network."""
    parts = name.split(".")
    last = max((i for i, p in enumerate(parts) if p.isdigit()), default=0)
    return ".".join(parts[:last + 1])


def _coarse_block(name: str) -> str:
    """A coarser block, when blocks are too many to measure: up to the first indexed module (``down.1.resnets.0...``
    -> ``down.1``)."""
    parts = name.split(".")
    first = next((i for i, p in enumerate(parts) if p.isdigit()), 0)
    return ".".join(parts[:first + 1])


def group_of(component: str, layer: str) -> str:
    """The image-error group: the component, with the UNet's content layers (cross-attention, feed-forward) apart."""
    if component == "unet" and any(quantize.name_matches(layer, p) for p in CONTENT_LAYERS):
        return "unet:content"
    return component


# ----------------------------------------------------------------------------------------------------- helpers
@contextmanager
def swapped(module: nn.Module, replacements: dict[str, nn.Module]):
    """Put ``replacements`` (qualified name -> module) into ``module`` for the duration; always restores."""
    originals = {}
    try:
        for name, new in replacements.items():
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            originals[name] = (parent, attr, getattr(parent, attr))
            setattr(parent, attr, new)
        yield module
    finally:
        for parent, attr, old in originals.values():
            setattr(parent, attr, old)


def _noise(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """Relative noise power: sum ||out - ref||^2 / sum ||ref||^2 (inf when an output is not finite)."""
    err = sum(float(((o.double() - r.double()) ** 2).sum()) for r, o in zip(reference, outputs))
    power = sum(float((r.double() ** 2).sum()) for r in reference) or 1.0
    if any(not torch.isfinite(o).all() for o in outputs):
        return math.inf
    return err / power


def _spread(items: list, k: int) -> list:
    """At most k items spread evenly over the list (first and last included)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else items[:1]


def _macs(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    if isinstance(layer, nn.Embedding):
        return 0
    if isinstance(layer, nn.Linear):
        return y.numel() * layer.in_features
    k = layer.weight[0].numel()  # in_channels / groups x kh x kw per output value
    return y.numel() * k


# ----------------------------------------------------------------------------------------------------- one component
@dataclass
class _Layer:
    name: str
    kind: str
    module: nn.Module
    formats: list[dict]
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    macs: int = 0
    fakes: dict[str, nn.Module] = field(default_factory=dict)
    local: dict[str, float] = field(default_factory=dict)  # format label -> local proxy
    shape: list[int] = field(default_factory=list)  # of the first recorded input (whole)


def _candidates(component: str, module: nn.Module, spec, backend: str) -> list[_Layer]:
    found = []
    for name, kind, m in quantize.layers(module):
        if quantize.keep_match(name, spec.keep) is not None:
            continue
        formats = [f for f in capabilities.candidate_formats(backend, kind, spec.precision)
                   if f["weights"] in capabilities.FLOAT_DTYPES or quantize.shape_problem(m, kind, _spec(f)) is None]
        if any(f["weights"] in capabilities.INT_DTYPES for f in formats):  # a single format is a fixed choice
            found.append(_Layer(name, kind, m, formats))
    return found


def _sample(x: torch.Tensor) -> torch.Tensor:
    """What is kept of a layer input: every token id, up to CAPTURE_TOKENS tokens, a CAPTURE_PIXELS crop (paper-scale
    activations would not fit in memory whole; the local proxy and static calibration need their statistics only)."""
    if x.dim() == 4:
        return x[..., :CAPTURE_PIXELS, :CAPTURE_PIXELS].detach().clone()
    if x.dim() == 3 and x.is_floating_point():
        return x[:, :CAPTURE_TOKENS].detach().clone()
    return x.detach().clone()


def _capture(module: nn.Module, layers: list[_Layer], calls: list[tuple]) -> tuple[list[torch.Tensor], float]:
    """Run the float component on ``calls`` once, keeping a sample of every candidate layer's inputs (and the
    layer's float output on it); returns the component's outputs and the seconds one call takes."""
    by_module = {id(layer.module): layer for layer in layers}
    first_shapes: dict[int, list[int]] = {}

    def hook(m, args, out):
        layer = by_module[id(m)]
        layer.macs += _macs(m, args[0], out)
        first_shapes.setdefault(id(m), list(args[0].shape))
        layer.inputs.append(_sample(args[0]))

    handles = [layer.module.register_forward_hook(hook) for layer in layers]
    started = time.perf_counter()
    outputs = []
    try:
        with torch.no_grad():
            for call in calls:
                outputs.append(module(*call).detach())
    finally:
        for h in handles:
            h.remove()
    seconds = (time.perf_counter() - started) / max(1, len(calls))
    with torch.no_grad():
        for layer in layers:
            layer.macs //= max(1, len(calls))
            layer.shape = first_shapes[id(layer.module)]
            layer.outputs = [layer.module(x) for x in layer.inputs]
    return outputs, seconds


def _fake(layer: _Layer, fmt: dict, backend) -> nn.Module:
    label = format_label(fmt)
    if label not in layer.fakes:
        layer.fakes[label] = quantize.layer_in_format(layer.module, layer.kind, _spec(fmt), backend,
                                                      layer.inputs[:4])
    return layer.fakes[label]


def _local_noise(layer: _Layer, fmt: dict, backend) -> float:
    if fmt["weights"] in capabilities.FLOAT_DTYPES:
        return 0.0
    fake = _fake(layer, fmt, backend)
    with torch.no_grad():
        return _noise(layer.outputs, [fake(x) for x in layer.inputs])


def _cheapest(layer: _Layer) -> dict:
    """The format with the fewest bytes (of equals, the most accurate by the local proxy)."""
    return min(layer.formats, key=lambda f: (weight_bytes(layer.module, f), layer.local[format_label(f)]))


def _widest_int(layer: _Layer) -> dict:
    """The integer format with the most bytes (the 8-bit one; of equals, the most accurate): the whole-model
    '8-bit' configuration."""
    ints = [f for f in layer.formats if f["weights"] in capabilities.INT_DTYPES]
    return min(ints, key=lambda f: (-weight_bytes(layer.module, f), layer.local[format_label(f)]))


def _component_rows(name: str, module: nn.Module, spec, backend, calls: list[tuple], progress: bool
                    ) -> tuple[list[Row], int, str, dict]:
    layers = _candidates(name, module, spec, backend.name)
    reference, seconds = _capture(module, layers, calls)
    float_bytes = 4 if spec.precision == "fp32" else 2
    total = sum(p.numel() for p in module.parameters()) * float_bytes
    fixed = total - sum(layer.module.weight.numel() * float_bytes for layer in layers)
    pairs = sum(len(layer.formats) - 1 for layer in layers)
    mode = "layer" if pairs * len(calls) * seconds <= LAYER_MODE_SECONDS else "block"
    units = {}
    if mode == "block":  # the finest grouping (and most calls) that fits the time: blocks, else coarse blocks
        for level in (_block, _coarse_block):
            units = {}
            for layer in layers:
                units.setdefault((level(layer.name), group_of(name, layer.name)), []).append(layer)
            if len(units) * len(calls) * seconds <= LAYER_MODE_SECONDS:
                break
        keep = max(1, min(len(calls), int(LAYER_MODE_SECONDS // max(1e-9, len(units) * seconds))))
        if keep < len(calls):
            calls, reference = _spread(calls, keep), _spread(reference, keep)

    def measure(replacements: dict[str, nn.Module]) -> float:
        with swapped(module, replacements), torch.no_grad():
            return _noise(reference, [module(*call) for call in calls])

    local = {}
    for layer in tqdm(layers, desc=f"{name}: local proxy", leave=False, disable=not progress):
        for fmt in layer.formats:
            local[(layer.name, format_label(fmt))] = layer.local[format_label(fmt)] = _local_noise(layer, fmt,
                                                                                                    backend)

    measured: dict[tuple[str, str], float] = {}
    if mode == "layer":
        todo = [(layer, fmt) for layer in layers for fmt in layer.formats
                if fmt["weights"] in capabilities.INT_DTYPES]
        for layer, fmt in tqdm(todo, desc=f"{name}: one layer at a time", leave=False, disable=not progress):
            measured[(layer.name, format_label(fmt))] = measure({layer.name: _fake(layer, fmt, backend)})
    else:
        for members in tqdm(list(units.values()), desc=f"{name}: one block at a time", leave=False,
                            disable=not progress):
            out = measure({m.name: _fake(m, _cheapest(m), backend) for m in members})
            proxy = sum(local[(m.name, format_label(_cheapest(m)))] for m in members)
            gain = out / proxy if proxy > 0 else 1.0
            for m in members:
                for fmt in m.formats:
                    measured[(m.name, format_label(fmt))] = gain * local[(m.name, format_label(fmt))]

    rows = []
    for layer in layers:
        for fmt in layer.formats:
            label = format_label(fmt)
            rows.append(Row(name, layer.name, layer.kind, _block(layer.name), group_of(name, layer.name), label,
                            fmt, weight_bytes(layer.module, fmt), layer.macs, layer.shape,
                            local[(layer.name, label)], measured.get((layer.name, label), 0.0)))
    fakes = {layer.name: layer for layer in layers}
    return rows, fixed, mode if mode == "layer" else f"block ({len(units)} blocks, {len(calls)} calls)", fakes


# ----------------------------------------------------------------------------------------------------- the image
def _image_mse(reference: list[np.ndarray], images: list[np.ndarray]) -> list[float]:
    """Per-image MSE (0..255 scale) through metrics.image_psnr, the one PSNR of mdship (identical: 0)."""
    out = []
    for r, c in zip(reference, images):
        psnr = image_psnr(r, c)
        out.append(0.0 if math.isinf(psnr) else 255.0 ** 2 / 10 ** (psnr / 10))
    return out


def run(checkpoint, specs: dict, backend, recording, generate, reference_images: list[np.ndarray], prompts: list[str],
        seeds: list[int], *, progress: bool = True) -> Sensitivity:
    """Measure the table for the components in ``specs`` (component -> ComponentSpec, the recipe's intent: its
    precision and `keep:`) on ``backend``. ``recording``: the calibration recording (calibrate.Recording);
    ``generate(prompt, seed)``: the eager pipeline of ``checkpoint`` (its modules are the ones swapped);
    ``reference_images``: its fp32 images of ``prompts`` / ``seeds``."""
    timings: dict[str, float] = {}
    modules = checkpoint.modules()
    rows: list[Row] = []
    fixed, mode, calls_used, layers_by_component = {}, {}, {}, {}
    for name in COMPONENTS:
        started = time.perf_counter()
        recorded = recording.calls[name]
        if name == "text_encoder":  # the empty prompt's ids are recorded once per prompt: replay them once
            recorded = list({tuple(c["input_ids"].flatten().tolist()): c for c in recorded}.values())
        calls = [tuple(c[n] for n in COMPONENT_IO[name][0]) for c in _spread(recorded, MAX_CALLS)]
        component_rows, fixed[name], mode[name], layers_by_component[name] = _component_rows(
            name, modules[name], specs[name], backend, calls, progress)
        rows += component_rows
        calls_used[name] = len(calls)
        timings[f"{name} ({mode[name]} mode)"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    noise = {(r.component, r.layer, r.format): r.noise for r in rows}

    def config(pick) -> tuple[dict[str, dict[str, nn.Module]], dict[str, float]]:
        """Replacements per component and summed output noise per group for ``pick(layer) -> format | None``."""
        swaps: dict[str, dict[str, nn.Module]] = {}
        by_group: dict[str, float] = {}
        for component, layers in layers_by_component.items():
            for layer in layers.values():
                fmt = pick(component, layer)
                if fmt is None or fmt["weights"] in capabilities.FLOAT_DTYPES:
                    continue
                swaps.setdefault(component, {})[layer.name] = _fake(layer, fmt, backend)
                group = group_of(component, layer.name)
                by_group[group] = by_group.get(group, 0.0) + noise[(component, layer.name, format_label(fmt))]
        return swaps, by_group

    def images_with(swaps: dict[str, dict[str, nn.Module]], desc: str) -> list[float]:
        with _all_swapped(modules, swaps):
            images = [generate(p, s) for p, s in tqdm(list(zip(prompts, seeds)), desc=desc, leave=False,
                                                      disable=not progress)]
        return _image_mse(reference_images, images)

    groups = sorted({r.group for r in rows})
    kappa: dict[str, list[float]] = {}
    for group in groups:
        ratios = []
        for level, pick_format in (("cheapest", _cheapest), ("8-bit", _widest_int)):
            swaps, by_group = config(lambda c, layer: pick_format(layer)
                                     if group_of(c, layer.name) == group else None)
            mse = images_with(swaps, f"image error: {group} {level}")
            ratios.append([m / by_group[group] if by_group.get(group) else 0.0 for m in mse])
        # geometric mean of the two levels (balanced in dB); a level with no image change gives no evidence
        kappa[group] = [math.exp(np.mean([math.log(r) for r in pair if r > 0])) if any(r > 0 for r in pair)
                        else 0.0 for pair in zip(*ratios)]
    validation = []
    for level, pick_format in (("everything cheapest", _cheapest), ("everything 8-bit", _widest_int)):
        swaps, by_group = config(lambda c, layer: pick_format(layer))
        validation.append({"configuration": level, "noise_by_group": by_group,
                           "measured_mse": images_with(swaps, f"image error: {level}")})
    timings["image error model"] = round(time.perf_counter() - started, 1)
    return Sensitivity(rows, fixed, kappa, validation, prompts, seeds, mode, calls_used, timings)


@contextmanager
def _all_swapped(modules: dict[str, nn.Module], swaps: dict[str, dict[str, nn.Module]]):
    from contextlib import ExitStack

    with ExitStack() as stack:
        for component, replacements in swaps.items():
            stack.enter_context(swapped(modules[component], replacements))
        yield


def key(checkpoint_hash: str, specs: dict, backend: str, prompts: list[str], seeds: list[int], settings,
        resolution: int) -> str:
    """Cache key: checkpoint, each component's precision and keep list, the backend's candidate formats (the
    capability table), the calibration prompts and seeds, sampler and resolution (and the toolchain: make_key)."""
    intent = {n: {"precision": s.precision, "keep": s.keep} for n, s in specs.items()}
    formats = {b: {t: capabilities.candidate_formats(backend, t, p) for t in capabilities.LAYER_TYPES}
               for b, p in [(backend, "fp32"), (backend, "fp16")]}
    return make_key("sensitivity", VERSION, checkpoint_hash, intent, backend, formats, prompts, seeds, vars(settings),
                    resolution, MAX_CALLS, LAYER_MODE_SECONDS, CAPTURE_TOKENS, CAPTURE_PIXELS)


def cached(cache: Cache, key_: str, make) -> Sensitivity:
    """The table from the stage cache, made by ``make()`` on a miss (JSON)."""
    hit = cache.get("sensitivity", key_)
    if hit is None:
        table = make()
        hit = cache.put("sensitivity", key_, lambda d: (d / "sensitivity.json").write_text(
            json.dumps(table.to_json(), indent=1) + "\n"))
    return Sensitivity.from_json(json.loads((hit / "sensitivity.json").read_text()), hit)
