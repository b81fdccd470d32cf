"""Vulkan: ExecuTorch's GPU delegate for Android. Lowers here; its runtime is not in the pip wheel, so nothing runs.

* ``VulkanPartitioner({"force_fp16": ...})`` from the recipe's ``vulkan:`` options: with force_fp16 the delegate
  stores and computes every float tensor in fp16 whatever the program's dtype (half the size), so the program is
  exported in fp32 (``export_precision``) and only the delegate is fp16. It takes GroupNorm, LayerNorm,
  upsampling and GELU that XNNPACK leaves on the CPU.
* Conv is delegated only at batch 1, so classifier-free guidance runs as two batch-1 UNet calls (the first
  guidance mode of this backend in mdship.capabilities; the recipe refuses batch2 for Vulkan).
* Only linear layers are quantized for Vulkan (weight-only int8 per channel / int4 per group, see
  ``mdship.capabilities``); the quantize stage rewrites them before this partitioner sees the graph.
* ``fallback: [xnnpack]`` appends an XnnpackPartitioner: what Vulkan rejects goes to XNNPACK instead of the
  portable kernels (the recipe checks that XNNPACK can run the component's formats).
* Inspection: each blob is a ``VH00`` header + a VkGraph flatbuffer; it is decoded to count the operators it runs,
  the dtypes of its tensors (fp16 with force_fp16) and of its constant tensors (int8 for quantized linears).
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager

import torch

from mdship.backends.base import Backend, Checks, expected_weight_dtypes, fallback_partitioners
from mdship.recipe.schema import ComponentSpec, Target, VulkanOptions


def _options(target: Target) -> VulkanOptions:
    return target.vulkan or VulkanOptions()


class VulkanBackend(Backend):
    name = "vulkan"
    backend_id = "VulkanBackend"
    runs_here = False
    verification_note = ("vulkan programs cannot run on this machine: they were checked structurally (delegate "
                         "blobs, delegate graph) and numerically by running the same exported graph in eager "
                         "PyTorch in the delegate's compute dtype (simulated, not measured on the ExecuTorch runtime)")

    def partitioners(self, target: Target, spec: ComponentSpec | None) -> list:
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        return [VulkanPartitioner({"force_fp16": _options(target).force_fp16}), *fallback_partitioners(target)]

    def lowering(self, target: Target, spec: ComponentSpec):
        return _root_logger_quiet()

    def export_precision(self, target: Target, spec: ComponentSpec) -> str:
        """With force_fp16 the program is exported in fp32 and the delegate stores and computes it in fp16.

        Exporting an fp16 graph instead gains nothing (the delegate's tensors are fp16 either way) and breaks int4
        weight-only linears: ExecuTorch 1.5.1's Vulkan FusePatternsPass re-traces its fused ``linear_q4gsw`` with
        an fp32 result, and the next fp16 op (the attention bmm) fails on the dtype mismatch.
        """
        return "fp32" if _options(target).force_fp16 else spec.precision

    def computes_fp16(self, target: Target) -> bool:
        return _options(target).force_fp16

    def in_fp32(self, target: Target) -> Target:
        return target.model_copy(update={"vulkan": _options(target).model_copy(update={"force_fp16": False})})

    # ------------------------------------------------------------------ inspection
    def inspect_partitions(self, found, target, spec, inputs, outputs, quantized, checks: Checks) -> list[dict]:
        force = _options(target).force_fp16
        partitions = []
        for index, d in enumerate(found):
            specs = d["compile_specs"]
            checks.add(f"vulkan[{index}].compile_specs", specs.get("force_fp16", b"\x00") == bytes([force]),
                       f"force_fp16={specs.get('force_fp16', b'').hex() or 'unset'}")
            try:
                info = graph_summary(d["blob"])
            except Exception as exc:  # noqa: BLE001 - any failure to decode is a failed structural check
                checks.add(f"vulkan[{index}].graph", False, f"{type(exc).__name__}: {exc}")
                partitions.append({})
                continue
            checks.add(f"vulkan[{index}].graph", info["ops"] > 0,
                       f"{info['ops']} operators, {info['constants']} constants")
            partitions.append(info)
        dtypes, consts = Counter(), Counter()
        for p in partitions:
            dtypes.update(p.get("tensor_dtypes", {}))
            consts.update(p.get("constant_dtypes", {}))
        if partitions and self.compute_dtype(target, spec) == torch.float16:
            checks.add("precision_fp16", dtypes.get("FLOAT32", 0) == 0 and dtypes.get("FLOAT16", 0) > 0,
                       f"{dtypes.get('FLOAT16', 0)} fp16 / {dtypes.get('FLOAT32', 0)} fp32 tensors")
        if partitions and expected_weight_dtypes(spec, quantized):
            n = consts.get("INT8", 0) + consts.get("UINT8", 0)
            checks.add("weights_quantized", n > 0, f"{n} int8/uint8 (packed int4) constant tensors")
        return partitions


@contextmanager
def _root_logger_quiet():
    """ExecuTorch 1.5.1's Vulkan modules set the *root* logger to INFO when they are imported
    (``logging.getLogger("").setLevel(logging.INFO)`` in vulkan_partitioner.py, tag_memory_meta_pass.py and
    vulkan_graph_builder.py), so a lowering printed hundreds of "INFO:root:" lines (every op the partitioner skips,
    every layout transition). They are imported first here, then the root level is put back for the lowering;
    ``--verbose`` (MDSHIP_VERBOSE) keeps them."""
    import executorch.backends.vulkan._passes.tag_memory_meta_pass  # noqa: F401
    import executorch.backends.vulkan.partitioner.vulkan_partitioner  # noqa: F401
    import executorch.backends.vulkan.serialization.vulkan_graph_builder  # noqa: F401

    from mdship.programs import verbose

    root = logging.getLogger()
    level = root.level
    if not verbose():
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def graph_summary(blob: bytes) -> dict:
    """Operators, tensor dtypes, constants and I/O of a Vulkan delegate blob (header + VkGraph flatbuffer)."""
    from executorch.backends.vulkan.serialization.vulkan_graph_serialize import (
        VulkanDelegateHeader, extract_vk_flatbuffer, flatbuffer_to_vk_graph)

    header = VulkanDelegateHeader.from_bytes(blob[:VulkanDelegateHeader.EXPECTED_LENGTH])
    graph = flatbuffer_to_vk_graph(extract_vk_flatbuffer(blob))
    tensors = [v.value for v in graph.values if type(v.value).__name__ == "VkTensor"]

    def spec(i):
        t = graph.values[i].value
        dtype = getattr(getattr(t, "datatype", None), "name", "?")
        staging = getattr(getattr(t, "staging_datatype", None), "name", "UNSET")
        # dtype: how the GPU holds it; host_dtype: what the caller passes / gets (staging conversion)
        return {"shape": list(getattr(t, "dims", [])), "dtype": dtype,
                "host_dtype": dtype if staging == "UNSET" else staging}

    return {
        "version": graph.version,
        "flatbuffer_bytes": header.flatbuffer_size,
        "ops": len(graph.chain),
        "op_types": dict(Counter(op.name for op in graph.chain).most_common()),
        "tensor_dtypes": dict(Counter(t.datatype.name for t in tensors).most_common()),
        "constant_dtypes": dict(Counter(t.datatype.name for t in tensors if t.constant_id >= 0).most_common()),
        "constants": len(graph.constants),
        "inputs": [spec(i) for i in graph.input_ids],
        "outputs": [spec(i) for i in graph.output_ids],
    }
