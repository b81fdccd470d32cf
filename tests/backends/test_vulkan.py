"""Every shipped Vulkan recipe, built on the tiny preset: manifest, coverage (Vulkan first, XNNPACK fallback),
structure (the VkGraph in each delegate blob decoded: fp16 tensors, quantized linear weights), and simulated fp16
numerics against the gates. The pip wheel has no Vulkan runtime: verification must say `simulated`."""

from __future__ import annotations

import pytest

from mdship import simulate
from mdship_testing import shipped_recipe_builds

# `make test` builds the quantized recipe (fp16 delegate + int4 linears: every path); `make test-slow` builds both.
RECIPES = [pytest.param("md-vulkan-fp16", marks=pytest.mark.slow), "md-vulkan-w4-fp16"]
QUANTIZED = {"md-vulkan-w4-fp16": {"text_encoder", "unet"}}

built = shipped_recipe_builds(RECIPES)


def test_manifest_coverage_and_simulated_verification(built):
    name, result, manifest = built
    assert manifest["target"]["backend"] == "vulkan" and manifest["target"]["vulkan"] == {"force_fp16": True}
    assert manifest["target"]["fallback"] == (["xnnpack"] if name == "md-vulkan-fp16" else [])
    assert manifest["verification"]["mode"] == "simulated"
    # conv is delegated at batch 1 only: guidance runs as two batch-1 UNet calls
    assert manifest["sampler"]["guidance_mode"] == "two_calls"
    assert manifest["components"]["unet"]["inputs"][0]["shape"][0] == 1
    for comp, c in manifest["components"].items():
        v = c["verification"]
        assert v["mode"] == "simulated" and v["simulated_as"] == simulate.SIMULATED_AS, (comp, v)
        assert v["passed"] and v["psnr_db"] >= v["gate_db"], (comp, v)
        assert v["gate_db"] == (25 if comp in QUANTIZED.get(name, ()) else 35)
        assert c["partitions"] >= 1 and c["partitions_by_backend"].get("VulkanBackend", 0) >= 1
        assert set(c["partitions_by_backend"]) <= {"VulkanBackend", "XnnpackBackend"}
        assert 0.0 <= c["delegated_flops_share"] <= 1.0 and c["flops"] > 0
        assert c["delegated_flops_share"] >= 0.9, (comp, c["fallback_ops"], c["fallback_flops"])
    assert manifest["warnings"] == []


def test_structure_decodes_the_vulkan_graph(built):
    name, result, manifest = built
    for comp, c in manifest["components"].items():
        s = c["structure"]
        assert s["ok"], (comp, [x for x in s["checks"] if not x["passed"]])
        assert any(d["backend"] == "VulkanBackend" and d["bytes"] > 0 for d in s["delegates"])
        for graph in s["vulkan"]:
            assert graph["ops"] > 0 and "FLOAT32" not in graph["tensor_dtypes"]  # force_fp16
            assert graph["tensor_dtypes"].get("FLOAT16", 0) > 0
        ops = {op for graph in s["vulkan"] for op in graph["op_types"]}
        if comp != "text_encoder":
            assert "aten.convolution.default" in ops  # batch-1 convs are taken
        checks = {x["check"] for x in s["checks"]}
        if comp in QUANTIZED.get(name, ()):
            assert "weights_quantized" in checks
            assert any(g["constant_dtypes"].get("INT8", 0) + g["constant_dtypes"].get("UINT8", 0)
                       for g in s["vulkan"]), (comp, [g["constant_dtypes"] for g in s["vulkan"]])


def test_summary_reports_coverage(built):
    from mdship.report import format_summary

    name, result, manifest = built
    text = format_summary([result])
    assert "deleg%" in text and "simulated" in text
    assert f"note: {result.target} cannot run here" in text


def test_simulated_twin_is_the_graph_that_was_lowered(built):
    """The twin that simulated verification and fidelity run is saved beside the program: lowering it again with
    the target's partitioners gives the bundle's program byte for byte (same ops, dtypes and weights), and it is
    the fp32 export of a force_fp16 recipe (the delegate, and so the simulation, computes it in fp16)."""
    import torch

    from mdship import backends
    from mdship.recipe import Target
    from mdship.stages import lower, serialize
    from mdship.stages.export import ExportedComponent

    name, result, manifest = built
    target = Target.model_validate(manifest["target"])
    backend = backends.get("vulkan")
    comp = result.components["unet"]
    twin = torch.export.load(str(comp.program.with_name("twin.pt2")))
    floats = {n.meta["val"].dtype for n in twin.graph.nodes
              if n.op == "placeholder" and n.meta["val"].dtype.is_floating_point}
    assert floats == {torch.float32}  # exported fp32; force_fp16 is the delegate's business
    inputs = tuple(torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for s in manifest["components"]["unet"]["inputs"])
    assert simulate.twin(twin, forced_fp16=True)(*inputs).dtype == torch.float32  # fp32 interface
    spec = None  # the Vulkan partitioner does not depend on the component spec
    relowered = lower.run(ExportedComponent("unet", twin, inputs, "fp32"), backend.partitioners(target, spec),
                          backend.transform_passes())
    assert serialize.run(relowered).sha256 == manifest["components"]["unet"]["sha256"]
