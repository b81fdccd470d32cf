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
    twin = torch.export.load(str(comp.program.with_name("twin.forward.pt2")))
    floats = {n.meta["val"].dtype for n in twin.graph.nodes
              if n.op == "placeholder" and n.meta["val"].dtype.is_floating_point}
    assert floats == {torch.float32}  # exported fp32; force_fp16 is the delegate's business
    inputs = tuple(torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for s in manifest["components"]["unet"]["inputs"])
    assert simulate.twin(twin, forced_fp16=True)(*inputs).dtype == torch.float32  # fp32 interface
    spec = None  # the Vulkan partitioner does not depend on the component spec
    relowered = lower.run(ExportedComponent("unet", twin, inputs, "fp32"), backend.partitioners(target, spec),
                          backend.transform_passes())
    assert serialize.run(relowered).sha256 == manifest["components"]["unet"]["sha256"]


def test_groupnorm_is_not_rewritten_for_vulkan(built):
    """Rewrites are the backend's: Vulkan takes GroupNorm natively, so its programs run native_group_norm where
    XNNPACK's run the 4-D-means rewrite."""
    from mdship import backends

    name, result, manifest = built
    assert "group_norm" not in backends.get("vulkan").rewrites and "group_norm" in backends.get("xnnpack").rewrites
    for comp in ("unet", "vae_decoder"):
        ops = {op for g in manifest["components"][comp]["structure"]["vulkan"] for op in g["op_types"]}
        assert "aten.native_group_norm.default" in ops, (comp, sorted(ops))


def _lower_groupnorm_block(rewrites, size: int) -> dict:
    import torch
    from torch import nn

    from mdship import backends
    from mdship.recipe import Target
    from mdship.stages import lower
    from mdship.stages.export import ExportedComponent, ProgramModule

    block = nn.Sequential(nn.GroupNorm(32, 128, eps=1e-6), nn.SiLU(), nn.Conv2d(128, 128, 3, padding=1)).eval()
    x = torch.randn(1, 128, size, size)
    program = torch.export.export(ProgramModule(block, torch.float32, rewrites).eval(), (x,), strict=False)
    target = Target.model_validate({"backend": "vulkan", "fallback": ["xnnpack"], "vulkan": {"force_fp16": True}})
    vulkan = backends.get("vulkan")
    return lower.run(ExportedComponent("block", program, (x,), "fp32"), vulkan.partitioners(target, None),
                     vulkan.transform_passes()).coverage


def test_vulkan_rewrites_keep_a_large_groupnorm_in_one_partition():
    """A decoder level at 256 px (GroupNorm over 1x128x256x256; the 512 px decoder's last level is 4x larger): with
    Vulkan's rewrites (native GroupNorm) it is one Vulkan partition and nothing on the CPU. The old XNNPACK GroupNorm
    rewrite, means over (B, G, C/G, H*W), made Vulkan refuse the reductions (1x32x4x65536: 1-2 dims, textures at most
    16384 wide) and split the paper-scale decoder into 37 partitions; XNNPACK's rewrite now works from per-channel
    statistics ([B, C, 1, 1] reshapes only, issue #16), and that form stays one Vulkan partition too."""
    from mdship import backends

    own = _lower_groupnorm_block(backends.get("vulkan").rewrites, 256)
    assert own["partitions"] == 1 and own["partitions_by_backend"] == {"VulkanBackend": 1}, own
    assert own["non_delegated_ops"] == 0 and own["delegated_flops_share"] == 1.0
    rewritten = _lower_groupnorm_block(backends.get("xnnpack").rewrites, 256)
    assert rewritten["partitions"] == 1 and rewritten["non_delegated_ops"] == 0, rewritten


@pytest.mark.slow
def test_paper_scale_decoder_is_one_vulkan_partition_at_512px():
    """The paper-scale (random-init) decoder at 512 px, lowered as md-vulkan-fp16 lowers it: one Vulkan partition,
    no op on the CPU (it was 19 Vulkan + 18 XNNPACK partitions with the XNNPACK GroupNorm rewrite)."""
    import torch

    from mdship import backends
    from mdship.models.presets import get_preset
    from mdship.models.vae import AutoencoderKL, ScaledDecoder
    from mdship.recipe import Target
    from mdship.stages import lower
    from mdship.stages.export import ExportedComponent, ProgramModule

    decoder = ScaledDecoder(AutoencoderKL(get_preset("mobilediffusion").vae)).eval()
    x = torch.randn(1, 8, 64, 64)
    vulkan = backends.get("vulkan")
    program = torch.export.export(ProgramModule(decoder, torch.float32, vulkan.rewrites).eval(), (x,), strict=False)
    target = Target.model_validate({"backend": "vulkan", "fallback": ["xnnpack"], "vulkan": {"force_fp16": True}})
    coverage = lower.run(ExportedComponent("vae_decoder", program, (x,), "fp32"), vulkan.partitioners(target, None),
                         vulkan.transform_passes()).coverage
    assert coverage["partitions_by_backend"] == {"VulkanBackend": 1} and coverage["non_delegated_ops"] == 0, coverage
