"""Recipes: the YAML files that say how to turn a checkpoint into ExecuTorch bundles.

A recipe names a checkpoint, the numeric format of each component (text encoder, UNet, VAE
decoder), the targets (XNNPACK, Vulkan, Core ML, portable) and the quality gates a build must pass.
This module is the whole schema and its loader:

* ``load_recipe(path, overrides)`` reads YAML keeping the line and column of every key, resolves
  ``extends:`` (deep merge, lists replaced), applies ``key.path=value`` overrides and validates.
* Every problem becomes one ``RecipeError`` line, ``file:line:col: key.path: what; expected what``,
  because a recipe is something a user edits by hand and a pydantic traceback does not say where.
* Validation includes the backend capability rules (``mdship.capabilities``): a recipe that
  asks a backend for a format it computes wrong (weight-only int8 on XNNPACK) never builds.

The models forbid unknown keys and are strict (YAML already gives ints, floats and bools; a
quoted "512" is a mistake worth reporting, not coercing).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, NamedTuple, Optional, get_args

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from mdship import capabilities
from mdship.capabilities import CapabilityError, legalize
from mdship.errors import RecipeError

COMPONENT_NAMES = ("text_encoder", "unet", "vae_decoder")
LAYER_TYPES = capabilities.LAYER_TYPES
CHECKPOINT_PRESETS = ("mobilediffusion", "tiny")
DEFAULT_KEEP = ("conv_in", "conv_out", "time_embedding.*", "*norm*")
# Default component PSNR gates (dB against the fp32 eager reference), by numeric format.
DEFAULT_PSNR_DB = {"fp32": 60.0, "fp16": 35.0, "quantized": 25.0}

Float = Literal["fp32", "fp16"]
Weights = Literal["fp32", "fp16", "int8", "int4"]
Activations = Literal["fp32", "fp16", "int8_dynamic", "int8_static"]
Granularity = Literal["per_channel", "per_group"]
Backend = Literal["xnnpack", "vulkan", "coreml", "portable"]


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
    group_size: int = Field(32, ge=1)
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
        return self

    def resolved(self, precision: str) -> LayerSpec:
        """A copy with every field filled in for a component computed in ``precision``."""
        weights = self.weights or precision
        if weights in capabilities.FLOAT_DTYPES:
            return LayerSpec.model_construct(weights=weights, granularity=None,
                                             group_size=self.group_size,
                                             activations=self.activations or weights)
        granularity = self.granularity or ("per_group" if weights == "int4" else "per_channel")
        return LayerSpec.model_construct(weights=weights, granularity=granularity,
                                         group_size=self.group_size,
                                         activations=self.activations or precision)

    @property
    def is_quantized(self) -> bool:
        return self.weights in capabilities.INT_DTYPES


class ComponentSpec(_Model):
    """How one component (text_encoder, unet, vae_decoder) is computed.

    ``precision`` is the float dtype of everything not quantized; ``linear`` / ``conv`` /
    ``attention`` refine layer types (attention defaults to linear's setting); modules whose names
    match a ``keep`` glob stay in float whatever the layer specs say (the first and last conv, the
    time embedding and norms are where int8 hurts most).
    """

    precision: Float = "fp32"
    linear: Optional[LayerSpec] = None
    conv: Optional[LayerSpec] = None
    attention: Optional[LayerSpec] = None
    keep: list[str] = Field(default_factory=lambda: list(DEFAULT_KEEP))
    on_fp16_overflow: Literal["fail", "fp32"] = "fail"

    @field_validator("keep", mode="before")
    @classmethod
    def _keep_default(cls, value: Any) -> Any:
        return list(DEFAULT_KEEP) if value is None else value

    @field_validator("keep")
    @classmethod
    def _keep_patterns(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            if not pattern.strip():
                raise _Rule((i,), "empty pattern; expected a glob of module names, e.g. 'conv_in'")
        return value

    def layer_spec(self, layer_type: str) -> LayerSpec:
        """The resolved spec of ``layer_type`` (attention falls back to linear's setting)."""
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"unknown layer type {layer_type!r}; expected one of {LAYER_TYPES}")
        spec = getattr(self, layer_type)
        if spec is None and layer_type == "attention":
            spec = self.linear
        return (spec or LayerSpec()).resolved(self.precision)

    @property
    def is_quantized(self) -> bool:
        return any(self.layer_spec(t).is_quantized for t in LAYER_TYPES)

    @property
    def needs_calibration(self) -> bool:
        """Static int8 activations need calibration prompts run through the float model."""
        return any(self.layer_spec(t).activations == "int8_static" for t in LAYER_TYPES)

    @property
    def uses_fp16(self) -> bool:
        return self.precision == "fp16" or any(
            self.layer_spec(t).weights == "fp16" for t in LAYER_TYPES)


class Components(_Model):
    text_encoder: Optional[ComponentSpec] = None
    unet: Optional[ComponentSpec] = None
    vae_decoder: Optional[ComponentSpec] = None


# ----------------------------------------------------------------------------- sampler, targets


class Sampler(_Model):
    """Sampling settings; null everywhere means 'what the checkpoint's scheduler says'."""

    kind: Optional[Literal["ddim", "one_step"]] = None
    steps: Optional[int] = Field(None, ge=1, le=1000)
    guidance: Optional[float] = Field(None, ge=1.0)
    guidance_mode: Literal["batch2", "two_calls", "auto"] = "auto"

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
    fallback: list[Literal["xnnpack"]] = Field(default_factory=list)
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
        for option in ("coreml", "vulkan"):
            if getattr(self, option) is not None and self.backend != option:
                raise _Rule((option,), f"{option} options are given for backend {self.backend}; "
                                       f"expected them only with backend: {option}")
        if self.fallback and self.backend in ("xnnpack", "portable"):
            raise _Rule(("fallback",), f"backend {self.backend} takes no fallback; expected "
                                       f"fallback only for vulkan or coreml")
        if len(set(self.fallback)) != len(self.fallback):
            raise _Rule(("fallback",), "a fallback is listed twice; expected each once")
        # Fill in defaults so builders read target.name / target.coreml without None checks.
        if self.name is None:
            self.name = self.backend
        if self.backend == "coreml" and self.coreml is None:
            self.coreml = CoreMLOptions()
        if self.backend == "vulkan" and self.vulkan is None:
            self.vulkan = VulkanOptions()
        return self

    @property
    def computes_fp16(self) -> bool:
        """Whether the delegate computes float layers in fp16 whatever the component precision."""
        if self.backend == "vulkan":
            return bool(self.vulkan and self.vulkan.force_fp16)
        if self.backend == "coreml":
            return bool(self.coreml and self.coreml.compute_precision == "fp16")
        return False


# ----------------------------------------------------------------------------- gates, calibration


class Gates(_Model):
    """Quality gates; null component PSNR means 'by format' (see ``DEFAULT_PSNR_DB``)."""

    component_psnr_db: Optional[float] = Field(None, gt=0)
    image_psnr_db: Optional[float] = Field(None, gt=0)
    image_ssim: Optional[float] = Field(None, ge=0.0, le=1.0)


class Calibration(_Model):
    """Prompt files (relative to the working directory) for static-int8 calibration and eval."""

    prompts: str = Field("calibration/general-calib.txt", min_length=1)
    eval_prompts: str = Field("calibration/general-eval.txt", min_length=1)
    num_prompts: int = Field(8, ge=1)
    num_eval_prompts: int = Field(4, ge=1)


# ----------------------------------------------------------------------------- recipe


class CheckpointRef(NamedTuple):
    """A parsed ``checkpoint:``: kind 'dir' (name = the path), 'builtin' or 'preset'."""

    kind: Literal["dir", "builtin", "preset"]
    name: str
    seed: Optional[int] = None


_CHECKPOINT_HELP = "a directory, 'builtin:NAME' or 'preset:mobilediffusion|tiny[@SEED]'"


def parse_checkpoint(ref: str) -> CheckpointRef:
    """Parse a checkpoint reference; raise ValueError with an 'expected' hint when malformed."""
    if not ref.strip():
        raise ValueError(f"empty checkpoint; expected {_CHECKPOINT_HELP}")
    scheme, sep, rest = ref.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]+", scheme):
        return CheckpointRef("dir", ref)  # a path ('C:\...' has a one-letter 'scheme')
    if scheme == "builtin":
        if "@" in rest:
            raise ValueError(f"{ref!r}: a '@SEED' suffix is only for preset: checkpoints; "
                             f"expected builtin:NAME")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", rest):
            raise ValueError(f"{ref!r} has no valid name; "
                             f"expected builtin:NAME, e.g. builtin:shapes")
        return CheckpointRef("builtin", rest)
    if scheme == "preset":
        name, at, seed = rest.partition("@")
        if name not in CHECKPOINT_PRESETS:
            close = difflib.get_close_matches(name, CHECKPOINT_PRESETS, n=1)
            hint = f"; did you mean 'preset:{close[0]}'?" if close else ""
            raise ValueError(f"unknown preset {name!r}; expected preset:"
                             f"{' or preset:'.join(CHECKPOINT_PRESETS)}{hint}")
        if at and not seed.isdigit():
            raise ValueError(f"{ref!r} has a bad seed {seed!r}; expected preset:{name}@INTEGER")
        return CheckpointRef("preset", name, int(seed) if at else None)
    raise ValueError(f"unknown checkpoint scheme '{scheme}:'; expected {_CHECKPOINT_HELP}")


class Recipe(_Model):
    """A validated recipe. Build it with ``load_recipe``; all cross-field rules hold."""

    description: str = ""
    extends: list[str] = Field(default_factory=list)  # resolved chain, for provenance only
    checkpoint: str
    output: str = Field(min_length=1)
    resolution: Optional[int] = None
    sampler: Sampler = Field(default_factory=Sampler)
    components: Components = Field(default_factory=Components)
    targets: list[Target] = Field(min_length=1)
    gates: Gates = Field(default_factory=Gates)
    calibration: Calibration = Field(default_factory=Calibration)

    _source: Optional[Path] = PrivateAttr(default=None)
    _overrides: tuple[str, ...] = PrivateAttr(default=())

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
            parse_checkpoint(value)
        except ValueError as exc:
            raise _Rule((), str(exc)) from None
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and not (64 <= value <= 1024 and value % 64 == 0):
            raise _Rule((), f"{value} px is not a multiple of 64 in 64..1024; "
                            f"expected e.g. 256 or 512 (null = checkpoint default)")
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

        for i, target in enumerate(self.targets):
            allowed = capabilities.GUIDANCE_MODES[target.backend]
            if self.sampler.guidance_mode not in ("auto", *allowed):
                why = capabilities.GUIDANCE_NOTES.get(target.backend, "not supported")
                raise _Rule(("sampler", "guidance_mode"),
                            f"{self.sampler.guidance_mode} is not supported by targets[{i}] "
                            f"({target.backend}): {why}; "
                            f"expected {' or '.join(('auto', *allowed))}")

        for i, target in enumerate(self.targets):
            ios = target.coreml.minimum_deployment_target if target.coreml else None
            for name in COMPONENT_NAMES:
                spec = self.component(name)
                try:
                    legalize(target.backend, name, spec, minimum_deployment_target=ios)
                except CapabilityError as exc:
                    raise _Rule(self._capability_path(i, name, exc), str(exc)) from None
                for fallback in target.fallback:
                    try:
                        legalize(fallback, name, spec)
                    except CapabilityError as exc:
                        raise _Rule(("targets", i, "fallback"),
                                    f"ops {target.backend} rejects go to {fallback}, which cannot "
                                    f"run components.{name} ({exc}); or remove the fallback"
                                    ) from None
        return self

    @staticmethod
    def _capability_path(target_index: int, component: str, exc: CapabilityError) -> tuple:
        if exc.field == "minimum_deployment_target":
            return ("targets", target_index, "coreml", "minimum_deployment_target")
        if exc.field == "precision" or exc.layer is None:
            return ("components", component, "precision")
        return ("components", component, exc.layer) + ((exc.field,) if exc.field else ())

    # ------------------------------------------------------------------ helpers for builders

    @property
    def source(self) -> Optional[Path]:
        """The file this recipe was loaded from (None when built in Python)."""
        return self._source

    @property
    def overrides(self) -> tuple[str, ...]:
        return self._overrides

    @property
    def checkpoint_ref(self) -> CheckpointRef:
        return parse_checkpoint(self.checkpoint)

    def component(self, name: str) -> ComponentSpec:
        """The spec of component ``name`` with defaults (fp32 everywhere) when not given."""
        if name not in COMPONENT_NAMES:
            raise ValueError(f"unknown component {name!r}; expected one of {COMPONENT_NAMES}")
        return getattr(self.components, name) or ComponentSpec()

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(f"no target named {name!r}; expected one of "
                       f"{[t.name for t in self.targets]}")

    def gate_for(self, component: str, target: Target | str | None = None) -> float:
        """The PSNR gate (dB) for ``component``: the recipe's value, else by numeric format.

        A target that computes in fp16 anyway (Vulkan force_fp16, Core ML compute_precision fp16)
        gets the fp16 gate for float components.
        """
        if self.gates.component_psnr_db is not None:
            return self.gates.component_psnr_db
        if isinstance(target, str):
            target = self.target(target)
        spec = self.component(component)
        if spec.is_quantized:
            return DEFAULT_PSNR_DB["quantized"]
        if spec.uses_fp16 or (target is not None and target.computes_fp16):
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
            components[name] = entry
        data["components"] = components
        return data

    def recipe_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved recipe (stable across key order)."""
        return _sha256(self.canonical())

    def section_hash(self, *keys: str) -> str:
        """sha256 of some sections only, e.g. ``section_hash('checkpoint', 'components.unet')``.

        Builders use it as a cache key for work that depends on part of the recipe.
        """
        if not keys:
            raise ValueError("section_hash needs at least one key, e.g. 'components.unet'")
        canonical = self.canonical()
        picked = {}
        for key in keys:
            node: Any = canonical
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise KeyError(f"no section {key!r} in the recipe; expected one of "
                                   f"{sorted(canonical)} (dotted for deeper keys)")
                node = node[part]
            picked[key] = node
        return _sha256(picked)


def _sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- YAML with marks


@dataclass(frozen=True)
class _Loc:
    """Where a value came from: 'file:line:col' of the value and of its key."""

    where: str
    key_where: str


Marks = dict  # key path tuple -> _Loc


class _MarkLoader(yaml.SafeLoader):
    """SafeLoader that keeps the node tree, so every key path can be mapped to its line/column."""


def _mark(display: str, mark: yaml.Mark) -> str:
    return f"{display}:{mark.line + 1}:{mark.column + 1}"


def _dotted(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + str(part))
    return out or "recipe"


_MAX_NODES = 20_000  # a recipe has a few hundred values; more means an alias bomb


def _check_duplicates(node: yaml.Node, display: str, loader: _MarkLoader, path: tuple,
                      ancestors: frozenset = frozenset(), budget: Optional[list] = None) -> None:
    """PyYAML silently keeps the last of two equal keys; in a recipe that is always a mistake.

    Also refuses recursive aliases (``&a [*a]``) and aliases that expand to a huge tree, both of
    which would otherwise hang the loader instead of giving an error.
    """
    budget = [0] if budget is None else budget
    budget[0] += 1
    if id(node) in ancestors:
        raise RecipeError(f"{_mark(display, node.start_mark)}: {_dotted(path)}: the value "
                          f"contains itself through an alias; expected a finite value")
    if budget[0] > _MAX_NODES:
        raise RecipeError(f"{_mark(display, node.start_mark)}: {_dotted(path)}: aliases expand "
                          f"the recipe beyond {_MAX_NODES} values; expected a plain recipe")
    ancestors = ancestors | {id(node)}
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # construction reports unhashable keys with their position
            if key in first:
                line = first[key].start_mark.line + 1
                raise RecipeError(f"{_mark(display, key_node.start_mark)}: "
                                  f"{_dotted(path + (key,))}: duplicate key (first set on line "
                                  f"{line}); expected each key once")
            first[key] = key_node
            _check_duplicates(value_node, display, loader, path + (key,), ancestors, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, display, loader, path + (i,), ancestors, budget)


def _collect_marks(node: yaml.Node, display: str, loader: _MarkLoader, path: tuple,
                   key_where: str, marks: Marks) -> None:
    """Record a _Loc for every key path. Collections point at their key, scalars at the value."""
    value_where = _mark(display, node.start_mark)
    collection = isinstance(node, (yaml.MappingNode, yaml.SequenceNode))
    marks[path] = _Loc(key_where if collection else value_where, key_where)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:  # merge keys are flattened by now
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise RecipeError(f"{_mark(display, key_node.start_mark)}: "
                                  f"{_dotted(path + (str(key),))}: key {key!r} is not a name; "
                                  f"expected a text key")
            _collect_marks(value_node, display, loader, path + (key,),
                           _mark(display, key_node.start_mark), marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            where = _mark(display, item.start_mark)
            _collect_marks(item, display, loader, path + (i,), where, marks)


def _missing_file_message(path: Path, display: str) -> str:
    siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1)
    hint = f"; did you mean '{path.parent / close[0]}'?" if close else ""
    return f"{display}: no such recipe file{hint}"


def _read_yaml(path: Path, display: str) -> tuple[dict, Marks]:
    """Load one YAML file as a mapping plus the marks of its key paths."""
    if path.is_dir():
        raise RecipeError(f"{display}: is a directory; expected a recipe .yaml file")
    if not path.is_file():
        raise RecipeError(_missing_file_message(path, display))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{display}: not UTF-8 text (byte {exc.start}); "
                          f"expected a YAML file") from None
    except OSError as exc:
        raise RecipeError(f"{display}: cannot read: {exc.strerror}") from None

    loader = _MarkLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise RecipeError(f"{display}: the recipe is empty; expected a mapping with "
                              f"checkpoint, output and targets")
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
            raise RecipeError(f"{_mark(display, node.start_mark)}: the recipe is {kind}; "
                              f"expected a mapping of keys (checkpoint:, output:, targets:, ...)")
        _check_duplicates(node, display, loader, ())
        data = loader.construct_document(node)
        marks: Marks = {}
        root = f"{display}:1:1"
        _collect_marks(node, display, loader, (), root, marks)
        marks[()] = _Loc(root, root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _mark(display, mark) if mark else display
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise RecipeError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{display}: invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    return data, marks


# ----------------------------------------------------------------------------- extends, overrides


def _replace_subtree(marks: Marks, source: Marks, path: tuple) -> None:
    n = len(path)
    for key in [k for k in marks if k[:n] == path]:
        del marks[key]
    marks.update({k: v for k, v in source.items() if k[:n] == path})


def _deep_merge(base: dict, base_marks: Marks, over: dict, over_marks: Marks
                ) -> tuple[dict, Marks]:
    """Mappings merge key by key, anything else (lists included) is replaced by ``over``."""
    data = copy.deepcopy(base)
    marks = dict(base_marks)

    def merge(dst: dict, src: dict, path: tuple) -> None:
        for key, value in src.items():
            sub = path + (key,)
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                if sub in over_marks:
                    marks[sub] = over_marks[sub]
                merge(dst[key], value, sub)
            else:
                dst[key] = copy.deepcopy(value)
                _replace_subtree(marks, over_marks, sub)

    merge(data, over, ())
    if () in over_marks:
        marks[()] = over_marks[()]
    return data, marks


def _resolve(path: Path, display: str, stack: tuple[Path, ...]) -> tuple[dict, Marks, list[str]]:
    """Load ``path`` with its ``extends`` chain merged in; returns data, marks, chain of files."""
    data, marks = _read_yaml(path, display)
    if "extends" not in data:
        return data, marks, []
    extends = data.pop("extends")
    ext_loc = marks[("extends",)]
    names = [extends] if isinstance(extends, str) else extends
    if not isinstance(names, list) or not names or \
            not all(isinstance(n, str) and n.strip() for n in names):
        raise RecipeError(f"{ext_loc.where}: extends: {_show(extends)} is not a file name; "
                          f"expected a recipe path relative to this file, or a list of them")

    merged: dict = {}
    merged_marks: Marks = {}
    chain: list[str] = []
    for i, name in enumerate(names):
        loc = marks.get(("extends", i), ext_loc) if isinstance(extends, list) else ext_loc
        base_path = (path.parent / name).resolve()
        base_display = os.path.normpath(os.path.join(os.path.dirname(display), name))
        if base_path in stack:
            cycle = " -> ".join([p.name for p in stack[stack.index(base_path):]] + [base_path.name])
            raise RecipeError(f"{loc.where}: extends: cycle {cycle}; "
                              f"expected a chain of bases that ends")
        if not base_path.exists():
            raise RecipeError(f"{loc.where}: extends: no such file '{name}' "
                              f"(looked for {base_display}); expected a path relative to "
                              f"{os.path.dirname(display) or '.'}")
        base, base_marks, base_chain = _resolve(base_path, base_display, stack + (base_path,))
        merged, merged_marks = _deep_merge(merged, merged_marks, base, base_marks)
        chain += base_chain + [base_display]

    own_marks = {k: v for k, v in marks.items() if k[:1] != ("extends",)}
    merged, merged_marks = _deep_merge(merged, merged_marks, data, own_marks)
    return merged, merged_marks, chain


_PATH_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _parse_key_path(key: str) -> Optional[tuple]:
    path: list = []
    for part in key.split("."):
        match = _PATH_PART.match(part)
        if not match:
            return None
        path.append(match.group(1))
        path.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return tuple(path)


def _apply_override(data: dict, marks: Marks, text: str) -> None:
    """Apply one ``key.path=value`` override; the value is YAML (scalar or flow collection)."""
    label = f"<override '{text}'>"
    key, sep, raw = text.partition("=")
    if not sep:
        raise RecipeError(f"{label}: no '='; expected KEY.PATH=VALUE, e.g. sampler.steps=4")
    path = _parse_key_path(key.strip())
    if not path:
        raise RecipeError(f"{label}: '{key.strip()}' is not a key path; expected names "
                          f"separated by dots, e.g. sampler.steps or targets[0].backend")
    if path[0] == "extends":
        raise RecipeError(f"{label}: extends: cannot be overridden (bases are merged before "
                          f"overrides); expected another key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{label}: {_dotted(path)}: value {raw!r} is not valid YAML "
                          f"({' '.join(problem.split())}); expected a YAML scalar or flow "
                          f"value, e.g. 4, fp16 or [{{backend: vulkan}}]") from None
    loc = _Loc(label, label)

    node: Any = data
    for depth, part in enumerate(path):
        here = path[: depth + 1]
        last = depth == len(path) - 1
        if isinstance(part, str):
            if not isinstance(node, dict):
                raise RecipeError(f"{label}: {_dotted(path[:depth])}: is {_kind(node)}, not a "
                                  f"mapping; expected a key path that exists in the recipe")
            if last:
                node[part] = value
            elif node.get(part) is None:  # absent or empty: create the section
                node[part] = {} if isinstance(path[depth + 1], str) else []
                marks[here] = loc
            if last:
                break
            node = node[part]
        else:
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise RecipeError(f"{label}: {_dotted(here)}: no such list item (the list has "
                                  f"{size}); expected an index below {size}")
            if last:
                node[part] = value
                break
            node = node[part]
    _replace_subtree(marks, {}, path)
    marks[path] = loc


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"the value {_show(value)}"


def _show(value: Any) -> str:
    """A value as the user would have typed it in YAML."""
    if isinstance(value, str):
        text = repr(value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- error messages


def _model_at(path: tuple) -> Optional[type[BaseModel]]:
    """The schema model that validates the mapping at ``path`` (None for non-models)."""
    model: Any = Recipe
    for part in path:
        if isinstance(part, int):
            continue  # list items: _unwrap already gave the item model
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
    return model


def _unwrap_model(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _unwrap_model(arg)
        if found:
            return found
    return None


_FIELD_HELP = {
    "checkpoint": _CHECKPOINT_HELP,
    "output": "an output directory, e.g. artifacts/my-recipe",
    "targets": "a list of targets, e.g. [{backend: xnnpack}]",
    "backend": "one of xnnpack, vulkan, coreml, portable",
    "keep": "a list of module-name globs, e.g. [conv_in, '*norm*']",
    "fallback": "a list, e.g. [xnnpack]",
}


def _explain(error: dict, path: tuple) -> str:
    """'what is wrong; expected what' for one pydantic error."""
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx", {})
    last = path[-1] if path else ""
    help_text = _FIELD_HELP.get(last) if isinstance(last, str) else None
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        allowed = list(model.model_fields) if model else []
        if model is Recipe:
            allowed = [k for k in allowed if k != "extends"] + ["extends"]
        close = difflib.get_close_matches(str(last), allowed, n=1)
        if close:
            return f"unknown key '{last}'; did you mean '{close[0]}'?"
        return f"unknown key '{last}'; expected one of: {', '.join(allowed)}"
    if kind == "missing":
        return f"missing required key; expected {help_text or 'a value'}"
    if kind == "literal_error":
        return f"{_show(value)} is not allowed; expected {ctx.get('expected')}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        model = _model_at(path)
        keys = f" with keys {', '.join(model.model_fields)}" if model else ""
        return f"{_show(value)} is not a mapping; expected a mapping{keys}"
    if kind == "list_type":
        return f"{_show(value)} is not a list; expected {help_text or 'a list'}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{_show(value)} is not an integer; expected an integer"
    if kind in ("float_type", "float_parsing"):
        return f"{_show(value)} is not a number; expected a number"
    if kind in ("bool_type", "bool_parsing"):
        return f"{_show(value)} is not a boolean; expected true or false"
    if kind == "string_type":
        return f"{_show(value)} is not text; expected {help_text or 'a string'}"
    if kind == "too_short":
        at_least = f"at least {ctx.get('min_length')} item"
        return f"is empty; expected {help_text or at_least}"
    if kind == "string_too_short":
        return f"is empty; expected {help_text or 'a non-empty string'}"
    bounds = {"greater_than_equal": ("too small", ">=", "ge"),
              "greater_than": ("too small", ">", "gt"),
              "less_than_equal": ("too large", "<=", "le"),
              "less_than": ("too large", "<", "lt")}
    if kind in bounds:
        what, op, name = bounds[kind]
        return f"{_show(value)} is {what}; expected a value {op} {ctx.get(name)}"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}"


def _locate(marks: Marks, path: tuple, at_key: bool) -> str:
    """The position of ``path``, or of its nearest ancestor present in the file(s)."""
    for n in range(len(path), -1, -1):
        loc = marks.get(path[:n])
        if loc is not None:
            return loc.key_where if (at_key or n < len(path)) else loc.where
    return "<recipe>"


def _format_validation_error(exc: ValidationError, marks: Marks) -> str:
    errors = exc.errors(include_url=False)
    # An unknown key usually explains the other errors (a misspelt 'targts' also makes
    # 'targets' missing), so it is reported first.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _Rule):
        path, message = path + cause.path, str(cause)
    else:
        message = _explain(error, path)
    where = _locate(marks, path, at_key=error["type"] in ("extra_forbidden", "missing"))
    return f"{where}: {_dotted(path)}: {message}"


# ----------------------------------------------------------------------------- public API


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Load, merge (``extends``), override and validate a recipe; raise RecipeError on any fault.

    ``overrides`` are ``key.path=value`` strings (value parsed as YAML), applied in order after
    ``extends`` is resolved; their errors are reported as ``<override 'key=value'>``.
    """
    path = Path(path)
    display = str(path)
    if not path.exists():
        raise RecipeError(_missing_file_message(path, display))
    resolved = path.resolve()
    data, marks, chain = _resolve(resolved, display, (resolved,))
    overrides = tuple(overrides)
    for text in overrides:
        _apply_override(data, marks, text)
    data["extends"] = chain
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(exc, marks)) from None
    recipe._source = path
    recipe._overrides = overrides
    return recipe


def list_recipes(directory: str | Path = "recipes") -> list[tuple[str, str]]:
    """(name, description) of each top-level ``*.yaml`` recipe in ``directory`` (bases in
    subfolders are not listed). A recipe that does not validate is listed with its error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecipeError(f"{directory}: no such recipes directory")
    found = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            description = load_recipe(path).description
        except RecipeError as exc:
            description = f"(invalid: {exc})"
        found.append((path.stem, description))
    return found
