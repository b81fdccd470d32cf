"""Stage `serialize`: edge program -> .pte bytes (the flatbuffer an ExecuTorch runtime loads).

A weight-only quantized op left on the CPU (a quantized embedding on XNNPACK: torchao's dequantize_affine feeding
aten.embedding) needs ExecuTorch's quant fusion, which rewrites the pair into a quantized kernel
(`quantized_decomposed::embedding_byte` / `embedding_4bit`); without it `to_executorch` has no out variant for
dequantize_affine. It is turned on only then, so every other program serializes exactly as before."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mdship.stages.lower import LoweredComponent, shared_provenance


@dataclass
class SerializedComponent:
    name: str
    data: bytes
    sha256: str


def needs_quant_fusion(coverage: dict) -> bool:
    return any("dequantize_affine" in op for op in coverage.get("fallback_ops", {}))


def run(lowered: LoweredComponent) -> SerializedComponent:
    from executorch.exir import ExecutorchBackendConfig

    config = ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True) \
        if needs_quant_fusion(lowered.coverage) else None
    with shared_provenance():
        data = bytes(lowered.edge.to_executorch(config).buffer)
    return SerializedComponent(lowered.name, data, hashlib.sha256(data).hexdigest())
