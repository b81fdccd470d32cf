"""XNNPACK: ExecuTorch's CPU delegate (Android and iOS CPUs; also runs on this Linux machine).

* ``XnnpackPartitioner`` after ``get_transform_passes()`` (removes no-op expand_copy and similar ops that would
  otherwise split partitions). The export rewrites (mdship.rewrites) exist for it: XNNPACK takes no GroupNorm,
  LayerNorm, upsample_nearest2d or decomposed SDPA.
* Quantized paths (mdship.capabilities): dynamic int8 activations on linears (torchao 8da8w / 8da4w, applied by
  the quantize stage before export) and static int8 (PT2E, calibrated) with this module's quantizer, which
  annotates exactly the planned conv / linear layers. XNNPACK's own ``XNNPACKQuantizer`` also quantizes every
  ``cat`` whatever its filter (the UNet's skip cats, the timestep embedding's [cos|sin]), and its scalar-to-tensor
  transform moves the timestep embedding: both cost ~15 dB on the tiny UNet with no layer quantized at all.
* Weight-only int8 / int4 linears are claimed by XNNPACK and then computed wrong without an error; the capability
  table refuses them, and ``check_lowered`` proves that no quantize / dequantize op was left outside the delegate.
"""

from __future__ import annotations

import torch

from mdship.backends.base import Backend
from mdship.recipe.schema import ComponentSpec, Target

_CONV_OPS = (torch.ops.aten.conv2d.default,)
_LINEAR_OPS = (torch.ops.aten.linear.default,)


class XnnpackBackend(Backend):
    name = "xnnpack"
    backend_id = "XnnpackBackend"
    runs_here = True

    def partitioners(self, target: Target, spec: ComponentSpec | None) -> list:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]

    def transform_passes(self) -> list:
        from executorch.backends.xnnpack.utils.configs import get_transform_passes

        return get_transform_passes()

    def static_quantizer(self, layer_names: set[str]):
        """PT2E static int8 (per-channel weights, per-tensor activations) on the named conv / linear layers only."""
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import OP_TO_ANNOTATOR

        from mdship.stages.quantize import node_module

        config = get_symmetric_quantization_config(is_per_channel=True)

        def wanted(node: torch.fx.Node) -> bool:
            if node.op in ("get_attr", "placeholder"):  # weight / bias of a pattern: decided by its op node
                return True
            return node.target in _CONV_OPS + _LINEAR_OPS and node_module(node) in layer_names

        class NamedLayersQuantizer(XNNPACKQuantizer):
            def transform_for_annotation(self, model):
                return model  # scalars stay scalars: nothing else is quantized, and the conversion moves numerics

            def annotate(self, model):
                for pattern in ("conv", "linear"):
                    OP_TO_ANNOTATOR[pattern](model, config, wanted)
                return model

        return NamedLayersQuantizer()

    def check_lowered(self, component: str, quantization: dict, coverage: dict) -> None:
        """Quantize / dequantize ops left outside the delegate mean XNNPACK did not take the quantized layers
        (they would run as slow reference kernels, or not at all)."""
        from mdship.errors import QuantizationError

        if not quantization.get("quantized"):
            return
        stray = {op: n for op, n in coverage.get("fallback_ops", {}).items()
                 if "quantize" in op or "choose_qparams" in op}
        if stray:
            raise QuantizationError(f"{component}: XNNPACK did not take the quantized layers: "
                                    f"{', '.join(f'{op} x{n}' for op, n in stray.items())} left on the CPU")
