"""XNNPACK's own knowledge (mdship/backends/xnnpack.py): fp16 convolution weights, quantized embeddings on the
CPU kernels, 1x1 convolutions quantized as Linears, and the dynamic int8 convolution it still cannot run."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from mdship import backends, programs
from mdship.backends.base import delegates
from mdship.backends.xnnpack import FP16_CONV_VERIFIED, fp16_conv_weights, graph_summary
from mdship.checkpoint import Checkpoint
from mdship.metrics import tensor_psnr
from mdship.models.unet import swish
from mdship.recipe import ComponentSpec, LayerSpec, Target
from mdship.stages import export, lower, quantize, serialize

XNNPACK = backends.get("xnnpack")
TARGET = Target(backend="xnnpack")


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(8, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=32), \
            nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.a(x))))


def _program(module, precision: str, inputs, spec: ComponentSpec | None = None):
    spec = spec or ComponentSpec(precision=precision)
    exported = (quantize.run("c", module, spec, XNNPACK, inputs) if spec.is_quantized
                else export.run("c", module, precision, inputs))
    with XNNPACK.lowering(TARGET, spec):
        lowered = lower.run(exported, XNNPACK.partitioners(TARGET, spec), XNNPACK.transform_passes())
    return serialize.run(lowered).data, exported.quantization


def _lowered_with_cap(monkeypatch, exported, spec: ComponentSpec, limit: int):
    """`exported` lowered by the XNNPACK backend with partitions capped at `limit` weight bytes."""
    import mdship.backends.xnnpack as xnnpack_backend

    monkeypatch.setattr(xnnpack_backend, "MAX_PARTITION_WEIGHT_BYTES", limit)
    with XNNPACK.lowering(TARGET, spec):
        return lower.run(exported, XNNPACK.partitioners(TARGET, spec), XNNPACK.transform_passes())


def _constant_bytes(pte: bytes) -> dict:
    total: dict = {}
    for d in delegates(pte):
        for dtype, n in graph_summary(d["blob"])["constant_bytes"].items():
            total[dtype] = total.get(dtype, 0) + n
    return total


def test_fp16_programs_store_fp16_convolution_weights():
    """Without the scoped override ExecuTorch 1.5.1 stores conv filters in fp32 even in an fp16 program; with it the
    filters are fp16, the program is half the size, loads and runs on the stock runtime."""
    assert "1.5.1" in FP16_CONV_VERIFIED
    torch.manual_seed(0)
    module, x = Convs().eval(), (torch.randn(1, 8, 16, 16),)
    pte, _ = _program(module, "fp16", x)
    constants = _constant_bytes(pte)
    assert set(constants) == {"fp16"}, constants
    exported = export.run("c", module, "fp16", x)  # the stock serializer, for comparison
    stock = serialize.run(lower.run(exported, XNNPACK.partitioners(TARGET, None), XNNPACK.transform_passes())).data
    stock_constants = _constant_bytes(stock)
    assert set(stock_constants) == {"fp32"}, stock_constants
    assert constants["fp16"] * 2 == stock_constants["fp32"] and len(pte) < len(stock) - constants["fp16"] * 0.9
    assert tensor_psnr(module(*x), programs.execute(pte, x)[0]) > 55


def test_the_override_is_scoped():
    import executorch.backends.xnnpack.operators  # noqa: F401
    from executorch.backends.xnnpack.operators.node_visitor import _node_visitor_dict

    conv = _node_visitor_dict["aten.convolution.default"]
    before = conv.define_node
    with fp16_conv_weights():
        assert conv.define_node is not before
    assert conv.define_node is before


def test_quantized_embeddings_run_as_quantized_kernels():
    """A text encoder whose embeddings the recipe quantizes: the program's token table is int8 / int4, run by
    ExecuTorch's quantized embedding kernels, smaller, and close to eager."""
    te = Checkpoint.from_preset("tiny", 0).modules()["text_encoder"]
    ids = (torch.randint(0, 4000, (1, 77)),)
    fp32, _ = _program(te, "fp32", ids)
    for weights, granularity, op, min_db in (("int8", "per_channel", "embedding_byte", 50),
                                             ("int4", "per_group", "embedding_4bit", 30)):
        spec = ComponentSpec(embedding=LayerSpec(weights=weights, granularity=granularity))
        pte, report = _program(te, "fp32", ids, spec)
        assert report["quantized"]["embedding"] == 2, report  # token and position tables
        structure = XNNPACK.inspect(pte, TARGET, spec, [], [], report["quantized"])
        assert any(o.startswith(f"quantized_decomposed::{op}") for o in structure["cpu_operators"]), structure
        assert not [o for o in structure["cpu_operators"] if o.startswith("aten::embedding")]
        assert structure["ok"], structure["checks"]
        assert len(pte) < 0.8 * len(fp32), (weights, len(pte), len(fp32))
        assert tensor_psnr(te(*ids), programs.execute(pte, ids)[0]) > min_db


def test_pointwise_convolutions_quantize_as_8da4w_linears():
    module, x = Convs().eval(), (torch.randn(1, 8, 16, 16),)
    spec = ComponentSpec(pointwise=LayerSpec(weights="int4", granularity="per_group", group_size=32,
                                             activations="int8_dynamic"), keep=[])
    pte, report = _program(module, "fp32", x, spec)
    assert report["quantized"] == {"pointwise": 1}, report
    assert "qbint4" in _constant_bytes(pte)
    assert tensor_psnr(module(*x), programs.execute(pte, x)[0]) > 25


def test_dynamic_int8_convolution_still_fails_at_run_time():
    """The capability table refuses XNNPACK conv int8 + int8_dynamic. A small conv stack lowers and runs, but the
    MobileDiffusion decoder's convolutions, PT2E-quantized with dynamic activations, fail at run time in ExecuTorch
    1.5.1 ("Propagating input shapes failed with code: xnn_status_invalid_parameter"). When this test fails, the
    toolchain has fixed it: lift the refusal in mdship/capabilities.py."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import OP_TO_ANNOTATOR
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from mdship.errors import BundleError
    from mdship.stages.export import ExportedComponent, ProgramModule

    decoder = Checkpoint.from_preset("tiny", 0).modules()["vae_decoder"]
    x = (torch.randn(1, 8, 8, 8),)
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)

    class Dynamic(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            return model

        def annotate(self, model):
            OP_TO_ANNOTATOR["conv"](model, config, lambda node: True)
            return model

    prepared = prepare_pt2e(torch.export.export(ProgramModule(decoder).eval(), x, strict=False).module(), Dynamic())
    prepared(*x)
    converted = torch.export.export(convert_pt2e(prepared), x, strict=False)
    lowered = lower.run(ExportedComponent("vae_decoder", converted, x, "fp32"), XNNPACK.partitioners(TARGET, None),
                        XNNPACK.transform_passes())
    with pytest.raises(BundleError, match="Propagating input shapes failed"):
        programs.execute(serialize.run(lowered).data, x)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x) * 0.5)


def test_convolutions_build_their_indirection_in_the_workspace():
    """Every regular convolution is serialized with XNNPACK's transient-indirection flag (depthwise ones cannot take
    it); the program computes exactly what the stock program computes, and the patch is scoped to the lowering."""
    import executorch.backends.xnnpack.operators  # noqa: F401
    from executorch.backends.xnnpack.operators.node_visitor import _node_visitor_dict

    torch.manual_seed(0)
    module, x = Convs().eval(), (torch.randn(1, 8, 16, 16),)
    static = LayerSpec(weights="int8", granularity="per_channel", activations="int8_static")
    for spec in (ComponentSpec(precision="fp32"), ComponentSpec(precision="fp16"), ComponentSpec(conv=static, keep=[])):
        if spec.is_quantized:  # XNNPACK has no static int8 depthwise convolution: two regular ones
            plain = TwoConvs().eval()
            exported = quantize.run("c", plain, spec, XNNPACK, x, [x])
            with XNNPACK.lowering(TARGET, spec):
                pte = serialize.run(lower.run(exported, XNNPACK.partitioners(TARGET, spec),
                                              XNNPACK.transform_passes())).data
        else:
            pte, _ = _program(module, spec.precision, x, spec)
        summary = [graph_summary(d["blob"]) for d in delegates(pte)]
        # a and c (1x1: a Conv2d node too), not the depthwise b; static int8: both of TwoConvs
        assert sum(s["transient_indirection_convs"] for s in summary) == 2, (spec, summary)
    pte, _ = _program(module, "fp32", x)
    exported = export.run("c", module, "fp32", x)
    stock = serialize.run(lower.run(exported, XNNPACK.partitioners(TARGET, None), XNNPACK.transform_passes())).data
    assert [graph_summary(d["blob"])["transient_indirection_convs"] for d in delegates(stock)] == [0]
    assert torch.equal(programs.execute(pte, x)[0], programs.execute(stock, x)[0])
    conv = _node_visitor_dict["aten.convolution.default"]
    before = conv.define_node
    with XNNPACK.lowering(TARGET, ComponentSpec(precision="fp16")):
        assert conv.define_node is not before
    assert conv.define_node is before


class Stack(nn.Module):
    """Six 3x3 convolutions with a long skip, a SiLU between each: a graph with weights to cut."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(32, 32, 3, padding=1) for _ in range(6))

    def forward(self, x):
        skip, h = x, x
        for conv in self.convs:
            h = conv(h)
            h = h * torch.sigmoid(h)
        return h + skip


@pytest.mark.parametrize("spec", [
    ComponentSpec(precision="fp32"),
    ComponentSpec(conv=LayerSpec(weights="int8", granularity="per_channel", activations="int8_static"), keep=[]),
], ids=["fp32", "static_int8"])
def test_large_partitions_are_cut_by_weight_bytes(monkeypatch, spec):
    """With a cap of two convolutions' weights, the six-convolution graph lowers into three partitions (no more: the
    long skip is a float result and may cross), all delegated, and computes what the one-partition program computes
    (quantize / dequantize nodes never cross a cut: check_lowered finds none left on the CPU)."""
    torch.manual_seed(0)
    module, x = Stack().eval(), (torch.randn(1, 32, 16, 16),)
    # a convolution's weights: fp32 filter and bias; or int8 filter, fp32 bias, per-channel fp32 scales, int64 zero points
    conv_bytes = 32 * 32 * 9 * 4 + 32 * 4 if not spec.is_quantized else 32 * 32 * 9 + 32 * (4 + 4 + 8)
    exported = (quantize.run("c", module, spec, XNNPACK, x, [x]) if spec.is_quantized
                else export.run("c", module, spec.precision, x))

    def program(limit):
        lowered = _lowered_with_cap(monkeypatch, exported, spec, limit)
        if spec.is_quantized:
            XNNPACK.check_lowered("c", exported.quantization, lowered.coverage)
        return serialize.run(lowered).data, lowered.coverage

    whole, whole_coverage = program(2**40)
    cut, cut_coverage = program(2 * conv_bytes)
    assert whole_coverage["partitions"] == 1 and cut_coverage["partitions"] == 3, cut_coverage
    assert cut_coverage["non_delegated_ops"] == whole_coverage["non_delegated_ops"] == 0
    assert torch.equal(programs.execute(cut, x)[0], programs.execute(whole, x)[0])


class Pairs(nn.Module):
    """Three residual pairs of 3x3 convolutions back to back: inside a pair the only float result between the two
    convolutions is the first one's, which its output quantize reads."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(32, 32, 3, padding=1) for _ in range(6))

    def forward(self, h):
        for first, second in zip(self.convs[::2], self.convs[1::2]):
            h = h + second(first(h))
        return h


def test_a_cut_never_separates_a_quantized_convolution_from_its_output_quantize(monkeypatch):
    """Asked for pieces of one convolution's weights, a static int8 graph is cut only after each residual add: XNNPACK
    fuses a convolution and the quantize of its result into one int8-output convolution, and a piece that ended
    between them would not load (xnn_status_invalid_parameter)."""
    torch.manual_seed(0)
    module, x = Pairs().eval(), (torch.randn(1, 32, 16, 16),)
    spec = ComponentSpec(conv=LayerSpec(weights="int8", granularity="per_channel", activations="int8_static"), keep=[])
    exported = quantize.run("c", module, spec, XNNPACK, x, [x])
    made = {}
    for limit in (2**40, 32 * 32 * 9 + 32 * (4 + 4 + 8)):
        lowered = _lowered_with_cap(monkeypatch, exported, spec, limit)
        made[limit] = (serialize.run(lowered).data, lowered.coverage["partitions"])
    (whole, one), (cut, pieces) = made.values()
    assert (one, pieces) == (1, 3)
    assert torch.equal(programs.execute(cut, x)[0], programs.execute(whole, x)[0])


class Rewritable(nn.Module):
    """What XNNPACK's passes rewrite (a batch norm folded into its convolution, a ReLU fused into it, a cat of more
    inputs than XNNPACK's concatenate takes) beside what none of them touches (SiLU, adds)."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.out = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(48, 8, 1)
        self.norm.running_mean.uniform_(-1, 1)
        self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x)))
        h = torch.cat([h, x, h * 2, x + 1, h - x, h * torch.sigmoid(h)], dim=1)
        return self.out(h) + x


@pytest.mark.parametrize("spec", [
    ComponentSpec(precision="fp32"),
    ComponentSpec(conv=LayerSpec(weights="int8", granularity="per_channel", activations="int8_static"), keep=["conv"]),
], ids=["fp32", "static_int8"])  # a batch-normed conv stays float in PT2E
def test_passes_that_change_nothing_skip_their_retrace(monkeypatch, spec):
    """With `retrace_only_when_changed`, the XNNPACK passes that matched nothing are not re-traced, those that
    rewrote the graph are, and the program is the stock lowering's, byte for byte."""
    from executorch.exir.pass_base import ExportPass

    from mdship.backends.xnnpack import retrace_only_when_changed

    torch.manual_seed(0)
    module, x = Rewritable().eval(), (torch.randn(1, 8, 16, 16),)
    exported = (quantize.run("c", module, spec, XNNPACK, x, [x]) if spec.is_quantized
                else export.run("c", module, "fp32", x))
    retraced, retrace = [], ExportPass.call
    monkeypatch.setattr(ExportPass, "call", lambda self, gm: (retraced.append(type(self).__name__), retrace(self, gm))[1])

    def lowered() -> tuple[bytes, list[str]]:
        retraced.clear()
        program = serialize.run(lower.run(exported, XNNPACK.partitioners(TARGET, spec), XNNPACK.transform_passes()))
        return program.data, list(retraced)

    lowered()  # the first lowering in a process also builds ExecuTorch's pattern graphs (cached)
    stock, stock_retraces = lowered()
    with retrace_only_when_changed():
        skipping, retraces = lowered()
    assert skipping == stock
    assert {"FuseActivationPass", "DecomposeConcatenate"} <= set(retraces)  # they rewrote the graph
    assert ("FuseBatchNormPass" in retraces) == (not spec.is_quantized)  # PT2E folds the batch norm itself
    assert "Conv1dUnsqueezePass" not in retraces and "PReLUReshapePass" not in retraces  # nothing to rewrite
    assert {"Conv1dUnsqueezePass", "PReLUReshapePass"} <= set(stock_retraces)
    assert len(retraces) < len(stock_retraces)
    assert lowered()[1] == stock_retraces  # the override ended with the block


def test_4bit_weights_count_at_their_stored_size(monkeypatch):
    """8da4w weights are held one value per int8 in the graph and stored two to a byte: a partition is cut by the
    bytes it stores. Four 256 x 256 int4 linears store ~176 KB (~307 KB as int8): under a 200 KB cap they stay one
    partition, under 100 KB they are cut, and both programs compute the same."""
    torch.manual_seed(0)
    module = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(256, 256), nn.SiLU())]).eval()
    x = (torch.randn(4, 256),)
    spec = ComponentSpec(linear=LayerSpec(weights="int4", granularity="per_group", group_size=32,
                                          activations="int8_dynamic"), keep=[])
    exported = quantize.run("c", module, spec, XNNPACK, x)

    def program(limit):
        lowered = _lowered_with_cap(monkeypatch, exported, spec, limit)
        XNNPACK.check_lowered("c", exported.quantization, lowered.coverage)
        return serialize.run(lowered).data, lowered.coverage["partitions"]

    (whole, one), (cut, pieces) = program(200_000), program(100_000)
    assert (one, pieces) == (1, 2)
    assert "qbint4" in _constant_bytes(whole)
    assert torch.equal(programs.execute(cut, x)[0], programs.execute(whole, x)[0])


class Normed(nn.Module):
    """Convolution, GroupNorm and SiLU (as the models write it), a convolution, then LayerNorm and a linear over the
    channels: the shape of the decoder's and the transformers' blocks."""

    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(8, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.Conv2d(32, 32, 3, padding=1)
        self.ln, self.fc = nn.LayerNorm(32), nn.Linear(32, 32)

    def forward(self, x):
        h = self.b(swish(self.norm(self.a(x))))
        tokens = h.flatten(2).transpose(1, 2)
        return self.fc(self.ln(tokens))


def test_fp16_programs_compute_in_fp16_after_their_norms(tmp_path):
    """XNNPACK fuses mean(x * x) into a "mean squared" reduction that its fp16 path lacks, and then computes that node
    and everything after it in fp32, with fp32 copies of the fp16 weights. The norms' export form keeps the variance
    out of that pattern in fp16: every convolution and linear of the program runs as an F16 operator (on any CPU
    with F16C or fp16 arithmetic: this one, and phones), none as F32."""
    from mdship.devices import etdump_operators

    torch.manual_seed(0)
    module, x = Normed().eval(), (torch.randn(1, 8, 16, 16),)
    pte, _ = _program(module, "fp16", x)
    path = tmp_path / "normed.pte"
    path.write_bytes(pte)
    program = programs.load(path, enable_etdump=True)
    out = programs.Method(program, "forward", str(path)).outputs(*x)[0]
    program.write_etdump_result_to_file(str(tmp_path / "normed.etdp"), os.devnull)
    gemms = {op: n for op, n in etdump_operators(tmp_path / "normed.etdp").items()
             if op.startswith(("Convolution", "Fully Connected"))}
    assert gemms and all("F16" in op and "F32" not in op for op in gemms), gemms
    assert tensor_psnr(module(*x), out.float()) > 40
