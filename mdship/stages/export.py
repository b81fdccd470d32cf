"""Stage `export`: wrap a component for export (the backend's rewrites, precision, layers kept in fp32) and run
torch.export with static shapes.

Every program keeps an fp32 interface (float inputs and outputs in fp32, token ids and timesteps int64), even
when it computes in fp16 inside: runners never need to know a component's precision, and the casts are free
next to the component's work.

``keep_fp32`` (a component's `keep_fp32:` globs, the fp16 guard's advice): in an fp16 program, the matching modules
stay fp32 with their inputs cast up and their outputs cast back (an fp32 island). A delegate that computes in the
graph's dtypes then runs them in fp32 (`Backend.mixed`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from mdship.rewrites import REWRITES, export_friendly

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _to(value, dtype: torch.dtype):
    return value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value


def island_names(component: nn.Module, patterns: list[str]) -> list[str]:
    """The modules a component's `keep_fp32:` globs name (the outermost match of each subtree)."""
    from mdship.stages.quantize import keep_match

    names = []
    for name, _ in component.named_modules():
        if name and not any(name.startswith(k + ".") for k in names) and keep_match(name, patterns) is not None:
            names.append(name)
    return names


def to_dtype_with_islands(component: nn.Module, dtype: torch.dtype, islands: list[str]) -> nn.Module:
    """``component`` cast to ``dtype`` except the ``islands``, which keep their fp32 weights and compute in fp32: hooks
    cast their float inputs up and their float outputs back (hooks rather than a wrapper, so module names, which
    quantization plans and the fp16 guard use, stay as they are)."""
    kept = {name: copy.deepcopy(component.get_submodule(name)).float() for name in islands}
    component = component.to(dtype)
    for name, module in kept.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(component.get_submodule(parent_name) if parent_name else component, attr, module)
        module.register_forward_pre_hook(lambda m, args, kwargs: (tuple(_to(a, torch.float32) for a in args),
                                                                  {k: _to(v, torch.float32) for k, v in kwargs.items()}),
                                         with_kwargs=True)
        module.register_forward_hook(lambda m, args, out: _to(out, dtype))
    return component


class ProgramModule(nn.Module):
    """The exported form of a component: export-friendly copy (the backend's `rewrites`), computed in `dtype`, the
    `keep_fp32` modules in fp32, fp32 in and out."""

    def __init__(self, component: nn.Module, dtype: torch.dtype = torch.float32,
                 rewrites: tuple[str, ...] = REWRITES, keep_fp32: list[str] | None = None):
        super().__init__()
        component = export_friendly(component, rewrites)
        self.kept_fp32 = island_names(component, keep_fp32 or []) if dtype != torch.float32 else []
        self.component = to_dtype_with_islands(component, dtype, self.kept_fp32)
        self.dtype = dtype

    def forward(self, *inputs):
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        return self.component(*cast).float()


@dataclass
class ExportedComponent:
    name: str
    program: torch.export.ExportedProgram
    example_inputs: tuple
    precision: str
    #: what quantization did (layers quantized, kept in float, skipped and why), filled by `quantize`
    quantization: dict = field(default_factory=dict)
    #: modules computed in fp32 inside an fp16 program (`keep_fp32:`)
    kept_fp32: list[str] = field(default_factory=list)


def run(name: str, module: nn.Module, precision: str, example_inputs: tuple,
        rewrites: tuple[str, ...] = REWRITES, keep_fp32: list[str] | None = None) -> ExportedComponent:
    program_module = ProgramModule(module, DTYPES[precision], rewrites, keep_fp32).eval()
    with torch.no_grad():
        program = torch.export.export(program_module, example_inputs, strict=False)
    return ExportedComponent(name, program, example_inputs, precision, kept_fp32=program_module.kept_fp32)
