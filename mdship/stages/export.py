"""Stage `export`: wrap a component for export (rewrites, precision) and run torch.export with static shapes.

Every program keeps an fp32 interface (float inputs and outputs in fp32, token ids and timesteps int64), even
when it computes in fp16 inside: runners never need to know a component's precision, and the casts are free
next to the component's work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mdship.rewrites import export_friendly

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class ProgramModule(nn.Module):
    """The exported form of a component: export-friendly copy, computed in `dtype`, fp32 in and out."""

    def __init__(self, component: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.component = export_friendly(component).to(dtype)
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


def run(name: str, module: nn.Module, precision: str, example_inputs: tuple) -> ExportedComponent:
    program_module = ProgramModule(module, DTYPES[precision]).eval()
    with torch.no_grad():
        program = torch.export.export(program_module, example_inputs, strict=False)
    return ExportedComponent(name, program, example_inputs, precision)
