"""The quantize stage without lowering: which layers a recipe quantizes, keeps or skips, that torchao and PT2E
really quantize them (outputs change, stay close), and that a quantization that silently does nothing raises."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mdship import backends
from mdship.capabilities import CapabilityError
from mdship.metrics import tensor_psnr
from mdship.recipe import ComponentSpec, LayerSpec
from mdship.stages import quantize
from mdship.errors import QuantizationError

W8A8_DYNAMIC = LayerSpec(weights="int8", granularity="per_channel", activations="int8_dynamic")
W4A8_DYNAMIC = LayerSpec(weights="int4", granularity="per_group", group_size=32, activations="int8_dynamic")
W8A8_STATIC = LayerSpec(weights="int8", granularity="per_channel", activations="int8_static")


@pytest.fixture(scope="module")
def tiny():
    from mdship.checkpoint import Checkpoint

    return Checkpoint.from_preset("tiny", 0).modules()


class ConvNet(nn.Module):
    """conv_in -> body conv -> cat with its input -> 1x1 conv_out: what the UNet does, in miniature."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.conv_out = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        h = self.conv_in(x)
        return self.conv_out(torch.cat([h, self.body(h)], dim=1))


def test_plan_classifies_keeps_and_quantizes_the_tiny_unet(tiny):
    spec = ComponentSpec(linear=W4A8_DYNAMIC, conv=W8A8_STATIC)
    plan = quantize.plan("unet", tiny["unet"], spec, "xnnpack")
    by_name = {lp.name: lp for lp in plan.layers}
    assert by_name["mid_transformer.layers.0.self_attn.to_kv"].layer_type == "attention"
    assert by_name["down.1.transformers.0.layers.0.ff.proj_in"].layer_type == "linear"
    assert by_name["down.1.resnets.0.conv1.depthwise"].layer_type == "conv"
    assert by_name["conv_in"].action == "keep" and by_name["conv_in"].reason == "keep: conv_in"
    assert by_name["time_embedding.2"].action == "keep"
    assert by_name["mid_transformer.layers.0.self_attn.to_q"].method == "dynamic"
    assert by_name["up.2.resnets.0.conv1"].method == "static"
    assert by_name["down.1.resnets.0.conv1.pointwise"].layer_type == "pointwise"  # a 1x1 conv: follows conv
    assert by_name["down.1.resnets.0.conv1.pointwise"].method == "static"
    report = plan.report()
    assert report["quantized"] == {"linear": 50, "conv": 28, "attention": 36, "pointwise": 29}
    assert sorted(report["kept_float"]) == ["conv_in", "conv_out", "time_embedding.0", "time_embedding.2"]
    assert report["skipped"] == []
    assert report["scheme"]["attention"]["how"].endswith("(8da4w)")  # attention follows linear

    text = quantize.plan("text_encoder", tiny["text_encoder"], ComponentSpec(linear=W8A8_DYNAMIC), "xnnpack")
    assert text.report()["quantized"] == {"linear": 4, "attention": 8}  # q/k/v/out_proj of 2 CLIP layers
    decoder = quantize.plan("vae_decoder", tiny["vae_decoder"], ComponentSpec(conv=W8A8_STATIC), "xnnpack")
    assert {"decoder.conv_in", "decoder.conv_out"} <= set(decoder.report()["kept_float"])  # globs match name tails


def test_shapes_a_scheme_cannot_take_are_skipped_and_listed():
    module = nn.Sequential(nn.Linear(48, 64), nn.Linear(64, 16))
    plan = quantize.plan("text_encoder", module, ComponentSpec(linear=W4A8_DYNAMIC, keep=[]), "xnnpack")
    assert plan.names() == ["1"]
    assert plan.report()["skipped"] == [{"layer": "0", "reason": "in_features 48 is not a multiple of group_size 32"}]

    convs = nn.Sequential(nn.Conv2d(64, 64, 3, groups=64), nn.Conv2d(64, 32, 1), nn.Conv2d(48, 32, 1),
                          nn.Conv2d(64, 32, 3))
    weight_only = ComponentSpec(conv=LayerSpec(weights="int4", granularity="per_group", group_size=32), keep=[])
    plan = quantize.plan("unet", convs, weight_only, "coreml", minimum_deployment_target="iOS18")
    assert plan.names() == ["1", "3"]  # 1x1 convs (pointwise) follow conv's spec
    reasons = {s["layer"]: s["reason"] for s in plan.report()["skipped"]}
    assert reasons["0"].startswith("input channels per group 1") and "48" in reasons["2"]


def test_weight_only_is_refused_on_xnnpack():
    """It lowers and then computes garbage on XNNPACK: the plan refuses it even for a spec built in Python."""
    spec = ComponentSpec(linear=LayerSpec(weights="int8", granularity="per_channel"))
    with pytest.raises(CapabilityError, match="garbage"):
        quantize.plan("unet", nn.Linear(64, 64), spec, "xnnpack")
    assert quantize.plan("unet", nn.Sequential(nn.Linear(64, 64)), spec, "vulkan").names() == ["0"]


@pytest.mark.parametrize("weights", [W8A8_DYNAMIC, W4A8_DYNAMIC], ids=["8da8w", "8da4w"])
def test_torchao_quantizes_the_tiny_text_encoder_close_to_fp32(tiny, weights):
    from torchao.utils import TorchAOBaseTensor

    module = tiny["text_encoder"]
    plan = quantize.plan("text_encoder", module, ComponentSpec(linear=weights), "xnnpack")
    quantized = quantize.quantized_module(module, plan)
    layers = dict(quantized.component.named_modules())
    assert all(isinstance(layers[n].weight, TorchAOBaseTensor) for n in plan.names())
    assert isinstance(dict(module.named_modules())[plan.names()[0]].weight, nn.Parameter)  # original untouched
    ids = torch.randint(0, 300, (2, 77))
    with torch.no_grad():
        psnr = tensor_psnr(module(ids), quantized(ids))
    assert 20 < psnr < 100, psnr  # changed, but close
    if weights is W4A8_DYNAMIC:
        assert psnr < 55  # int4 is coarser than int8: the weight dtype was honoured


def test_static_int8_quantizes_exactly_the_planned_convs():
    torch.manual_seed(0)
    module = ConvNet().eval()
    spec = ComponentSpec(conv=W8A8_STATIC, keep=["conv_in"])
    calibration = [(torch.randn(1, 4, 8, 8),) for _ in range(4)]
    exported = quantize.run("vae_decoder", module, spec, backends.get("xnnpack"), calibration[0], calibration)
    assert exported.quantization["quantized"] == {"conv": 1, "pointwise": 1}  # body, and the 1x1 conv_out
    assert exported.quantization["kept_float"] == ["conv_in"]
    graph = exported.program.graph
    assert quantize._static_quantized_layers(exported.program.module()) == {"body", "conv_out"}
    [cat] = [n for n in graph.nodes if n.target == torch.ops.aten.cat.default]
    # XNNPACKQuantizer's cat annotator ignores filters and would quantize every cat input, the float conv_in's too
    assert "dequantize" not in str(cat.args[0][0].target) and "dequantize" in str(cat.args[0][1].target)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        psnr = tensor_psnr(module(x), exported.program.module()(x))
    assert 25 < psnr < 100, psnr


def test_quantization_that_does_nothing_raises(monkeypatch):
    module = nn.Sequential(nn.Linear(64, 64))
    plan = quantize.plan("unet", module, ComponentSpec(linear=W8A8_DYNAMIC, keep=[]), "xnnpack")
    monkeypatch.setattr("torchao.quantization.quantize_", lambda *args, **kwargs: None)
    with pytest.raises(QuantizationError, match="left 1 linear layer"):
        quantize.quantized_module(module, plan)
    monkeypatch.undo()

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class Nothing(XNNPACKQuantizer):
        def annotate(self, model):
            return model

    xnnpack = backends.get("xnnpack")
    monkeypatch.setattr(type(xnnpack), "static_quantizer", lambda self, names: Nothing())
    x = (torch.randn(1, 4, 8, 8),)
    with pytest.raises(QuantizationError, match="PT2E left 2 layer"):
        quantize.run("unet", ConvNet().eval(), ComponentSpec(conv=W8A8_STATIC, keep=["conv_in"]), xnnpack, x, [x])


def test_quantized_ops_left_outside_xnnpack_fail():
    report = {"quantized": {"conv": 3}}
    xnnpack = backends.get("xnnpack")
    xnnpack.check_lowered("unet", report, {"fallback_ops": {"aten_cat_default": 2}})
    with pytest.raises(QuantizationError, match="did not take the quantized layers"):
        xnnpack.check_lowered("unet", report,
                              {"fallback_ops": {"quantized_decomposed_dequantize_per_tensor_default": 4}})


def test_readme_carries_the_capability_table():
    from mdship.capabilities import capability_markdown

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert capability_markdown() in readme, "README's Quantization table is stale: paste capability_markdown()"


def test_a_group_size_that_fits_no_layer_is_a_user_error():
    """Quantizing nothing is never what a recipe meant: a group size that divides no layer is refused by name."""
    from mdship.errors import UserError

    module = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32))
    spec = ComponentSpec(linear=LayerSpec(weights="int4", granularity="per_group", group_size=96,
                                          activations="int8_dynamic"), keep=[])
    with pytest.raises(UserError, match=r"components\.unet\.linear: int4 per_group \(group_size 96\) quantizes none "
                                        r"of the 2 linear layers: 0: in_features 64 is not a multiple of group_size 96"):
        quantize.plan("unet", module, spec, "xnnpack")
    spec = ComponentSpec(linear=LayerSpec(weights="int4", granularity="per_group", group_size=64,
                                          activations="int8_dynamic"), keep=[])
    assert quantize.plan("unet", module, spec, "xnnpack").names() == ["0", "1"]


# ----------------------------------------------------------------------------------------------------- per layer
def test_layer_overrides_decide_single_layers_and_keep_still_wins(tiny):
    """`layers:` (what mdship tune writes) gives named layers their own format; the rest follow their type, kept
    layers stay float, and the report lists each override with the layers it decided."""
    spec = ComponentSpec(linear=W4A8_DYNAMIC, conv=W8A8_STATIC, layers={
        "mid_transformer.layers.0.ff.proj_in": W8A8_DYNAMIC,
        "*.cross_attn.to_kv": LayerSpec(weights="fp32"),
        "down.1.resnets.0.conv1.pointwise": W4A8_DYNAMIC,
    })
    plan = quantize.plan("unet", tiny["unet"], spec, "xnnpack")
    by_name = {lp.name: lp for lp in plan.layers}
    assert by_name["mid_transformer.layers.0.ff.proj_in"].spec.weights == "int8"
    assert by_name["mid_transformer.layers.1.ff.proj_in"].spec.weights == "int4"  # not named: its type's format
    assert by_name["mid_transformer.layers.0.cross_attn.to_kv"].action == "float"
    assert by_name["down.1.resnets.0.conv1.pointwise"].method == "dynamic"  # a 1x1 conv as an 8da4w linear
    assert by_name["down.1.resnets.0.conv2.pointwise"].method == "static"
    report = plan.report()
    kv = report["overrides"]["*.cross_attn.to_kv"]
    assert kv["weights"] == "fp32" and kv["float"] == len(kv["layers"]) > 2 and kv["quantized"] == {}
    assert report["overrides"]["mid_transformer.layers.0.ff.proj_in"]["quantized"] == {"linear": 1}
    assert report["quantized"]["linear"] == 49  # 50 linears, one decided by an override

    kept = ComponentSpec(linear=W4A8_DYNAMIC, layers={"time_*": W8A8_DYNAMIC})  # time_embedding.* is kept
    by_name = {lp.name: lp for lp in quantize.plan("unet", tiny["unet"], kept, "xnnpack").layers}
    assert by_name["time_embedding.0"].action == "keep" and by_name["time_embedding.0"].pattern == "time_*"
    assert by_name["down.0.resnets.0.time_proj"].spec.weights == "int8"


def test_layer_override_mistakes_are_user_errors_that_name_the_layer(tiny):
    from mdship.errors import UserError

    def plan(layers, **kwargs):
        return quantize.plan("unet", tiny["unet"], ComponentSpec(linear=W4A8_DYNAMIC, layers=layers, **kwargs),
                             "xnnpack")

    with pytest.raises(UserError, match=r"components\.unet\.layers\['mid\.ff\.proj_in'\]: matches no layer of unet"):
        plan({"mid.ff.proj_in": W8A8_DYNAMIC})
    with pytest.raises(UserError, match=r"layer mid_transformer\.layers\.0\.ff\.proj_in matches both '\*\.ff\.\*' "
                                        r"and 'mid_transformer\.\*'; expected each layer matched by at most one"):
        plan({"*.ff.*": W8A8_DYNAMIC, "mid_transformer.*": W4A8_DYNAMIC})
    weight_only = LayerSpec(weights="int8", activations="fp32")  # legal for embeddings only on XNNPACK
    with pytest.raises(UserError, match=r"layers\['\*\.to_kv'\]: matches attention layer "
                                        r"down\.1\.transformers\.0\.layers\.0\.cross_attn\.to_kv: xnnpack: attention "
                                        r"weights int8 with activations fp32 \(weight-only\) is not supported: "
                                        r"XNNPACK claims weight-only"):
        plan({"*.to_kv": weight_only})
    with pytest.raises(UserError, match=r"layers\['conv_in'\]: int8 quantizes none of the 1 layer\(s\) it matches: "
                                        r"conv_in: keep: conv_in"):
        plan({"conv_in": W8A8_STATIC})


def test_overrides_quantize_each_layer_in_its_own_format():
    """torchao is applied once per (layer type, format): an int8 and an int4 linear side by side really are."""
    module = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 32)).eval()
    spec = ComponentSpec(linear=W4A8_DYNAMIC, keep=[], layers={"1": W8A8_DYNAMIC, "2": LayerSpec(weights="fp32")})
    the_plan = quantize.plan("unet", module, spec, "xnnpack")
    quantized = quantize.quantized_module(module, the_plan).component
    bits = {name: getattr(m.weight, "qdata", None) for name, m in quantized.named_children()}
    assert bits["2"] is None  # left float
    assert int(bits["0"].max()) <= 7 and int(bits["0"].min()) >= -8  # 4-bit values
    assert int(bits["1"].abs().max()) > 8  # 8-bit values


@pytest.mark.parametrize("kind, spec", [("linear", W8A8_DYNAMIC), ("linear", W4A8_DYNAMIC), ("linear", W8A8_STATIC),
                                        ("pointwise", W4A8_DYNAMIC), ("conv", W8A8_STATIC)])
def test_one_layer_in_a_format_computes_what_the_build_computes(kind, spec):
    """mdship tune measures each layer through quantize.layer_in_format: the same numbers as the layer quantized
    inside a whole module by the build's own path (torchao before export, PT2E after), and never the float ones."""
    torch.manual_seed(0)
    layer = {"linear": nn.Linear(64, 32), "pointwise": nn.Conv2d(64, 32, 1), "conv": nn.Conv2d(64, 32, 3, padding=1)
             }[kind].eval()
    x = torch.randn(2, 16, 64) if kind == "linear" else torch.randn(2, 64, 6, 6)
    one = quantize.layer_in_format(layer, kind, spec, backends.get("xnnpack"), [x])
    module = nn.Sequential(layer).eval()
    exported = quantize.run("unet", module, ComponentSpec(**{kind: spec}, keep=[]), backends.get("xnnpack"), (x,),
                            [(x,)])
    with torch.no_grad():
        mine, build, exact = one(x), exported.program.module()(x), layer(x)
    assert torch.allclose(mine, build, atol=1e-5), (mine - build).abs().max()
    assert not torch.allclose(mine, exact, atol=1e-6)
    assert 25 < tensor_psnr(exact, mine) < 80
    assert isinstance(one, type(layer)) or spec.activations == "int8_static" or kind == "pointwise"
    # calibrated on a crop (as the tuner records paper-scale inputs), it runs on the whole input too
    bigger = torch.randn(1, 40, 64) if kind == "linear" else torch.randn(1, 64, 12, 10)
    assert one(bigger).shape == layer(bigger).shape
