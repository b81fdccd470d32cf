"""Vulkan: ExecuTorch's GPU delegate for Android. Lowers here; its runtime is not in the pip wheel, so nothing runs.

* ``VulkanPartitioner({"force_fp16": ...})`` from the recipe's ``vulkan:`` options: with force_fp16 the delegate
  stores and computes every float tensor in fp16 whatever the program's dtype (half the size), so the program is
  exported in fp32 (``export_precision``) and only the delegate is fp16. It takes GroupNorm, LayerNorm,
  upsampling and GELU that XNNPACK leaves on the CPU.
* Conv is delegated only at batch 1, so classifier-free guidance runs as two batch-1 UNet calls (the first
  guidance mode of this backend in mdship.capabilities; the recipe refuses batch2 for Vulkan).
* Only linear layers are quantized for Vulkan (weight-only int8 per channel / int4 per group, see
  ``mdship.capabilities``); the quantize stage rewrites them before this partitioner sees the graph.
* Export rewrites (``rewrites``): every one of mdship.rewrites but GroupNorm. Vulkan takes ``native_group_norm``
  on channels-packed textures, but its general reductions (mean / sum / amax) only over 1-2 dims with keepdim, so
  the GroupNorm-as-4-D-means rewrite that XNNPACK needs is refused at 512 px (a mean over (C/G, H*W) of
  1x32x4x262144) and split the paper-scale decoder into 19 Vulkan + 18 XNNPACK partitions; stock GroupNorm keeps it
  in one Vulkan partition.
* Layers kept in fp32 (``keep_fp32:``, ``mixed``): force_fp16 would compute them in fp16 like everything else, so
  such a component is exported in fp16 with fp32 islands and lowered with force_fp16 off; the delegate then holds
  each tensor in the program's dtype (both lower into one partition, checked as ``precision_mixed``).
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
from mdship.rewrites import REWRITES


def _options(target: Target) -> VulkanOptions:
    return target.vulkan or VulkanOptions()


class VulkanBackend(Backend):
    name = "vulkan"
    backend_id = "VulkanBackend"
    runs_here = False
    verification_note = ("vulkan programs cannot run on this machine: they were checked structurally (delegate "
                         "blobs, delegate graph) and numerically by running the same exported graph in eager "
                         "PyTorch in the delegate's compute dtype (simulated, not measured on the ExecuTorch runtime)")
    rewrites = tuple(r for r in REWRITES if r != "group_norm")

    def partitioners(self, target: Target, spec: ComponentSpec | None, whole_graph: bool = False) -> list:
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        return [VulkanPartitioner({"force_fp16": _options(target).force_fp16}), *fallback_partitioners(target)]

    def lowering(self, target: Target, spec: ComponentSpec, quantization: dict | None = None):
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

    def mixed(self, target: Target) -> Target:
        return self.in_fp32(target)  # force_fp16 off: the delegate keeps each tensor in the program's dtype

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
        f16, f32 = dtypes.get("FLOAT16", 0), dtypes.get("FLOAT32", 0)
        if partitions and not force and spec.precision == "fp16" and spec.keep_fp32:
            checks.add("precision_mixed", f16 > 0 and f32 > 0,
                       f"{f16} fp16 / {f32} fp32 tensors (keep_fp32: {', '.join(spec.keep_fp32)})")
        elif partitions and self.compute_dtype(target, spec) == torch.float16:
            checks.add("precision_fp16", f32 == 0 and f16 > 0, f"{f16} fp16 / {f32} fp32 tensors")
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
