"""Stage `verify`: every .pte mdship writes is checked against eager PyTorch fp32.

`executed`: the .pte runs on the ExecuTorch runtime (this machine runs XNNPACK and portable programs).
`simulated`: the target cannot run here (Vulkan, Core ML on Linux), so the same quantized / fp16 model runs
in eager PyTorch instead; reports must say so and never present it as measured on the runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from mdship import programs
from mdship.metrics import tensor_psnr


@dataclass
class Verification:
    mode: str  # "executed" | "simulated"
    psnr_db: float  # worst over the test vectors
    per_vector_psnr_db: list[float]
    gate_db: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare(outputs: list[torch.Tensor], expected: list[torch.Tensor], gate_db: float, mode: str) -> Verification:
    scores = [tensor_psnr(e, o) for o, e in zip(outputs, expected)]
    worst = min(scores)
    return Verification(mode, worst, scores, gate_db, worst >= gate_db)


def run_executed(program: bytes, vectors: list[tuple[tuple, torch.Tensor]], gate_db: float,
                 method: str = "forward") -> Verification:
    """One method of the .pte on the ExecuTorch runtime (XNNPACK and portable kernels are in the pip wheel)."""
    call = programs.method(program, method)
    outputs = [call(*inputs) for inputs, _ in vectors]
    return compare(outputs, [e for _, e in vectors], gate_db, "executed")


def run_simulated(module: torch.nn.Module, vectors: list[tuple[tuple, torch.Tensor]], gate_db: float) -> Verification:
    """The simulated twin (mdship.simulate) in eager PyTorch, for targets that cannot run here."""
    with torch.no_grad():
        outputs = [module(*inputs) for inputs, _ in vectors]
    return compare(outputs, [e for _, e in vectors], gate_db, "simulated")
