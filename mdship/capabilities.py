"""What each backend can compute correctly: the one table recipe validation checks against.

A recipe says *what* numeric format each layer type of each component should have (weights,
granularity, activations). Whether a backend can run that format is not a matter of taste: some
combinations lower without any error and then compute garbage. The toolchain facts behind this
table (see docs / shared toolchain notes, checked on executorch 1.5.1 + torchao 0.18):

* XNNPACK claims torchao weight-only int8/int4 linears (``IntxWeightOnlyConfig``) and then returns
  results that are off by 1e3..1e6, silently. Weight-only quantization is therefore refused on
  XNNPACK; its integer paths are dynamic int8 activations (torchao
  ``Int8DynamicActivationIntxWeightConfig``: 8da8w / 8da4w, linear only) and static int8 (PT2E
  ``XNNPACKQuantizer``, per-channel, calibrated; the only quantized conv path).
* PT2E *dynamic* int8 conv lowers but fails at run time on the real UNet and decoder ("Propagating input shapes
  failed", re-tested on ExecuTorch 1.5.1; a small conv stack runs): it has no row here.
* Vulkan quantizes linear weights only (int8 per-channel, int4 per-group); convs stay float.
* Core ML takes weight-only int8/int4 (per-channel or per-block) on linear and conv; int4 and
  per-block need ``minimum_deployment_target`` iOS18, and quantized activations are not offered
  (CoreMLQuantizer int8 broke on the UNet's integer timestep path). It also takes k-means palettized weights
  (``lut8`` / ``lut6`` / ``lut4``: one look-up table of 2^n values per tensor, coremltools' ``OpPalettizerConfig``).
* Some Core ML formats compute wrong or fail to load on the Neural Engine in published reports
  (``DEVICE_CAVEATS``): such a component is labelled "ANE-unverified" in ``mdship validate`` and in the manifest
  when the target's compute units include the Neural Engine.
* ``portable`` is the undelegated reference target: fp32 only.
* ``pointwise`` (1x1 convolutions, groups 1) follow ``conv`` unless given. On XNNPACK they may also take dynamic
  int8 activations with int8 / int4 weights: the quantize stage rewrites each as a Linear over channels-last
  (mdship.rewrites.PointwiseAsLinear), which torchao's 8da8w / 8da4w then quantize. That reaches the UNet's 1x1
  convolutions (7% of its parameters), which no XNNPACK int4 conv path does.
* ``embedding`` (the text encoder's token and position tables) stays float unless given: weight-only int8 (per row)
  or int4 (per group). On XNNPACK the dequantize + gather becomes ExecuTorch's quantized embedding kernels
  (``embedding_byte`` / ``embedding_4bit``) on the CPU; Core ML takes it into its program as constexpr weights.
  Vulkan lowers it too, but nothing here can check its kernels, so it is refused there.

The table is data (``CAPABILITY_TABLE``) so the README renders it with ``capability_markdown()``
and ``legalize()`` names the legal alternatives in its refusals. "attention" means the attention
projections (q, shared k/v, out): they are linear layers and follow the linear rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKENDS = ("xnnpack", "vulkan", "coreml", "portable")
LAYER_TYPES = ("linear", "conv", "attention", "pointwise", "embedding")
FLOAT_DTYPES = ("fp32", "fp16")
INT_DTYPES = ("int8", "int4")
#: k-means palettized weights: each weight tensor holds 2^n distinct values (a look-up table) and n-bit indices
LUT_DTYPES = ("lut8", "lut6", "lut4")
QUANTIZED_DTYPES = INT_DTYPES + LUT_DTYPES
WEIGHT_DTYPES = FLOAT_DTYPES + QUANTIZED_DTYPES
ACTIVATION_DTYPES = FLOAT_DTYPES + ("int8_dynamic", "int8_static")
GRANULARITIES = ("per_channel", "per_group", "per_tensor")  # per_tensor: palettized weights only
_INT_GRANULARITIES = ("per_channel", "per_group")
#: bits per weight of each quantized dtype
BITS = {"int8": 8, "int4": 4, "lut8": 8, "lut6": 6, "lut4": 4}
IOS_TARGETS = ("iOS16", "iOS17", "iOS18")

_LINEAR = ("linear", "attention")
_CONV = ("conv", "pointwise")
_ALL = ("linear", "conv", "attention", "pointwise")
_EMBEDDING = ("embedding",)
_ANY = _ALL + _EMBEDDING

#: a layer type a recipe leaves unset takes this one's setting (attention projections are linears, 1x1 convs convs)
LAYER_FALLBACK = {"attention": "linear", "pointwise": "conv"}


@dataclass(frozen=True)
class Support:
    """One legal way to run a layer type on a backend."""

    backend: str
    layers: tuple[str, ...]
    weights: tuple[str, ...]
    activations: tuple[str, ...]
    granularity: tuple[str, ...] = ()  # empty for float weights
    group_multiple: int | None = None  # per_group group_size must be a multiple of this
    how: str = ""  # the toolchain path that implements it
    min_ios: str | None = None  # Core ML minimum_deployment_target needed
    #: a known device-side problem the build cannot check here: the row stays legal for a recipe written by hand,
    #: but `mdship tune` never proposes it (`candidate_formats`)
    caveat: str = ""

    def describe(self) -> str:
        text = f"weights {'/'.join(self.weights)}"
        if self.granularity:
            text += f" {'/'.join(self.granularity)}"
        if self.group_multiple:
            text += f" (group_size multiple of {self.group_multiple})"
        text += f" + activations {'/'.join(self.activations)}"
        if self.how:
            text += f" [{self.how}]"
        if self.min_ios:
            text += f" (needs {self.min_ios}+)"
        return text


def _float(backend: str, layers: tuple[str, ...]) -> list[Support]:
    # Float weights compute in their own dtype: fp16 weights with fp32 activations is not a format.
    return [
        Support(backend, layers, ("fp32",), ("fp32",), how="float"),
        Support(backend, layers, ("fp16",), ("fp16",), how="float"),
    ]


_ANE_PER_BLOCK = ("per-block weights lower to constexpr_blockwise_shift_scale, reported silently wrong on the Neural "
                  "Engine (apple/coreai-models#279) and crashing MPSGraph with an fp16 scale (apple/coremltools#2688); "
                  "unverified on a device")

CAPABILITY_TABLE: tuple[Support, ...] = (
    # XNNPACK (Android / iOS CPU)
    *_float("xnnpack", _ANY),
    Support("xnnpack", _LINEAR, ("int8",), ("int8_dynamic",), _INT_GRANULARITIES, 32,
            how="8da8w, torchao"),
    Support("xnnpack", _LINEAR, ("int4",), ("int8_dynamic",), ("per_group",), 32,
            how="8da4w, torchao"),
    Support("xnnpack", ("pointwise",), ("int8",), ("int8_dynamic",), _INT_GRANULARITIES, 32,
            how="8da8w, torchao, as a Linear (export rewrite)"),
    Support("xnnpack", ("pointwise",), ("int4",), ("int8_dynamic",), ("per_group",), 32,
            how="8da4w, torchao, as a Linear (export rewrite)"),
    Support("xnnpack", _ALL, ("int8",), ("int8_static",), ("per_channel",),
            how="PT2E static, calibrated"),
    Support("xnnpack", _EMBEDDING, ("int8",), FLOAT_DTYPES, ("per_channel",),
            how="weight-only, quantized_decomposed::embedding_byte"),
    Support("xnnpack", _EMBEDDING, ("int4",), FLOAT_DTYPES, ("per_group",), 32,
            how="weight-only, quantized_decomposed::embedding_4bit"),
    # Vulkan (Android GPU)
    *_float("vulkan", _ANY),
    Support("vulkan", _LINEAR, ("int8",), FLOAT_DTYPES, ("per_channel",),
            how="weight-only"),
    Support("vulkan", _LINEAR, ("int4",), FLOAT_DTYPES, ("per_group",), 32,
            how="weight-only"),
    # Core ML (iOS / macOS)
    *_float("coreml", _ANY),
    Support("coreml", _ANY, ("int8",), FLOAT_DTYPES, ("per_channel",),
            how="weight-only", min_ios="iOS16"),
    Support("coreml", _ANY, ("int8",), FLOAT_DTYPES, ("per_group",),
            how="weight-only, per-block", min_ios="iOS18", caveat=_ANE_PER_BLOCK),
    Support("coreml", _ANY, ("int4",), FLOAT_DTYPES, ("per_group",),
            how="weight-only, per-block", min_ios="iOS18", caveat=_ANE_PER_BLOCK),
    Support("coreml", _ANY, LUT_DTYPES, FLOAT_DTYPES, ("per_tensor",),
            how="k-means palettized, coremltools OpPalettizerConfig", min_ios="iOS16"),
    # portable: reference kernels, no delegate
    Support("portable", _ANY, ("fp32",), ("fp32",), how="reference kernels"),
)

# Float compute dtypes ("precision:" of a component) each backend runs.
PRECISIONS: dict[str, tuple[str, ...]] = {
    "xnnpack": FLOAT_DTYPES,
    "vulkan": FLOAT_DTYPES,
    "coreml": FLOAT_DTYPES,
    "portable": ("fp32",),
}


# Which delegates may take what a target's main delegate rejects (`fallback:` in a recipe target).
FALLBACKS: dict[str, tuple[str, ...]] = {
    "xnnpack": (),
    "vulkan": ("xnnpack",),
    "coreml": ("xnnpack",),
    "portable": (),
}
FALLBACK_BACKENDS = tuple(sorted({f for fs in FALLBACKS.values() for f in fs}))

# Classifier-free guidance: 'batch2' runs cond + uncond as one batch-2 call, 'two_calls' as two
# batch-1 calls. The first mode listed is what `guidance_mode: auto` means on that backend. Vulkan
# delegates conv only at batch 1, so batch2 would leave convs on CPU.
GUIDANCE_MODES: dict[str, tuple[str, ...]] = {
    "xnnpack": ("batch2", "two_calls"),
    "vulkan": ("two_calls",),
    "coreml": ("batch2", "two_calls"),
    "portable": ("batch2", "two_calls"),
}
GUIDANCE_NOTES: dict[str, str] = {
    "vulkan": "Vulkan delegates conv only at batch 1, so guidance runs as two batch-1 calls",
}


@dataclass(frozen=True)
class DeviceCaveat:
    """A format that compiles and simulates fine here but has a published failure on a device unit: components that
    use it are labelled (``label``) in ``mdship validate`` and the manifest. It applies to ``backend`` targets whose
    options match ``when`` (option -> the values it applies to) and, with ``min_ios``, from that deployment target."""

    backend: str
    weights: tuple[str, ...]
    granularity: tuple[str, ...]
    label: str
    reason: str
    when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    min_ios: str | None = None


#: Core ML compute units that may place work on the Neural Engine
_ANE = (("compute_units", ("all", "cpu_and_ne")),)

DEVICE_CAVEATS: tuple[DeviceCaveat, ...] = (
    DeviceCaveat("coreml", ("int8",), ("per_group",), "ANE-unverified",
                 "per-block int8 weights compute wrong on the Neural Engine (cosine 0.37 against 0.999 on the GPU, "
                 "iPhone 16 Pro Max; apple/coreai-models#279)", _ANE),
    DeviceCaveat("coreml", ("int4",), ("per_group",), "ANE-unverified",
                 "4-bit weights with an iOS18 target (constexpr_blockwise_shift_scale, fp16 scale) crash at Neural "
                 "Engine load ('mps.dequantize' verification; apple/coremltools#2688)", _ANE, min_ios="iOS18"),
    DeviceCaveat("coreml", ("lut4",), ("per_tensor",), "ANE-unverified",
                 "4-bit k-means palettized weights (OpPalettizerConfig nbits=4, per_tensor) with an iOS18 target are "
                 "reported to crash at Neural Engine load ('mps.dequantize' verification; apple/coremltools#2688) and "
                 "to compute wrong when palettized by coremltools 9.0 (apple/coremltools#2716)", _ANE,
                 min_ios="iOS18"),
)


def device_caveats(backend: str, component_spec: Any, options: dict | None) -> list[str]:
    """The caveat lines (``DEVICE_CAVEATS``) of one component on a target: '<label>: <layer types> weights <format>:
    <reason>'. ``options`` are the target's backend options (a dict, e.g. compute_units)."""
    options = options or {}
    found: dict[tuple, list[str]] = {}
    for layer in LAYER_TYPES:
        spec = component_spec.layer_spec(layer)
        for c in DEVICE_CAVEATS:
            if (c.backend == backend and spec.weights in c.weights and spec.granularity in c.granularity
                    and all(options.get(k) in values for k, values in c.when)
                    and (c.min_ios is None or _ios_number(options.get("minimum_deployment_target") or "iOS0")
                         >= _ios_number(c.min_ios))):
                found.setdefault((c.label, spec.weights, spec.granularity, c.reason), []).append(layer)
    return [f"{label}: {', '.join(layers)} weights {w} {g}: {reason}"
            for (label, w, g, reason), layers in found.items()]


def guidance_mode(recipe_mode: str, backend: str) -> str:
    """The guidance mode a target runs: the recipe's, or for ``auto`` the backend's first listed mode."""
    return GUIDANCE_MODES[backend][0] if recipe_mode == "auto" else recipe_mode


@dataclass(frozen=True)
class Refusal:
    """Why a tempting combination is refused (shown in the error, not only 'not supported')."""

    backend: str
    layers: tuple[str, ...]
    weights: tuple[str, ...]
    activations: tuple[str, ...]
    reason: str


REFUSALS: tuple[Refusal, ...] = (
    Refusal("xnnpack", _LINEAR, INT_DTYPES, FLOAT_DTYPES,
            "XNNPACK claims weight-only int8/int4 linears and computes garbage without an error"),
    Refusal("xnnpack", _CONV, INT_DTYPES, FLOAT_DTYPES,
            "weight-only conv does not lower on XNNPACK "
            "(missing out variant of dequantize_affine)"),
    Refusal("xnnpack", ("conv",), ("int8", "int4"), ("int8_dynamic",),
            "PT2E dynamic int8 conv lowers, then fails at run time on the MobileDiffusion UNet and decoder "
            "(XNNPACK: 'Propagating input shapes failed', ExecuTorch 1.5.1; tests/backends/test_xnnpack.py); "
            "use int8_static (PT2E, calibrated), or int8_dynamic on pointwise (1x1) convs"),
    Refusal("xnnpack", ("conv",), ("int4",), ("int8_static",), "XNNPACK has no int4 conv"),
    Refusal("xnnpack", _EMBEDDING, INT_DTYPES, ("int8_dynamic", "int8_static"),
            "an embedding is a table lookup: its weights are quantized, not its activations"),
    Refusal("xnnpack", _ALL, ("int4",), ("int8_static",),
            "static int8 (PT2E) quantizes weights to int8 only"),
    Refusal("vulkan", _ALL, INT_DTYPES, ("int8_dynamic", "int8_static"),
            "the Vulkan delegate has no quantized-activation path"),
    Refusal("vulkan", _CONV, INT_DTYPES, FLOAT_DTYPES,
            "only linear layers can be quantized for Vulkan, convs stay fp16/fp32"),
    Refusal("vulkan", _EMBEDDING, INT_DTYPES, ACTIVATION_DTYPES,
            "Vulkan lowers a quantized embedding, but no Vulkan runtime here can check its kernels: embeddings "
            "stay float"),
    Refusal("xnnpack", _ANY, LUT_DTYPES, ACTIVATION_DTYPES,
            "palettized (look-up table) weights are a Core ML format; XNNPACK has no look-up-table kernels"),
    Refusal("vulkan", _ANY, LUT_DTYPES, ACTIVATION_DTYPES,
            "palettized (look-up table) weights are a Core ML format; the Vulkan delegate has no look-up-table "
            "kernels"),
    Refusal("coreml", _ALL, QUANTIZED_DTYPES, ("int8_dynamic", "int8_static"),
            "mdship offers weight-only quantization on Core ML (CoreMLQuantizer int8 activations "
            "broke on the UNet's timestep path)"),
    Refusal("portable", _ANY, WEIGHT_DTYPES, ACTIVATION_DTYPES,
            "the portable reference target runs fp32 only"),
)


#: `keep_fp32:` (layers computed in fp32 inside an fp16 component) needs a program exported in fp16 with fp32 islands
#: and a delegate that computes each op in the program's dtype; weight formats that cannot be lowered that way, per
#: backend: weights -> why
KEEP_FP32_REFUSALS: dict[str, dict[str, str]] = {
    "vulkan": {"int4": "ExecuTorch 1.5.1's Vulkan FusePatternsPass re-traces its fused int4 linear (linear_q4gsw) with "
                       "an fp32 result in an fp16 program, and the next fp16 op fails on the dtype mismatch"},
}


class CapabilityError(ValueError):
    """A component spec a backend cannot run correctly.

    ``layer`` is the layer type at fault (None for the component's ``precision``) and ``field`` the
    key inside it (``granularity``, ``group_size``, ``minimum_deployment_target``) when the fault is
    that narrow, so the recipe loader can point at the exact key.
    """

    def __init__(self, message: str, *, backend: str, component: str,
                 layer: str | None = None, field: str | None = None, pattern: str | None = None):
        super().__init__(message)
        self.backend = backend
        self.component = component
        self.layer = layer
        self.field = field
        #: the `layers:` override at fault (its module-name glob), when the fault is in one
        self.pattern = pattern


def supports(backend: str, layer: str) -> list[Support]:
    """The rows of ``CAPABILITY_TABLE`` for one backend and layer type."""
    return [s for s in CAPABILITY_TABLE if s.backend == backend and layer in s.layers]


def _refusal_reason(backend: str, layer: str, weights: str, activations: str) -> str:
    for r in REFUSALS:
        if r.backend == backend and layer in r.layers and weights in r.weights \
                and activations in r.activations:
            return r.reason
    return "no toolchain path runs this combination correctly"


def _ios_number(target: str) -> int:
    return int(target.removeprefix("iOS"))


def legalize(backend: str, component_name: str, component_spec: Any, *,
             minimum_deployment_target: str | None = None) -> None:
    """Raise CapabilityError unless ``backend`` runs every layer of ``component_spec`` correctly.

    ``component_spec`` is a recipe ``ComponentSpec`` (anything with ``precision`` and
    ``layer_spec(layer_type)`` returning resolved weights / granularity / group_size / activations).
    For Core ML, pass the target's ``minimum_deployment_target`` to check int4 / per-block need.
    """
    if backend not in BACKENDS:
        raise CapabilityError(f"unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}",
                              backend=backend, component=component_name)
    precision = component_spec.precision
    if precision not in PRECISIONS[backend]:
        raise CapabilityError(
            f"{backend}: precision {precision} is not supported: "
            f"{_refusal_reason(backend, 'linear', precision, precision)}; "
            f"expected precision {' or '.join(PRECISIONS[backend])}",
            backend=backend, component=component_name, field="precision")

    for layer in LAYER_TYPES:
        check_layer(backend, component_name, layer, component_spec.layer_spec(layer),
                    minimum_deployment_target=minimum_deployment_target)
    for pattern, spec in getattr(component_spec, "override_specs", dict)().items():
        check_override(backend, component_name, pattern, spec, minimum_deployment_target=minimum_deployment_target)


def check_layer(backend: str, component_name: str, layer: str, spec: Any, *,
                minimum_deployment_target: str | None = None) -> None:
    """Raise CapabilityError unless ``backend`` runs layer type ``layer`` in the resolved format ``spec``."""
    w, a = spec.weights, spec.activations
    rows = supports(backend, layer)
    matching = [s for s in rows if w in s.weights and a in s.activations]
    if not matching:
        weight_only = " (weight-only)" if w in QUANTIZED_DTYPES and a in FLOAT_DTYPES else ""
        legal = " | ".join(s.describe() for s in rows)
        raise CapabilityError(
            f"{backend}: {layer} weights {w} with activations {a}{weight_only} is not "
            f"supported: {_refusal_reason(backend, layer, w, a)}; "
            f"expected one of (legal on {backend}): {legal}",
            backend=backend, component=component_name, layer=layer)
    if w in FLOAT_DTYPES:
        return
    by_gran = [s for s in matching if spec.granularity in s.granularity]
    if not by_gran:
        legal = sorted({g for s in matching for g in s.granularity})
        raise CapabilityError(
            f"{backend}: {layer} weights {w} {spec.granularity} with activations {a} is not "
            f"supported; expected granularity {' or '.join(legal)}",
            backend=backend, component=component_name, layer=layer, field="granularity")
    if spec.granularity == "per_group":
        multiple = by_gran[0].group_multiple
        if multiple and spec.group_size % multiple:
            raise CapabilityError(
                f"{backend}: group_size {spec.group_size} is not supported for {layer} "
                f"{w} weights; expected a multiple of {multiple}",
                backend=backend, component=component_name, layer=layer, field="group_size")
    if minimum_deployment_target:  # only rows with min_ios (Core ML) ask for one
        need = min((s.min_ios for s in by_gran if s.min_ios), key=_ios_number, default=None)
        if need and _ios_number(minimum_deployment_target) < _ios_number(need):
            raise CapabilityError(
                f"coreml: {minimum_deployment_target} cannot run {component_name}.{layer} "
                f"weights {w} {spec.granularity} (Core ML needs {need} for it); "
                f"expected minimum_deployment_target {need} or later",
                backend=backend, component=component_name, layer=layer,
                field="minimum_deployment_target")


def check_override(backend: str, component_name: str, pattern: str, spec: Any, *,
                   minimum_deployment_target: str | None = None) -> None:
    """A per-layer override (``layers: {pattern: spec}``) must be a format ``backend`` runs for at least one layer
    type: which layers the pattern matches is known only once the model is loaded (the quantize stage then checks
    each matched layer with `check_layer`)."""
    errors = []
    for layer in LAYER_TYPES:
        try:
            check_layer(backend, component_name, layer, spec, minimum_deployment_target=minimum_deployment_target)
            return
        except CapabilityError as exc:
            errors.append(exc)
    first = next((e for e in errors if e.field), errors[0])  # the narrowest fault (a key, not the whole format)
    raise CapabilityError(f"{first} (and no other layer type takes this format either)",
                          backend=backend, component=component_name, layer=first.layer,
                          field=None if first.field in (None, "precision") else first.field, pattern=pattern)


#: group sizes `mdship tune` tries for per-group integer weights (those the row's group_multiple allows)
TUNE_GROUP_SIZES = (32, 128)

#: (backend, layer types, weights, activations, why): formats `mdship tune` does not propose per layer although a
#: recipe may use them for a whole layer type
TUNE_EXCLUDED: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...], str], ...] = (
    ("xnnpack", _CONV, FLOAT_DTYPES, FLOAT_DTYPES,
     "a float convolution fed by a static int8 one does not lower (XNNPACK ChannelsLastTaggedReshapePass: "
     "'Attempting to convert non-NHWC compatible node to NHWC', ExecuTorch 1.5.1, the shapes decoder's 1x1 shortcut "
     "after an int8 upsampling conv): per layer, convolutions stay integer; keep: lists the float ones"),
    ("xnnpack", ("linear", "attention", "pointwise"), ("int8",), ("int8_static",),
     "dominated by 8da8w: the same bytes, a larger error (one static activation scale per tensor) and slower on this "
     "machine (0.14 against 0.02 ns per multiply-add for the shapes UNet's largest linear); and each layer would cost "
     "a PT2E export to measure (minutes at paper scale)"),
)


def candidate_formats(backend: str, layer: str, precision: str) -> list[dict]:
    """Every concrete format the table lets ``backend`` run for layer type ``layer`` in a component computed in
    ``precision``, as LayerSpec fields: what `mdship tune` chooses from, per layer.

    Float: the component's precision only (a layer cannot compute in another float dtype than its component).
    Integer weights: per channel where a row allows it (per group adds scale bytes for little accuracy at int8),
    else per group at each of TUNE_GROUP_SIZES the row allows; activations as the row says (a float activation
    means weight-only, computed in the component's precision). Rows with a ``caveat`` are left out, and so are the
    formats of TUNE_EXCLUDED. A layer with a single candidate has no choice: the tuner takes it as it is.
    """
    excluded = {(w, a) for b, layers, weights, acts, _ in TUNE_EXCLUDED if b == backend and layer in layers
                for w in weights for a in acts}
    found: list[dict] = [] if (precision, precision) in excluded else [
        {"weights": precision, "granularity": None, "group_size": 32, "activations": precision}]
    for s in supports(backend, layer):
        if s.caveat or not set(s.weights) & set(INT_DTYPES):
            continue
        for w in (w for w in s.weights if w in INT_DTYPES):
            for a in s.activations:
                if a in FLOAT_DTYPES and a != precision:
                    continue
                if "per_channel" in s.granularity and w != "int4":
                    grains = [("per_channel", 32)]
                else:
                    grains = [("per_group", g) for g in TUNE_GROUP_SIZES
                              if "per_group" in s.granularity and not (s.group_multiple and g % s.group_multiple)]
                for granularity, group_size in grains:
                    entry = {"weights": w, "granularity": granularity, "group_size": group_size, "activations": a}
                    if entry not in found and (w, a) not in excluded:
                        found.append(entry)
    return found


def capability_markdown() -> str:
    """The capability table as Markdown, for the README."""
    lines = [
        "| backend | layers | weights | granularity | activations | how |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in CAPABILITY_TABLE:
        gran = " / ".join(s.granularity) or "-"
        if s.group_multiple:
            gran += f" (group_size multiple of {s.group_multiple})"
        how = s.how + (f"; needs {s.min_ios}+" if s.min_ios else "")
        lines.append(f"| {s.backend} | {', '.join(s.layers)} | {' / '.join(s.weights)} | {gran} "
                     f"| {' / '.join(s.activations)} | {how} |")
    lines.append("")
    lines.append("Labelled, not refused (a published device failure; `mdship validate` and the manifest say so):")
    lines.append("")
    for c in DEVICE_CAVEATS:
        when = "".join(f", {k} {'/'.join(v)}" for k, v in c.when)
        since = f", minimum_deployment_target {c.min_ios}+" if c.min_ios else ""
        lines.append(f"- {c.label}: {c.backend}, weights {'/'.join(c.weights)} {'/'.join(c.granularity)}{when}{since}: "
                     f"{c.reason}.")
    lines.append("")
    lines.append("Refused on purpose:")
    lines.append("")
    for r in REFUSALS:
        lines.append(f"- {r.backend}, {'/'.join(r.layers)}: weights {'/'.join(r.weights)} with "
                     f"activations {'/'.join(r.activations)}: {r.reason}.")
    return "\n".join(lines) + "\n"
