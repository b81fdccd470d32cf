"""Core ML: ExecuTorch's delegate for iOS / macOS (CPU, GPU, Neural Engine). Lowers on Linux; runs only on Apple.

``CoreMLPartitioner`` with compile specs from the recipe's ``coreml:`` options: compute units
(all / cpu_and_gpu / cpu_and_ne / cpu_only), minimum deployment target (iOS16..iOS18) and compute precision
(fp16 / fp32). Each partition becomes an ``.mlpackage`` (MIL program + weights) flattened into the .pte;
``mdship.stages.structure`` unpacks it again to check the model without running it. Weight-only int8 / int4
(per channel or per group) comes from the quantize stage as torchao ops that coremltools turns into
``constexpr`` dequantization ops (iOS18 for int4 and per-block).
"""

from __future__ import annotations

import torch

from mdship.backends.base import xnnpack_fallback
from mdship.recipe import ComponentSpec, CoreMLOptions, Target

COMPUTE_UNITS = {"all": "ALL", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE", "cpu_only": "CPU_ONLY"}


def compile_specs(options: CoreMLOptions) -> list:
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend as ExecuTorchCoreML

    specs = ExecuTorchCoreML.generate_compile_specs(
        compute_unit=ct.ComputeUnit[COMPUTE_UNITS[options.compute_units]],
        minimum_deployment_target=getattr(ct.target, options.minimum_deployment_target),
        compute_precision=ct.precision.FLOAT16 if options.compute_precision == "fp16" else ct.precision.FLOAT32,
        model_type=ExecuTorchCoreML.MODEL_TYPE.MODEL,  # COMPILED_MODEL needs macOS
    )
    if options.compute_precision == "fp16":
        # coremltools 9.0's fuse_elementwise_to_batchnorm runs after the fp16 cast and makes a batch_norm with fp16
        # gamma / beta but fp32 mean / variance, which fails validation. It fires on x * w + b with per-channel
        # constants: every trained GroupNorm / LayerNorm affine (random-init ones, w = 1 and b = 0, are folded away
        # first, so only trained checkpoints hit it). Mul + add run as well; the pass only fuses them.
        passes = [p for p in ct.PassPipeline.DEFAULT.passes if p != "common::fuse_elementwise_to_batchnorm"]
        specs.append(ExecuTorchCoreML.generate_pass_pipeline_compile_spec(passes))
    return specs


_CONVERTER_REGISTERED = False


def register_dequantize_affine() -> None:
    """Let Core ML convert torchao's ``dequantize_affine`` on weights of any rank (conv weights are 4-D).

    ExecuTorch 1.5.1 overrides coremltools' converter with one that asserts rank-2 weights (linear only), so a
    weight-only conv fails to lower ("dequantize_affine only supports rank 2 inputs"). This converter does the same
    for any rank: torchao's scale / zero point hold one value per block (``shape[i] // block_size[i]`` along each
    dim), which is the layout of coremltools' ``constexpr_blockwise_shift_scale`` (iOS18); before iOS18
    ``constexpr_affine_dequantize`` takes a single quantization axis only, and coremltools says so.
    """
    global _CONVERTER_REGISTERED
    if _CONVERTER_REGISTERED:
        return
    import executorch.backends.apple.coreml.compiler.torch_ops  # noqa: F401  (ExecuTorch's rank-2 override first)
    import numpy as np
    from coremltools.converters.mil.frontend import _utils
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op
    from coremltools.converters.mil.mil import types

    @register_torch_op(torch_alias=["torchao::dequantize_affine", "torchao.dequantize_affine"], override=True)
    def dequantize_affine(context, node):
        inputs = _get_inputs(context, node, expected=[7, 8])
        data, block_size, scale = inputs[0].val, [int(b) for b in inputs[1].val], inputs[2].val
        zero_point = inputs[3].val if inputs[3] is not None and inputs[3].val is not None else None
        quant_min, quant_max = int(inputs[5].val), int(inputs[6].val)
        if data is None or scale is None:
            raise ValueError(f"{node.name}: Core ML dequantizes constant weights only")
        if len(block_size) != data.ndim or any(d % b for d, b in zip(data.shape, block_size)):
            raise ValueError(f"{node.name}: block_size {block_size} does not tile a weight of shape {data.shape}")
        grid = [d // b for d, b in zip(data.shape, block_size)]
        scale = np.asarray(scale).reshape(grid)
        if zero_point is not None:
            zero_point = np.asarray(zero_point).reshape(grid)
            if not zero_point.any():
                zero_point = None  # symmetric: no offset tensor to store
        bits = {(-8, 7): "int4", (-128, 127): "int8"}.get((quant_min, quant_max))
        if bits is None:
            raise ValueError(f"{node.name}: quantization range {quant_min}..{quant_max}; Core ML takes int4 or int8")
        np_dtype = types.nptype_from_builtin(types.string_to_builtin(bits))
        if zero_point is not None:
            zero_point = zero_point.astype(np_dtype)
        out = _utils._construct_constexpr_dequant_op(data.astype(np_dtype), zero_point, scale, name=node.name)
        context.add(out, node.name)

    _CONVERTER_REGISTERED = True


class CoreMLBackend:
    name = "coreml"
    executes_here = False
    default_guidance_mode = "batch2"
    #: ExecuTorch backend id of this delegate's partitions in a .pte
    backend_id = "CoreMLBackend"

    def partitioners(self, target: Target, spec: ComponentSpec) -> list:
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        register_dequantize_affine()
        return [CoreMLPartitioner(compile_specs=compile_specs(target.coreml or CoreMLOptions())),
                *xnnpack_fallback(target)]

    def export_precision(self, target: Target, spec: ComponentSpec) -> str:
        return spec.precision

    def transform_passes(self) -> list:
        return []

    def compute_dtype(self, target: Target, spec: ComponentSpec) -> torch.dtype:
        return torch.float16 if target.computes_fp16 or spec.precision == "fp16" else torch.float32
