"""Simulated verification: run the exact exported (and quantized) program in eager PyTorch, in the delegate's dtype.

A target that cannot run here (Vulkan, Core ML on Linux) is checked by running the same graph that was lowered,
op by op, in eager PyTorch. When the delegate computes in fp16 (Vulkan ``force_fp16``, Core ML
``compute_precision: fp16``) it does so for every float tensor, including the ones the program keeps in fp32
(the fp32 interface casts, an fp32 timestep embedding): ``in_dtype`` reproduces that by casting every fp32
tensor an op reads or writes to fp16, and returns fp32 outputs like the program's interface. Integer tensors
(token ids, timesteps, int8/int4 weights of weight-only quantization) are left alone, so the dequantize ops of
a quantized program run as exported.

This is a simulation: eager CPU kernels are not the GPU / Neural Engine kernels, accumulate differently and
may fuse nothing. Reports label it `simulated`, never `executed`.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map


class _CastInterpreter(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, dtype: torch.dtype):
        super().__init__(module)
        self.dtype = dtype

    def _cast(self, value):
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            return value.to(self.dtype)
        return value

    def call_function(self, target, args, kwargs):
        if getattr(target, "__name__", "").startswith("_assert_tensor_metadata"):
            return None  # export's dtype guards would refuse the fp16 tensors this simulation makes on purpose
        args, kwargs = tree_map(self._cast, args), tree_map(self._cast, kwargs)
        return tree_map(self._cast, super().call_function(target, args, kwargs))

    def call_method(self, target, args, kwargs):
        args, kwargs = tree_map(self._cast, args), tree_map(self._cast, kwargs)
        return tree_map(self._cast, super().call_method(target, args, kwargs))

    def call_module(self, target, args, kwargs):
        args, kwargs = tree_map(self._cast, args), tree_map(self._cast, kwargs)
        return tree_map(self._cast, super().call_module(target, args, kwargs))


class InDtype(torch.nn.Module):
    """An exported program's graph, every float op computed in ``dtype``, fp32 outputs."""

    def __init__(self, program: torch.export.ExportedProgram, dtype: torch.dtype):
        super().__init__()
        self.module = program.module()
        self.dtype = dtype

    def forward(self, *inputs):
        if self.dtype == torch.float32:
            out = self.module(*inputs)
        else:
            out = _CastInterpreter(self.module, self.dtype).run(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
        return out.float()


def in_dtype(program: torch.export.ExportedProgram, dtype: torch.dtype) -> torch.nn.Module:
    """The module that simulated verification runs: ``program`` computed in the delegate's ``dtype``."""
    return InDtype(program, dtype)  # (an unlifted exported module refuses .train()/.eval())
