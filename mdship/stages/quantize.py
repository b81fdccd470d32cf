"""Stage `quantize`: turn a component's recipe intent into quantized layers, per backend, and prove it happened.

    plan   module + ComponentSpec + backend -> Plan   (every nn.Linear / nn.Conv2d: its layer type, and whether it
                                                       is quantized, kept in float by `keep:`, or skipped because
                                                       the scheme cannot take its shape)
    run    Plan + calibration inputs       -> ExportedComponent with a `quantization` report

The toolchain paths (see mdship.capabilities for which backend takes which):

* int8_dynamic (XNNPACK, linear / attention only): torchao `Int8DynamicActivationIntxWeightConfig` (8da8w per
  channel, 8da4w / 8da8w per group) applied to the eager ProgramModule BEFORE torch.export.
* weight-only (Vulkan, Core ML): torchao `IntxWeightOnlyConfig`, also before export. Never on XNNPACK: it lowers
  without an error there and computes garbage (the capability table refuses it; `plan` re-checks).
* int8_static (XNNPACK, conv and linear): PT2E AFTER export, with the backend's own quantizer
  (`Backend.static_quantizer`), which annotates exactly the planned conv / linear layers.
* palettize (Core ML, lut8 / lut6 / lut4): each planned weight is replaced by its k-means palettized values
  (coremltools' ``OpPalettizerConfig(mode="kmeans", granularity="per_tensor")`` run through the very routine
  coremltools' palettization pass calls, ``palettize_weights.blockwise_compress``), still a float tensor of at most
  2^n distinct values. The Core ML lowering (`mdship.backends.coreml`) turns exactly those weights into
  ``constexpr_lut_to_dense`` with ``OpPalettizerConfig(mode="unique")``, which recovers the same look-up table, so
  the simulated twin computes with the weights the device will. torchao's ``CodebookWeightOnlyConfig`` (the
  ExecuTorch Core ML codebook recipe) covers Linear and Embedding only; convolutions are 10% of the UNet.

Every quantized layer is checked afterwards (a torchao tensor subclass on its weight, or a dequantize node
feeding its PT2E conv / linear); a layer that was meant to be quantized and is not raises QuantizationError, so
quantization can never silently do nothing.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from mdship import capabilities
from mdship.errors import QuantizationError, UserError
from mdship.rewrites import REWRITES, PointwiseAsLinear, is_pointwise
from mdship.stages.export import DTYPES, ExportedComponent, ProgramModule

#: linear layers that are attention projections: mdship's Attention (shared k/v) and CLIP's attention
ATTENTION_PROJECTIONS = {"to_q", "to_kv", "to_out", "q_proj", "k_proj", "v_proj", "out_proj"}

#: how each quantization method is implemented (recorded in the report)
HOW = {
    ("dynamic", "int8"): "torchao Int8DynamicActivationIntxWeightConfig (8da8w)",
    ("dynamic", "int4"): "torchao Int8DynamicActivationIntxWeightConfig (8da4w)",
    ("weight_only", "int8"): "torchao IntxWeightOnlyConfig (int8 weight-only)",
    ("weight_only", "int4"): "torchao IntxWeightOnlyConfig (int4 weight-only)",
    ("static", "int8"): "PT2E static int8 (XNNPACK quantizer config), calibrated",
    **{("palettize", w): f"coremltools OpPalettizerConfig(mode='kmeans', nbits={capabilities.BITS[w]}, "
                         f"granularity='per_tensor'), one look-up table per weight"
       for w in capabilities.LUT_DTYPES},
}


# ----------------------------------------------------------------------------------------------------- plan
@dataclass
class LayerPlan:
    name: str  # qualified module name inside the component
    layer_type: str  # linear | conv | attention | pointwise | embedding
    action: str  # quantize | keep | skip | float
    method: str | None = None  # dynamic | weight_only | static | palettize (action == quantize)
    reason: str = ""  # keep: the matching pattern; skip: why the scheme cannot take it
    spec: object = None  # the resolved LayerSpec this layer follows (its type's, or its override's)
    pattern: str | None = None  # the `layers:` override that decided its format, if one did


@dataclass
class Plan:
    component: str
    backend: str
    specs: dict  # layer type -> resolved LayerSpec (all three types)
    layers: list[LayerPlan] = field(default_factory=list)

    def names(self, method: str | None = None, layer_type: str | None = None) -> list[str]:
        """Qualified names of the layers to quantize (optionally of one method / layer type)."""
        return [lp.name for lp in self.layers if lp.action == "quantize"
                and (method is None or lp.method == method) and (layer_type is None or lp.layer_type == layer_type)]

    def groups(self, methods: tuple[str, ...]) -> list[tuple[str, object, list[str]]]:
        """(layer type, spec, names) of the layers to quantize with one of ``methods``, one entry per distinct
        (layer type, format): what one torchao ``quantize_`` call takes."""
        found: dict[tuple, tuple[str, object, list[str]]] = {}
        for lp in self.layers:
            if lp.action == "quantize" and lp.method in methods:
                key = (lp.layer_type, json.dumps(lp.spec.model_dump(mode="json"), sort_keys=True))
                found.setdefault(key, (lp.layer_type, lp.spec, []))[2].append(lp.name)
        return list(found.values())

    @property
    def quantizes(self) -> bool:
        return bool(self.names())

    def scheme(self) -> dict:
        """The resolved spec of every layer type that is quantized, with the toolchain path that implements it."""
        out = {}
        for layer_type, spec in self.specs.items():
            if not spec.is_quantized:
                continue
            method = quant_method(spec)
            entry = {"weights": spec.weights, "granularity": spec.granularity, "activations": spec.activations,
                     "method": method, "how": HOW[(method, spec.weights)]}
            if spec.granularity == "per_group":
                entry["group_size"] = spec.group_size
            out[layer_type] = entry
        return out

    def report(self) -> dict:
        """The manifest's `quantization`: `quantized` counts the layers each layer type's spec quantized;
        `overrides` (only when the recipe has `layers:`) lists, per pattern, its format and the layers it decided."""
        by_type = [lp for lp in self.layers if lp.pattern is None and lp.action == "quantize"]
        counts = {t: sum(lp.layer_type == t for lp in by_type) for t in self.specs if self.specs[t].is_quantized}
        out = {
            "scheme": self.scheme(),
            "quantized": counts,
            "kept_float": [lp.name for lp in self.layers if lp.action == "keep"],
            "skipped": [{"layer": lp.name, "reason": lp.reason} for lp in self.layers if lp.action == "skip"],
        }
        lut = {lp.name: capabilities.BITS[lp.spec.weights] for lp in self.layers
               if lp.action == "quantize" and lp.method == "palettize"}
        if lut:  # which weights the Core ML lowering stores as look-up tables (layer -> bits)
            out["palettized"] = lut
        overrides: dict[str, dict] = {}
        for lp in self.layers:
            if lp.pattern is None:
                continue
            entry = overrides.setdefault(lp.pattern, {**_spec_entry(lp.spec), "quantized": {}, "float": 0,
                                                      "layers": []})
            entry["layers"].append(lp.name)
            if lp.action == "quantize":
                entry["quantized"][lp.layer_type] = entry["quantized"].get(lp.layer_type, 0) + 1
            elif lp.action == "float":
                entry["float"] += 1
        if overrides:
            out["overrides"] = overrides
        return out


def _spec_entry(spec) -> dict:
    """A resolved spec as the report shows it (with the toolchain path when it quantizes)."""
    entry = {"weights": spec.weights, "activations": spec.activations}
    method = quant_method(spec)
    if method is not None:
        entry.update(granularity=spec.granularity, method=method, how=HOW[(method, spec.weights)])
        if spec.granularity == "per_group":
            entry["group_size"] = spec.group_size
    return entry


def quant_method(spec) -> str | None:
    """dynamic | static | weight_only for an int spec, palettize for a look-up table, None for float weights."""
    if not spec.is_quantized:
        return None
    if spec.weights in capabilities.LUT_DTYPES:
        return "palettize"
    if spec.activations == "int8_dynamic":
        return "dynamic"
    if spec.activations == "int8_static":
        return "static"
    return "weight_only"


def layer_type(parent: nn.Module | None, attr: str, module: nn.Module) -> str | None:
    """linear | attention | conv | pointwise | embedding for a quantizable module, None for anything else."""
    if isinstance(module, nn.Linear):
        if attr in ATTENTION_PROJECTIONS and parent is not None and type(parent).__name__.endswith("Attention"):
            return "attention"
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "pointwise" if is_pointwise(module) else "conv"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def layers(module: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(qualified name, layer type, module) of every nn.Linear / nn.Conv2d / nn.Embedding inside `module`."""
    parents = {name: m for name, m in module.named_modules()}
    found = []
    for name, m in module.named_modules():
        if not name:
            continue
        parent_name, _, attr = name.rpartition(".")
        kind = layer_type(parents.get(parent_name), attr, m)
        if kind is not None:
            found.append((name, kind, m))
    return found


def name_matches(name: str, pattern: str) -> bool:
    """Whether a `keep:` or `layers:` glob matches module `name`: the qualified name or any dotted tail of it."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def keep_match(name: str, patterns: list[str]) -> str | None:
    """The first `keep:` glob matching `name`, or None.

    A pattern matches the qualified name or any dotted tail of it, so `conv_in` keeps the UNet's `conv_in` and the
    decoder's `decoder.conv_in`, and `time_embedding.*` keeps `time_embedding.0`.
    """
    return next((pattern for pattern in patterns if name_matches(name, pattern)), None)


def override_match(component: str, name: str, overrides: dict) -> str | None:
    """The `layers:` pattern that matches `name` (None when none does); two matching patterns are a user error."""
    hits = [pattern for pattern in overrides if name_matches(name, pattern)]
    if len(hits) > 1:
        raise UserError(f"components.{component}.layers: layer {name} matches both {hits[0]!r} and {hits[1]!r}; "
                        f"expected each layer matched by at most one pattern (narrow one of them)")
    return hits[0] if hits else None


def shape_problem(module: nn.Module, kind: str, spec) -> str | None:
    """Why `spec` cannot quantize this layer's shape (None when it can). The backend's own limits (a group size
    multiple) are rows of the capability table, checked by `plan` before this."""
    method = quant_method(spec)
    if method == "palettize":
        entries = 1 << capabilities.BITS[spec.weights]
        n = module.weight.numel()
        return f"{n} weights, no more than the {entries} look-up-table entries" if n <= entries else None
    if kind == "embedding":
        if spec.granularity == "per_group" and module.embedding_dim % spec.group_size:
            return f"embedding_dim {module.embedding_dim} is not a multiple of group_size {spec.group_size}"
        return None
    if kind in ("linear", "attention") or (kind == "pointwise" and method == "dynamic"):
        if spec.granularity == "per_group":
            k = module.in_features if kind != "pointwise" else module.in_channels
            if k % spec.group_size:
                return f"in_features {k} is not a multiple of group_size {spec.group_size}"
        return None
    # conv
    per_group_channels = module.in_channels // module.groups
    if method == "weight_only":
        if spec.granularity == "per_group" and per_group_channels % spec.group_size:
            return (f"input channels per group {per_group_channels} is not a multiple of group_size "
                    f"{spec.group_size}")
        if per_group_channels == 1:
            return "depthwise conv: weight-only quantization would store one scale per weight"
    if method == "dynamic":
        return "dynamic int8 conv is not supported (use int8_static)"
    return None


def plan(component: str, module: nn.Module, spec, backend: str, *,
         minimum_deployment_target: str | None = None) -> Plan:
    """Classify and decide every linear / conv layer of `module` for `spec` on `backend`.

    Re-checks the capability table (a recipe object built in Python skips the loader's validation): weight-only
    on XNNPACK raises CapabilityError here as well.
    """
    capabilities.legalize(backend, component, spec, minimum_deployment_target=minimum_deployment_target)
    specs = {t: spec.layer_spec(t) for t in capabilities.LAYER_TYPES}
    overrides = spec.override_specs()
    result = Plan(component, backend, specs)
    for name, kind, m in layers(module):
        pattern = override_match(component, name, overrides)
        s = specs[kind] if pattern is None else overrides[pattern]
        if pattern is not None:
            try:
                capabilities.check_layer(backend, component, kind, s,
                                         minimum_deployment_target=minimum_deployment_target)
            except capabilities.CapabilityError as exc:
                raise UserError(f"components.{component}.layers[{pattern!r}]: matches {kind} layer {name}: {exc}; "
                                f"or narrow the pattern") from None
        if not s.is_quantized:
            result.layers.append(LayerPlan(name, kind, "float", spec=s, pattern=pattern))
            continue
        keep = keep_match(name, spec.keep)
        if keep is not None:
            result.layers.append(LayerPlan(name, kind, "keep", reason=f"keep: {keep}", spec=s, pattern=pattern))
            continue
        problem = shape_problem(m, kind, s)
        if problem is not None:
            result.layers.append(LayerPlan(name, kind, "skip", reason=problem, spec=s, pattern=pattern))
            continue
        result.layers.append(LayerPlan(name, kind, "quantize", quant_method(s), spec=s, pattern=pattern))
    for kind, s in specs.items():
        mine = [lp for lp in result.layers if lp.layer_type == kind and lp.pattern is None]
        skipped = [lp for lp in mine if lp.action == "skip"]
        if skipped and not any(lp.action == "quantize" for lp in mine):
            raise UserError(f"components.{component}.{kind}: {s.weights} {s.granularity} (group_size {s.group_size}) "
                            f"quantizes none of the {len(skipped)} {kind} layers: {skipped[0].name}: "
                            f"{skipped[0].reason}; expected a group_size that fits the layers, or {kind} left in "
                            f"float")
    for pattern, s in overrides.items():
        mine = [lp for lp in result.layers if lp.pattern == pattern]
        if not mine:
            raise UserError(f"components.{component}.layers[{pattern!r}]: matches no layer of {component} (of "
                            f"{len(result.layers)} linear / conv / embedding layers, e.g. {result.layers[0].name}); "
                            f"expected a module-name glob that matches one (mdship tune writes exact names)")
        if s.is_quantized and not any(lp.action == "quantize" for lp in mine):
            why = next((lp for lp in mine if lp.action == "skip"), mine[0])
            raise UserError(f"components.{component}.layers[{pattern!r}]: {s.weights} quantizes none of the "
                            f"{len(mine)} layer(s) it matches: {why.name}: {why.reason or 'kept float'}; expected a "
                            f"format that fits the layer, or the override removed")
    return result


# ----------------------------------------------------------------------------------------------------- torchao
def torchao_config(spec, method: str):
    from torchao.quantization import (Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, PerAxis,
                                      PerGroup)

    dtype = {"int8": torch.int8, "int4": torch.int4}[spec.weights]
    granularity = PerGroup(spec.group_size) if spec.granularity == "per_group" else PerAxis(0)
    if method == "dynamic":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity)
    if method == "weight_only":
        return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity)
    raise ValueError(f"no torchao config for method {method!r}")


def _is_torchao_quantized(module: nn.Module) -> bool:
    from torchao.utils import TorchAOBaseTensor

    return isinstance(getattr(module, "weight", None), TorchAOBaseTensor)


def apply_torchao(component: nn.Module, the_plan: Plan) -> int:
    """quantize_ the planned dynamic / weight-only layers of `component` in place; returns how many.

    Raises QuantizationError if any planned layer does not carry a quantized weight afterwards.
    """
    from torchao.quantization import quantize_

    done = 0
    for kind, spec, group in the_plan.groups(("dynamic", "weight_only")):
        method = quant_method(spec)
        names = set(group)
        if kind == "pointwise":  # torchao's dynamic configs take Linear only: each 1x1 conv becomes one
            for name in names:
                parent_name, _, attr = name.rpartition(".")
                parent = component.get_submodule(parent_name) if parent_name else component
                setattr(parent, attr, PointwiseAsLinear(getattr(parent, attr)))
            names = {f"{n}.linear" for n in names}
        quantize_(component, torchao_config(spec, method), filter_fn=lambda m, fqn, names=names: fqn in names)
        modules = dict(component.named_modules())
        missing = sorted(n for n in names if not _is_torchao_quantized(modules[n]))
        if missing:
            raise QuantizationError(f"{the_plan.component}: torchao left {len(missing)} {kind} layer(s) in float "
                                    f"that the recipe quantizes ({', '.join(missing[:5])})")
        done += len(names)
    return done


# ----------------------------------------------------------------------------------------------------- palettize
def palettized(weight: torch.Tensor, nbits: int) -> torch.Tensor:
    """``weight`` replaced by its k-means look-up-table values (2^nbits of them, one table for the tensor), computed
    by coremltools exactly as its palettization pass does for ``OpPalettizerConfig(mode="kmeans", nbits=nbits,
    granularity="per_tensor")``; same dtype and shape."""
    import logging

    from coremltools.optimize.coreml import OpPalettizerConfig
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    config = OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_tensor")
    data = weight.detach().cpu().numpy()
    quiet = logging.getLogger("coremltools")
    level, quiet.level = quiet.level, logging.ERROR  # "kmeans1d would be better" on every fp16 tensor
    try:
        params = palettize_weights.blockwise_compress(data, config.mode, config.nbits, [0] * data.ndim,
                                                      config.lut_function, config.cluster_dim,
                                                      num_kmeans_workers=config.num_kmeans_workers)
    finally:
        quiet.level = level
    if params is None:
        raise QuantizationError(f"coremltools could not palettize a weight of shape {tuple(weight.shape)}")
    dense = palettize_weights.decompress(params)
    return torch.from_numpy(dense.reshape(data.shape).astype(data.dtype))


def apply_palettization(component: nn.Module, the_plan: Plan) -> int:
    """Palettize the planned layers' weights in place (see `palettized`); returns how many. Raises QuantizationError
    if a planned weight then holds more than 2^n distinct values."""
    done = 0
    modules = dict(component.named_modules())
    for lp in the_plan.layers:
        if lp.action != "quantize" or lp.method != "palettize":
            continue
        nbits = capabilities.BITS[the_plan.specs[lp.layer_type].weights]
        weight = modules[lp.name].weight
        with torch.no_grad():
            weight.copy_(palettized(weight, nbits))
        if torch.unique(weight).numel() > 1 << nbits:
            raise QuantizationError(f"{the_plan.component}: {lp.name} holds {torch.unique(weight).numel()} distinct "
                                    f"weights after {nbits}-bit palettization")
        done += 1
    return done


# ----------------------------------------------------------------------------------------------------- PT2E
_STACK_PREFIX = re.compile(r"^(L\['self'\]\.)?(component\.)?")


def node_module(node: torch.fx.Node) -> str | None:
    """Qualified name (inside the component) of the innermost module a graph node came from."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return _STACK_PREFIX.sub("", path)


_CONV_OPS = (torch.ops.aten.conv2d.default,)
_LINEAR_OPS = (torch.ops.aten.linear.default,)


def _static_quantized_layers(graph_module: torch.fx.GraphModule) -> set[str]:
    """Names of conv / linear layers whose weight comes out of a PT2E dequantize node."""
    found = set()
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target in _CONV_OPS + _LINEAR_OPS and len(node.args) > 1:
            weight = node.args[1]
            if isinstance(weight, torch.fx.Node) and "dequantize_per_channel" in str(weight.target):
                name = node_module(node)
                if name is not None:
                    found.add(name)
    return found


def apply_static(program: torch.export.ExportedProgram, the_plan: Plan, quantizer, example_inputs: tuple,
                 calibration_inputs: list[tuple]) -> torch.export.ExportedProgram:
    """PT2E static int8 on the planned layers with the backend's quantizer: prepare, run the calibration inputs,
    convert, export again."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    names = set(the_plan.names("static"))
    if not calibration_inputs:
        raise QuantizationError(f"{the_plan.component}: static int8 needs calibration inputs, got none")
    if quantizer is None:
        raise QuantizationError(f"{the_plan.component}: the {the_plan.backend} backend has no static int8 quantizer")
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for inputs in calibration_inputs:
            prepared(*inputs)
    converted = convert_pt2e(prepared)
    missing = sorted(names - _static_quantized_layers(converted))
    if missing:
        raise QuantizationError(f"{the_plan.component}: PT2E left {len(missing)} layer(s) in float that the recipe "
                                f"quantizes to static int8 ({', '.join(missing[:5])})")
    with torch.no_grad():
        return torch.export.export(converted, example_inputs, strict=False)


# ----------------------------------------------------------------------------------------------------- stage
def quantized_module(module: nn.Module, the_plan: Plan, dtype: torch.dtype = torch.float32,
                     rewrites: tuple[str, ...] = REWRITES, keep_fp32: list[str] | None = None) -> ProgramModule:
    """The eager ProgramModule of `module` in `dtype` (the backend's `rewrites`, `keep_fp32` layers in fp32) with the
    planned torchao layers quantized.

    Static int8 layers need export + PT2E and are not in it (`run` does them; XNNPACK programs execute here anyway).
    """
    program_module = ProgramModule(module, dtype, rewrites, keep_fp32).eval()
    apply_torchao(program_module.component, the_plan)
    apply_palettization(program_module.component, the_plan)
    return program_module


def run(name: str, module: nn.Module, spec, backend, example_inputs: tuple,
        calibration_inputs: list[tuple] | None = None, *, minimum_deployment_target: str | None = None,
        dtype: torch.dtype | None = None, keep_fp32: list[str] | None = None) -> ExportedComponent:
    """Plan, quantize (torchao before export, PT2E after) and export one component; report what was done.

    ``backend`` is the target's `mdship.backends.base.Backend`; ``dtype`` the dtype the program is exported in.
    """
    the_plan = plan(name, module, spec, backend.name, minimum_deployment_target=minimum_deployment_target)
    program_module = quantized_module(module, the_plan, dtype or DTYPES[spec.precision], backend.rewrites, keep_fp32)
    with torch.no_grad():
        program = torch.export.export(program_module, example_inputs, strict=False)
    static = set(the_plan.names("static"))
    if static:
        program = apply_static(program, the_plan, backend.static_quantizer(static), example_inputs,
                               calibration_inputs or [])
    return ExportedComponent(name, program, example_inputs, spec.precision, quantization=the_plan.report(),
                             kept_fp32=program_module.kept_fp32)


# ----------------------------------------------------------------------------------------------------- one layer
class _One(nn.Module):
    """A single layer as a module of its own (named `layer`), so PT2E and torchao can take it alone."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def layer_in_format(layer: nn.Module, kind: str, spec, backend, calibration_inputs: list[torch.Tensor] = ()
                    ) -> nn.Module:
    """An eager module that computes ``layer`` (a Linear, Conv2d or Embedding of kind ``kind``) in the format
    ``spec`` the way the build quantizes it: the same torchao configs (dynamic: 8da8w / 8da4w, a 1x1 conv as
    `PointwiseAsLinear`; weight-only) and, for static int8, the backend's own PT2E quantizer on this layer alone,
    calibrated on ``calibration_inputs`` (the layer's recorded inputs). `mdship tune` swaps these into the float
    model one at a time to measure what each format costs each layer. The layer itself is not changed.

    Not modelled: a float format other than the layer's own (a component computes in one precision), and the
    other layers' quantized outputs feeding this one (measured when the tuner quantizes several layers at once).
    """
    import copy

    method = quant_method(spec)
    if method is None:
        return layer
    one = _One(copy.deepcopy(layer)).eval()
    if method == "static":
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        if not calibration_inputs:
            raise QuantizationError("static int8 needs the layer's recorded inputs to calibrate, got none")
        quantizer = backend.static_quantizer({"layer"})
        if quantizer is None:
            raise QuantizationError(f"the {backend.name} backend has no static int8 quantizer")
        x = calibration_inputs[0]
        channels = 1 if x.dim() == 4 else x.dim() - 1  # every size but the channels may differ (a crop calibrates)
        dims = {d: torch.export.Dim.AUTO for d in range(x.dim()) if d != channels}
        with torch.no_grad():
            program = torch.export.export(one, (x,), dynamic_shapes=({**dims},), strict=False)
            prepared = prepare_pt2e(program.module(), quantizer)
            for x in calibration_inputs:
                prepared(x)
            converted = convert_pt2e(prepared)
        if "layer" not in _static_quantized_layers(converted):
            raise QuantizationError(f"PT2E left the {kind} layer in float (static int8)")
        return converted
    from torchao.quantization import quantize_

    name = "layer"
    if kind == "pointwise":
        one.layer = PointwiseAsLinear(one.layer)
        name = "layer.linear"
    quantize_(one, torchao_config(spec, method), filter_fn=lambda m, fqn: fqn == name)
    if not _is_torchao_quantized(one.get_submodule(name)):
        raise QuantizationError(f"torchao left the {kind} layer in float ({spec.weights}, {method})")
    return one.layer  # the layer's own class (a model may read its .weight), its weight now quantized
