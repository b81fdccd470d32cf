"""The recipe schema: pydantic models of what a recipe may say, and nothing else.

A recipe names a checkpoint, the numeric format of each component (text encoder, UNet, VAE decoder), the
targets (one bundle each) and the quality gates a build must pass. `mdship.recipe.loader` reads the YAML
(positions, `extends:`, `key=value` overrides) and turns a pydantic error into one `file:line:col` line.

The models forbid unknown keys and are strict (YAML already gives ints, floats and bools; a quoted "512" is a
mistake worth reporting, not coercing). Cross-field rules raise `_Rule` with the key path at fault, so the loader
can point at it. The backend capability rules (`mdship.capabilities`, plain data) are checked here too: a recipe
that asks a backend for a format it computes wrong (weight-only int8 on XNNPACK) never builds. Backend names
and backend options come from that table; nothing here branches on a backend.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mdship import capabilities, inputs
from mdship.capabilities import CapabilityError, legalize
from mdship.checkpoint import CheckpointRef
from mdship.errors import CheckpointError

COMPONENT_NAMES = ("text_encoder", "unet", "vae_decoder")
LAYER_TYPES = capabilities.LAYER_TYPES
DEFAULT_KEEP = ("conv_in", "conv_out", "time_embedding.*", "*norm*")
# Default component PSNR gates (dB against the fp32 eager reference), by numeric format.
DEFAULT_PSNR_DB = {"fp32": 60.0, "fp16": 35.0, "quantized": 25.0}

Float = Literal["fp32", "fp16"]
Weights = Literal[capabilities.WEIGHT_DTYPES]
Activations = Literal[capabilities.ACTIVATION_DTYPES]
Granularity = Literal[capabilities.GRANULARITIES]
Backend = Literal[capabilities.BACKENDS]
Fallback = Literal[capabilities.FALLBACK_BACKENDS]


class _Rule(ValueError):
    """A cross-field rule broken; ``path`` is relative to the model that raised it.

    pydantic keeps the exception in the error's context, so the loader can report the exact key
    (``components.unet.linear``) instead of the model the validator happens to live on.
    """

    def __init__(self, path: tuple, message: str):
        super().__init__(message)
        self.path = tuple(path)


def _none_is_default(value: Any) -> Any:
    """An empty section (``sampler:`` with everything commented out) means 'all defaults'."""
    return {} if value is None else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ----------------------------------------------------------------------------- components


class LayerSpec(_Model):
    """Numeric format of one layer type (linear, conv or attention projections) of a component.

    Unset fields resolve against the component (see ``resolved``): float weights default to the
    component's precision and compute in that same dtype; int weights default to weight-only
    (activations = precision), which only Vulkan and Core ML run correctly.
    """

    weights: Optional[Weights] = None
    granularity: Optional[Granularity] = None
    group_size: int = Field(32, ge=inputs.GROUP_SIZE_RANGE[0], le=inputs.GROUP_SIZE_RANGE[1])
    activations: Optional[Activations] = None

    @model_validator(mode="after")
    def _consistent(self) -> LayerSpec:
        int_weights = self.weights in capabilities.INT_DTYPES
        if self.activations in ("int8_dynamic", "int8_static") and not int_weights:
            raise _Rule(("activations",),
                        f"activations {self.activations} need int8 or int4 weights, weights "
                        f"are {self.weights or 'unset (float)'}; expected weights: int8 or int4")
        if self.weights == "int4" and self.granularity == "per_channel":
            raise _Rule(("granularity",), "int4 weights are quantized per group only; "
                                          "expected granularity: per_group")
        lut = self.weights in capabilities.LUT_DTYPES
        if self.granularity is not None and lut != (self.granularity == "per_tensor"):
            raise _Rule(("granularity",), f"weights {self.weights} with granularity {self.granularity}: palettized "
                                          f"(lut) weights take one look-up table per tensor and int weights per "
                                          f"channel or group; expected granularity: "
                                          f"{'per_tensor (or unset)' if lut else 'per_channel or per_group'}")
        return self

    def resolved(self, precision: str) -> LayerSpec:
        """A copy with every field filled in for a component computed in ``precision``."""
        weights = self.weights or precision
        if weights in capabilities.FLOAT_DTYPES:
            return LayerSpec.model_construct(weights=weights, granularity=None,
                                             group_size=self.group_size,
                                             activations=self.activations or weights)
        granularity = self.granularity or ("per_tensor" if weights in capabilities.LUT_DTYPES
                                           else "per_group" if weights == "int4" else "per_channel")
        return LayerSpec.model_construct(weights=weights, granularity=granularity,
                                         group_size=self.group_size,
                                         activations=self.activations or precision)

    @property
    def is_quantized(self) -> bool:
        return self.weights in capabilities.QUANTIZED_DTYPES


class ComponentSpec(_Model):
    """How one component (text_encoder, unet, vae_decoder) is computed.

    ``precision`` is the float dtype of everything not quantized; ``linear`` / ``conv`` / ``attention`` /
    ``pointwise`` / ``embedding`` refine layer types (attention follows linear's setting and pointwise, the 1x1
    convolutions, conv's, unless given: ``capabilities.LAYER_FALLBACK``; embeddings stay float unless given);
    modules whose names match a ``keep`` glob stay in float whatever the layer specs say (the first and last conv,
    the time embedding and norms are where int8 hurts most). ``keep_fp32`` globs name modules of an fp16 component
    that compute in fp32 (what the fp16 guard advises when one layer overflows fp16: that layer alone, not the whole
    component, which is ``on_fp16_overflow: fp32``).
    """

    precision: Float = "fp32"
    linear: Optional[LayerSpec] = None
    conv: Optional[LayerSpec] = None
    attention: Optional[LayerSpec] = None
    pointwise: Optional[LayerSpec] = None
    embedding: Optional[LayerSpec] = None
    keep: list[str] = Field(default_factory=lambda: list(DEFAULT_KEEP))
    keep_fp32: list[str] = Field(default_factory=list)
    on_fp16_overflow: Literal["fail", "fp32"] = "fail"
    #: per-layer overrides (what `mdship tune` writes): module-name glob -> the format of the layers it matches.
    #: See ``LayerOverrides`` below for the rules.
    layers: dict[str, LayerSpec] = Field(default_factory=dict)

    @field_validator("keep", mode="before")
    @classmethod
    def _keep_default(cls, value: Any) -> Any:
        return list(DEFAULT_KEEP) if value is None else value

    @field_validator("keep", "keep_fp32")
    @classmethod
    def _keep_patterns(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            if not pattern.strip():
                raise _Rule((i,), "empty pattern; expected a glob of module names, e.g. 'conv_in'")
        return value

    @model_validator(mode="after")
    def _fp32_inside_fp16(self) -> ComponentSpec:
        if self.keep_fp32 and self.precision != "fp16":
            raise _Rule(("keep_fp32",), f"keeps layers of an fp16 component in fp32, but precision is "
                                        f"{self.precision}; expected precision: fp16 (or no keep_fp32)")
        return self

    @field_validator("layers")
    @classmethod
    def _layer_overrides(cls, value: dict[str, LayerSpec]) -> dict[str, LayerSpec]:
        return LayerOverrides.check(value)

    @model_validator(mode="after")
    def _overrides_in_precision(self) -> ComponentSpec:
        LayerOverrides.check_precision(self.layers, self.precision)
        return self

    def override_specs(self) -> dict[str, LayerSpec]:
        """The ``layers:`` overrides, each resolved for this component's precision (pattern order kept)."""
        return {pattern: spec.resolved(self.precision) for pattern, spec in self.layers.items()}

    def layer_spec(self, layer_type: str) -> LayerSpec:
        """The resolved spec of ``layer_type`` (an unset one takes its LAYER_FALLBACK's setting)."""
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"unknown layer type {layer_type!r}; expected one of {LAYER_TYPES}")
        spec = getattr(self, layer_type)
        if spec is None and layer_type in capabilities.LAYER_FALLBACK:
            spec = getattr(self, capabilities.LAYER_FALLBACK[layer_type])
        return (spec or LayerSpec()).resolved(self.precision)

    def _all_specs(self) -> list[LayerSpec]:
        return [self.layer_spec(t) for t in LAYER_TYPES] + list(self.override_specs().values())

    @property
    def is_quantized(self) -> bool:
        return any(s.is_quantized for s in self._all_specs())

    @property
    def needs_calibration(self) -> bool:
        """Static int8 activations need calibration prompts run through the float model."""
        return any(s.activations == "int8_static" for s in self._all_specs())

    @property
    def palettized(self) -> bool:
        """Some layer's weights are look-up tables (lut8 / lut6 / lut4), by layer type or by override."""
        return any(s.weights in capabilities.LUT_DTYPES for s in self._all_specs())

    @property
    def uses_fp16(self) -> bool:
        return self.precision == "fp16" or any(
            self.layer_spec(t).weights == "fp16" for t in LAYER_TYPES)


class LoraAdapter(_Model):
    """A LoRA adapter merged into a component's weights before calibration and quantization (mdship.lora)."""

    path: str = Field(min_length=1)  # a .safetensors file, relative to the working directory
    scale: float = Field(1.0, ge=-10, le=10, allow_inf_nan=False)
    target: Literal["unet", "text_encoder"] = "unet"

    @field_validator("path")
    @classmethod
    def _safetensors(cls, value: str) -> str:
        if not value.lower().endswith(".safetensors"):
            raise _Rule((), f"{value!r} is not a .safetensors file; expected a LoRA adapter in safetensors "
                            f"(pickle formats are not loaded)")
        return value

class LayerOverrides:
    """The rules of a component's ``layers:`` map (per-layer overrides), in one place.

    * A key is a module-name glob (fnmatch), matched like ``keep:`` against the layer's qualified name inside the
      component or any dotted tail of it: ``mid_transformer.layers.0.ff.proj_in``, ``*.cross_attn.to_kv``.
    * A value is a full layer spec, resolved against the component's precision like ``linear:`` or ``conv:``; it
      does not inherit from the layer type's spec (a reviewer reads one line and knows the format).
    * A matching pattern decides the layer's format over the layer type's spec; ``keep:`` still wins (a kept
      layer stays float). A layer matched by two patterns is an error, so the order of the keys means nothing.
    * Float weights must be the component's precision (a layer cannot compute in another float dtype than its
      component: ``fp32`` in an fp32 component means "leave this layer float").
    * Checked when the recipe loads: the capability table must allow the format for at least one layer type on
      every target. Checked when the build plans the component: every pattern must match a layer, the format must
      be legal for the type of each layer it matches, and an integer format must quantize at least one of them.
    """

    @staticmethod
    def check(value: dict[str, LayerSpec]) -> dict[str, LayerSpec]:
        for pattern in value:
            if not pattern.strip():
                raise _Rule((pattern,), "empty pattern; expected a module-name glob, e.g. "
                                        "'mid_transformer.layers.0.ff.proj_in'")
            if pattern != pattern.strip() or any(c.isspace() for c in pattern):
                raise _Rule((pattern,), f"{pattern!r} contains white space; expected a module-name glob "
                                        f"(module names have none)")
        return value

    @staticmethod
    def check_precision(value: dict[str, LayerSpec], precision: str) -> None:
        for pattern, spec in value.items():
            if spec.weights in capabilities.FLOAT_DTYPES and spec.weights != precision:
                raise _Rule(("layers", pattern, "weights"),
                            f"{spec.weights} in an {precision} component is not a per-layer format (a component "
                            f"computes in one float precision); expected {precision} (leave the layer float), "
                            f"int8 or int4")
            if spec.activations in capabilities.FLOAT_DTYPES and spec.activations != precision:
                raise _Rule(("layers", pattern, "activations"),
                            f"{spec.activations} in an {precision} component is not a per-layer format; expected "
                            f"{precision}, int8_dynamic or int8_static (as the backend allows)")


class Components(_Model):
    text_encoder: Optional[ComponentSpec] = None
    unet: Optional[ComponentSpec] = None
    vae_decoder: Optional[ComponentSpec] = None


# ----------------------------------------------------------------------------- sampler, targets


class Sampler(_Model):
    """Sampling settings; null everywhere means 'what the checkpoint's scheduler says'."""

    kind: Optional[Literal["ddim", "one_step"]] = None
    steps: Optional[int] = Field(None, ge=1, le=inputs.MAX_STEPS)
    guidance: Optional[float] = Field(None, ge=inputs.GUIDANCE_RANGE[0], le=inputs.GUIDANCE_RANGE[1],
                                      allow_inf_nan=False)
    guidance_mode: Literal["batch2", "two_calls", "auto"] = "auto"
    #: every guidance mode the bundle's UNet serves (one program method per mode and resolution; the UNet batch is
    #: 2 for batch2, 1 for two_calls and for no guidance). Null: guidance_mode alone.
    guidance_modes: Optional[list[Literal["batch2", "two_calls", "auto"]]] = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_step(self) -> Sampler:
        # A one-step (DiffusionGAN / UFOGen) generator is evaluated once and has no CFG pass.
        if self.kind == "one_step":
            if self.steps not in (None, 1):
                raise _Rule(("steps",), f"kind one_step runs 1 step, not {self.steps}; "
                                        f"expected steps: 1 or null")
            if self.guidance not in (None, 1.0):
                raise _Rule(("guidance",), "kind one_step has no classifier-free guidance "
                                           "pass; expected guidance: 1.0 or null")
        return self


class CoreMLOptions(_Model):
    compute_units: Literal["all", "cpu_and_gpu", "cpu_and_ne", "cpu_only"] = "all"
    minimum_deployment_target: Literal["iOS16", "iOS17", "iOS18"] = "iOS18"
    compute_precision: Float = "fp16"
    emit_mlpackage: bool = False


class VulkanOptions(_Model):
    force_fp16: bool = True


_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Target(_Model):
    """One bundle to build: a backend, its options, and an optional fallback delegate.

    ``fallback: [xnnpack]`` hands ops the main delegate rejects to XNNPACK instead of portable
    kernels; XNNPACK must then also be able to run the component specs (it may receive any layer).
    """

    name: Optional[str] = None
    backend: Backend
    fallback: list[Fallback] = Field(default_factory=list)
    # Backend options: a field named after its backend (capabilities.BACKENDS), given only with that backend.
    coreml: Optional[CoreMLOptions] = None
    vulkan: Optional[VulkanOptions] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _TARGET_NAME.match(value):
            raise _Rule((), f"{value!r} cannot name the output folder; expected letters, digits, "
                            f"'.', '_' or '-', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _options_match_backend(self) -> Target:
        options = [b for b in capabilities.BACKENDS if b in type(self).model_fields]
        for option in options:
            if getattr(self, option) is not None and self.backend != option:
                raise _Rule((option,), f"{option} options are given for backend {self.backend}; "
                                       f"expected them only with backend: {option}")
        if self.fallback and not capabilities.FALLBACKS[self.backend]:
            takes = [b for b, f in capabilities.FALLBACKS.items() if f]
            raise _Rule(("fallback",), f"backend {self.backend} takes no fallback; expected "
                                       f"fallback only for {' or '.join(takes)}")
        if len(set(self.fallback)) != len(self.fallback):
            raise _Rule(("fallback",), "a fallback is listed twice; expected each once")
        # Fill in defaults so builders read target.name and the backend's options without None checks.
        if self.name is None:
            self.name = self.backend
        if self.backend in options and getattr(self, self.backend) is None:
            setattr(self, self.backend, _option_model(self.backend)())
        return self

    @property
    def options(self) -> Optional[BaseModel]:
        """The options of this target's backend (CoreMLOptions, VulkanOptions), None when it has none."""
        return getattr(self, self.backend, None)


def _option_model(backend: str) -> type[BaseModel]:
    annotation = Target.model_fields[backend].annotation
    return next(a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
                and issubclass(a, BaseModel))


# ----------------------------------------------------------------------------- gates, calibration


class Gates(_Model):
    """Quality and coverage gates; null component PSNR means 'by format' (see ``DEFAULT_PSNR_DB``)."""

    component_psnr_db: Optional[float] = Field(None, gt=0, le=200, allow_inf_nan=False)
    image_psnr_db: Optional[float] = Field(None, gt=0, le=200, allow_inf_nan=False)
    image_ssim: Optional[float] = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    # the least share of each component's FLOPs that must run in a delegate (mdship.coverage); 1.0 also asks the
    # delegate to take the whole graph or fail at lowering (Core ML lower_full_graph)
    delegated_flops_share: Optional[float] = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)


class Calibration(_Model):
    """Prompt files (relative to the working directory) for static-int8 calibration and eval."""

    prompts: str = Field("calibration/general-calib.txt", min_length=1)
    eval_prompts: str = Field("calibration/general-eval.txt", min_length=1)
    num_prompts: int = Field(8, ge=1, le=10_000)
    num_eval_prompts: int = Field(4, ge=1, le=10_000)


# ----------------------------------------------------------------------------- recipe


class Recipe(_Model):
    """A validated recipe. Build it with ``load_recipe``; all cross-field rules hold."""

    description: str = ""
    extends: list[str] = Field(default_factory=list)  # resolved chain, for provenance only
    checkpoint: str
    output: str = Field(min_length=1)
    resolution: Optional[int] = None
    #: every image size the bundle serves, as methods of the same programs (weights stored once). Null: resolution.
    resolutions: Optional[list[int]] = Field(None, min_length=1, max_length=8)
    sampler: Sampler = Field(default_factory=Sampler)
    components: Components = Field(default_factory=Components)
    targets: list[Target] = Field(min_length=1)
    gates: Gates = Field(default_factory=Gates)
    calibration: Calibration = Field(default_factory=Calibration)
    lora: list[LoraAdapter] = Field(default_factory=list)

    _source: Optional[Path] = PrivateAttr(default=None)

    @field_validator("sampler", "components", "gates", "calibration", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        return _none_is_default(value)

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        value = value.strip()
        if "\n" in value:
            raise _Rule((), "spans several lines; expected one line (shown by mdship ls)")
        return value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str) -> str:
        try:
            CheckpointRef.parse(value)
        except CheckpointError as exc:
            raise _Rule((), str(exc)) from None
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and not (32 <= value <= 1024 and value % 32 == 0):
            raise _Rule((), f"{value} px is not a multiple of 32 in 32..1024; "
                            f"expected e.g. 256 or 512 (null = checkpoint default)")
        return value

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        for i, px in enumerate(value or []):
            if not (32 <= px <= 1024 and px % 32 == 0):
                raise _Rule((i,), f"{px} px is not a multiple of 32 in 32..1024; expected e.g. [512, 384]")
        if value and len(set(value)) != len(value):
            raise _Rule((), "a resolution is listed twice; expected each once")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Recipe:
        seen: dict[str, int] = {}
        for i, target in enumerate(self.targets):
            if target.name in seen:
                raise _Rule(("targets", i, "name"),
                            f"target name '{target.name}' is already used by "
                            f"targets[{seen[target.name]}]; expected unique names "
                            f"(set name: on one of them)")
            seen[target.name] = i

        if self.resolutions and self.resolution is not None and self.resolution not in self.resolutions:
            raise _Rule(("resolution",), f"{self.resolution} px is not among resolutions {self.resolutions}; "
                                         f"expected the default size to be one the bundle serves")
        several = len(self.resolutions or []) > 1 or len(self.sampler.guidance_modes or []) > 1
        for i, target in enumerate(self.targets):  # several methods: a Core ML multifunction model (iOS 18)
            if several and target.coreml and target.coreml.minimum_deployment_target != "iOS18":
                raise _Rule(("targets", i, target.backend, "minimum_deployment_target"),
                            f"{target.coreml.minimum_deployment_target} cannot load a bundle with several sizes or "
                            f"guidance modes (one Core ML multifunction model, iOS 18 / macOS 15); expected iOS18, or "
                            f"one size and mode")
        modes = [("guidance_mode", self.sampler.guidance_mode)] + [
            (("guidance_modes", k), m) for k, m in enumerate(self.sampler.guidance_modes or [])]
        for i, target in enumerate(self.targets):
            allowed = capabilities.GUIDANCE_MODES[target.backend]
            for key, mode in modes:
                if mode not in ("auto", *allowed):
                    why = capabilities.GUIDANCE_NOTES.get(target.backend, "not supported")
                    raise _Rule(("sampler", *(key if isinstance(key, tuple) else (key,))),
                                f"{mode} is not supported by targets[{i}] ({target.backend}): {why}; "
                                f"expected {' or '.join(('auto', *allowed))}")

        for i, target in enumerate(self.targets):
            ios = getattr(target.options, "minimum_deployment_target", None)
            for name in COMPONENT_NAMES:
                spec = self.component(name)
                try:
                    legalize(target.backend, name, spec, minimum_deployment_target=ios)
                except CapabilityError as exc:
                    raise _Rule(self._capability_path(i, name, exc), str(exc)) from None
                refused = capabilities.KEEP_FP32_REFUSALS.get(target.backend, {})
                bad = [t for t in LAYER_TYPES if spec.layer_spec(t).weights in refused]
                if spec.keep_fp32 and bad:
                    w = spec.layer_spec(bad[0]).weights
                    raise _Rule(("components", name, "keep_fp32"),
                                f"{target.backend}: keep_fp32 with {bad[0]} weights {w} is not supported: "
                                f"{refused[w]}; expected keep_fp32 on a component without {w} weights, or "
                                f"on_fp16_overflow: fp32")
                for fallback in target.fallback:
                    try:
                        legalize(fallback, name, spec)
                    except CapabilityError as exc:
                        raise _Rule(("targets", i, "fallback"),
                                    f"ops {target.backend} rejects go to {fallback}, which cannot "
                                    f"run components.{name} ({exc}); or remove the fallback"
                                    ) from None
        return self

    def _capability_path(self, target_index: int, component: str, exc: CapabilityError) -> tuple:
        if exc.field == "minimum_deployment_target":  # a target option, not a component key
            return ("targets", target_index, self.targets[target_index].backend, exc.field)
        if exc.pattern is not None:  # a per-layer override
            return ("components", component, "layers", exc.pattern) + ((exc.field,) if exc.field else ())
        if exc.field == "precision" or exc.layer is None:
            return ("components", component, "precision")
        return ("components", component, exc.layer) + ((exc.field,) if exc.field else ())

    # ------------------------------------------------------------------ helpers for builders

    @property
    def source(self) -> Optional[Path]:
        """The file this recipe was loaded from (None when built in Python)."""
        return self._source

    @property
    def name(self) -> str:
        """The recipe's name in manifests and reports: its file name without .yaml."""
        return self._source.stem if self._source else "recipe"

    def component(self, name: str) -> ComponentSpec:
        """The spec of component ``name`` with defaults (fp32 everywhere) when not given."""
        if name not in COMPONENT_NAMES:
            raise ValueError(f"unknown component {name!r}; expected one of {COMPONENT_NAMES}")
        return getattr(self.components, name) or ComponentSpec()

    def gate_for(self, component: str, computes_fp16: bool = False) -> float:
        """The PSNR gate (dB) for ``component``: the recipe's value, else by numeric format.

        ``computes_fp16``: the target's delegate computes float layers in fp16 whatever the component
        precision (the backend says: Vulkan force_fp16, Core ML compute_precision fp16); float components then
        get the fp16 gate.
        """
        if self.gates.component_psnr_db is not None:
            return self.gates.component_psnr_db
        spec = self.component(component)
        if spec.is_quantized:
            return DEFAULT_PSNR_DB["quantized"]
        if spec.uses_fp16 or computes_fp16:
            return DEFAULT_PSNR_DB["fp16"]
        return DEFAULT_PSNR_DB["fp32"]

    def canonical(self) -> dict:
        """The resolved recipe as plain data: defaults filled, layer specs resolved.

        Two recipes that mean the same build (one spelling out a default, one not) give the same
        data, hence the same hash. ``output``, ``description`` and ``extends`` do not change the
        build and are left out.
        """
        data = self.model_dump(mode="json", exclude={"output", "description", "extends"})
        components = {}
        for name in COMPONENT_NAMES:
            spec = self.component(name)
            entry = spec.model_dump(mode="json")
            for layer in LAYER_TYPES:
                entry[layer] = spec.layer_spec(layer).model_dump(mode="json")
            entry["layers"] = {p: s.model_dump(mode="json") for p, s in spec.override_specs().items()}
            components[name] = entry
        data["components"] = components
        return data

    def recipe_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved recipe (stable across key order)."""
        return _sha256(self.canonical())


def _sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

