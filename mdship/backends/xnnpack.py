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
* fp16 programs store their convolution weights in fp16 (``lowering``): see `fp16_conv_weights`.
* No delegate partition holds more than MAX_PARTITION_WEIGHT_BYTES of weights (`weight_split_partitioner`): a
  runtime holds a partition's weights twice while packing them, so this bounds the loading peak.
* Every convolution computes its indirection buffer in the shared workspace, per run (``lowering``): see
  `transient_indirection`. It takes 138 MiB off the paper-scale decoder's running memory at 512 px.
* ExecuTorch's XNNPACK passes re-trace a partition only when they changed it (``lowering``): see
  `retrace_only_when_changed`. A quarter off the tiny quantized UNets' lowering, the same bytes.
* Inspection decodes each blob's XNNGraph (flatc) and counts its constant tensors by dtype and bytes, so a manifest
  shows what the delegate stores (fp16 conv filters, qcint8 / qbint4 quantized weights).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from contextlib import ExitStack, contextmanager
from importlib.metadata import version

import torch

from mdship.backends.base import Backend, Checks
from mdship.recipe.schema import ComponentSpec, Target

#: ExecuTorch releases whose XNNPACK serializer `fp16_conv_weights` was checked against (see its docstring)
FP16_CONV_VERIFIED = ("1.5.1",)
#: ... and whose XNNPACK runtime takes XNN_FLAG_TRANSIENT_INDIRECTION_BUFFER on a convolution node (`transient_indirection`)
TRANSIENT_INDIRECTION_VERIFIED = ("1.5.1",)
#: ... and whose XNNPACK passes `retrace_only_when_changed` was checked against
RETRACE_WHEN_CHANGED_VERIFIED = ("1.5.1",)
#: the most weight bytes one delegate partition holds (`weight_split_partitioner`)
MAX_PARTITION_WEIGHT_BYTES = 256 * 2**20
#: XNNPACK's xnnpack.h: "Use transient indirection buffer to reduce memory footprint"
XNN_FLAG_TRANSIENT_INDIRECTION_BUFFER = 0x00000020

_CONV_OPS = (torch.ops.aten.conv2d.default,)
_LINEAR_OPS = (torch.ops.aten.linear.default,)


class XnnpackBackend(Backend):
    name = "xnnpack"
    backend_id = "XnnpackBackend"
    runs_here = True

    def partitioners(self, target: Target, spec: ComponentSpec | None, whole_graph: bool = False) -> list:
        return [weight_split_partitioner(MAX_PARTITION_WEIGHT_BYTES)]

    def transform_passes(self) -> list:
        from executorch.backends.xnnpack.utils.configs import get_transform_passes

        return get_transform_passes()

    def lowering(self, target: Target, spec: ComponentSpec, quantization: dict | None = None):
        """Convolutions with transient indirection buffers; fp16 programs keep fp16 convolution weights; passes that
        change nothing skip their re-trace (each where this ExecuTorch release was checked)."""
        stack = ExitStack()
        if version("executorch") in RETRACE_WHEN_CHANGED_VERIFIED:
            stack.enter_context(retrace_only_when_changed())
        if version("executorch") in TRANSIENT_INDIRECTION_VERIFIED:
            stack.enter_context(transient_indirection())
        if spec.precision == "fp16" and version("executorch") in FP16_CONV_VERIFIED:
            stack.enter_context(fp16_conv_weights())
        return stack

    def lowering_key(self, spec: ComponentSpec) -> dict:
        """What the programs' bytes depend on beyond the graph: the convolution flag and the partition weight cap."""
        return {"conv_indirection": "transient" if version("executorch") in TRANSIENT_INDIRECTION_VERIFIED
                else "persistent", "max_partition_weight_bytes": MAX_PARTITION_WEIGHT_BYTES,
                "partition_weight_bytes": "as stored (4-bit packed)"}

    def inspect_program(self, operators: list[str], quantized: dict | None, checks: Checks) -> None:
        """Quantized embeddings must run as ExecuTorch's quantized embedding kernels."""
        if quantized and quantized.get("embedding"):
            kernels = sorted(op for op in operators if op.startswith("quantized_decomposed::embedding"))
            checks.add("quantized_embedding_kernels", bool(kernels), ", ".join(kernels) or "none in the program")

    def inspect_partitions(self, found, target, spec, inputs, outputs, quantized, checks: Checks) -> list[dict]:
        partitions = []
        for index, d in enumerate(found):
            try:
                partitions.append(graph_summary(d["blob"]))
            except Exception as exc:  # noqa: BLE001 - any failure to decode is a failed structural check
                checks.add(f"xnnpack[{index}].graph", False, f"{type(exc).__name__}: {exc}")
        if partitions and spec.precision == "fp16" and version("executorch") in FP16_CONV_VERIFIED:
            fp32 = sum(p["constant_bytes"].get("fp32", 0) for p in partitions)
            total = sum(sum(p["constant_bytes"].values()) for p in partitions)
            checks.add("weights_fp16", 0 < total and fp32 <= 0.05 * total,
                       f"{fp32} of {total} constant bytes are fp32 (biases of quantized ops, transposed convs)")
        return partitions

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

        overrides = quantization.get("overrides", {}).values()
        if not any(quantization.get("quantized", {}).values()) and not any(o["quantized"] for o in overrides):
            return
        embeddings = quantization.get("quantized", {}).get("embedding", 0) + sum(
            o["quantized"].get("embedding", 0) for o in overrides)
        stray = {op: n for op, n in coverage.get("fallback_ops", {}).items()
                 if "quantize" in op or "choose_qparams" in op}
        # a quantized embedding's weight dequantize stays on the CPU: quant fusion (stage serialize) turns it and
        # the lookup into one quantized embedding kernel, which inspect_program then checks for
        for op in [op for op in stray if "dequantize_affine" in op]:
            stray[op] -= embeddings
        stray = {op: n for op, n in stray.items() if n > 0}
        if stray:
            raise QuantizationError(f"{component}: XNNPACK did not take the quantized layers: "
                                    f"{', '.join(f'{op} x{n}' for op, n in stray.items())} left on the CPU")


def fp16_conv_weights():
    """Serialize non-transposed convolution filters and biases in the program's dtype (fp16 in an fp16 program).

    ExecuTorch 1.5.1's XNNPACK Conv2d visitor (backends/xnnpack/operators/op_conv2d.py) passes ``force_fp32=True``
    for the filter and bias: pytorch/executorch#9753 (Mar 2025) moved linear weights to fp16 and pinned conv weights
    to fp32 on purpose, because XNNPACK's fp16 deconvolution refuses fp16 filters at load
    (``xnn_status_invalid_parameter``). Non-transposed fp16 convolutions load and run correctly with fp16 filters on
    the stock 1.5.1 runtime (a probe and every fp16 bundle mdship builds: each is executed and gated against eager
    fp32), and the decoder, all convolutions, halves. So this scoped patch drops ``force_fp32`` inside
    ``Conv2d.define_node`` for non-transposed convolutions, for the duration of one lowering, and only for the
    ExecuTorch releases in FP16_CONV_VERIFIED. It becomes obsolete when upstream serializes conv weights in the
    graph's dtype (a flag on the partitioner, or fp16 filters by default for non-transposed convolutions).
    """
    def define_node(original, self, node, *args, **kwargs):
        if node.args[6]:  # transposed: XNNPACK's fp16 deconvolution needs fp32 filters
            return original(self, node, *args, **kwargs)
        define_tensor = self.define_tensor

        def keep_dtype(*a, force_fp32=False, **kw):  # fp32 tensors stay fp32; only the forcing is dropped
            return define_tensor(*a, **kw)

        self.define_tensor = keep_dtype
        try:
            return original(self, node, *args, **kwargs)
        finally:
            del self.define_tensor

    return _conv_visitor_wrapped(define_node)


@contextmanager
def _conv_visitor_wrapped(define_node):
    """ExecuTorch's XNNPACK Conv2d visitor with ``define_node(original, self, node, ...)`` in place of its own, for
    the duration of the block (the scoped overrides above and below)."""
    import executorch.backends.xnnpack.operators  # noqa: F401  (registers every visitor)
    from executorch.backends.xnnpack.operators.node_visitor import _node_visitor_dict

    Conv2d = _node_visitor_dict["aten.convolution.default"]  # the decorator returns None: take the registered class
    original = Conv2d.define_node
    Conv2d.define_node = lambda self, *args, **kwargs: define_node(original, self, *args, **kwargs)
    try:
        yield
    finally:
        Conv2d.define_node = original


def weight_split_partitioner(max_bytes: int):
    """ExecuTorch's XnnpackPartitioner, with every partition holding more than `max_bytes` of weights cut into
    consecutive pieces of at most about that much.

    Why: loading a program, ExecuTorch 1.5.1's XNNPACK delegate packs a partition's weights from the mapped .pte
    and releases the mapped bytes only once the whole partition is packed, so while one partition loads its weights
    are in memory twice. The paper-scale fp32 UNet is one 1.5 GB partition: the C++ runner's peak was 3,329 MiB
    while loading (1,501 of it the UNet's mapped pages) against 2,461 while running. In pieces, only one piece's
    weights are doubled at a time.

    How: a partition's nodes in graph order are cut where every tensor that crosses the cut is a float result of a
    computing op (never a quantize / dequantize node, so a quantized pattern is never separated from its ops, nor a
    convolution's or linear's result that a quantize op reads: XNNPACK takes the pair as one int8-output
    convolution, and refuses the convolution alone with xnn_status_invalid_parameter at load; and
    never a weight: each weight, and each op computed from weights alone such as a quantized weight's dequantize,
    goes with all of its readers). The pieces are consecutive in a topological order,
    so none can depend on a later one and each stays convex: the same ops run, in the same order, with a few more
    delegate calls and their inputs and outputs between pieces (ExecuTorch plans that memory).
    A dequantized result may not cross either, though XNNPACK could in principle take it as a float input: tried
    (2026-11-30), the paper-scale w8a8 UNet so cut built and then failed at execute ("Failed to resize output tensor
    for XNNExecutor"). The price: that UNet's skip tensors are dequantized convolution results alive across the whole
    UNet, so its 354 MiB partition stays whole (its load peak is within #16's bound anyway).
    Weights count at the bytes the program stores: 4-bit weights, which torchao holds one value per int8, at half
    their graph size (counted whole, the paper-scale 8da4w UNet's ~200 MiB read as ~380 and it was cut in three, the
    17.6 MiB of maps crossing the cuts planned by ExecuTorch for the runtime's life: its runner peak 754 -> 720 MiB).
    No library splits a partition by weight bytes: ExecuTorch's partitioners either merge as much as they can or
    (``per_op_mode``) not at all.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.utils import get_param_tensor, is_param_node
    from torch.fx.passes.infra.partitioner import Partition

    floats = (torch.float32, torch.float16, torch.bfloat16)

    def crosses_safely(node) -> bool:
        """A float result of a computing op, and not a convolution's or linear's result that a quantize op reads:
        XNNPACK takes that pair as one convolution (linear) with an int8 output."""
        val = node.meta.get("val")
        target = str(getattr(node, "target", ""))
        owns_output_quantize = any(op in target for op in ("convolution", "linear", "addmm", ".mm")) and any(
            "quantize_per" in str(getattr(user, "target", "")) and "dequantize" not in str(user.target)
            for user in node.users)
        quant = "quantize" in target or "choose_qparams" in target  # also dequantize
        return (node.op == "call_function" and isinstance(val, torch.Tensor) and val.dtype in floats
                and not quant and not owns_output_quantize)

    def stored_bytes(node, tensor) -> int:
        """A weight's bytes as the program stores them: torchao holds 4-bit weights (8da4w) one value per int8, read
        by a dequantize_affine of range [-8, 7], and XNNPACK stores them two to a byte."""
        four_bit = any("dequantize_affine" in str(u.target) and len(u.args) > 6 and isinstance(u.args[5], int)
                       and isinstance(u.args[6], int) and -8 <= u.args[5] and u.args[6] <= 7 for u in node.users)
        return tensor.nbytes // 2 if four_bit else tensor.nbytes

    class WeightSplitPartitioner(XnnpackPartitioner):
        def generate_partitions(self, ep):
            partitions = super().generate_partitions(ep)
            next_id = 1 + max((p.id for p in partitions), default=0)
            out = []
            for partition in partitions:
                pieces = split(ep, partition)
                if len(pieces) == 1:
                    out.append(partition)
                    continue
                for nodes in pieces:
                    out.append(Partition(id=next_id, nodes=nodes))
                    next_id += 1
            return out

    def split(ep, partition) -> list[list]:
        order = {n: i for i, n in enumerate(ep.graph_module.graph.nodes)}
        members = sorted(partition.nodes, key=order.__getitem__)
        tensors = {n: get_param_tensor(ep, n) for n in members if is_param_node(ep, n)}
        weights = {n: stored_bytes(n, t) for n, t in tensors.items() if t is not None}
        total = sum(weights.values())
        if total <= max_bytes:
            return [members]
        # weights, and ops computed from weights alone (a quantized weight's dequantize, which ExecuTorch places at
        # the top of the graph): each goes with the first op that reads it, directly or through such ops
        weightish = set(weights)
        for n in members:
            if n.op == "call_function" and n.all_input_nodes and all(m in weightish for m in n.all_input_nodes):
                weightish.add(n)
        ops = [n for n in members if n not in weightish]
        position = {n: i for i, n in enumerate(ops)}
        reach: dict = {}  # weightish node -> positions of the ops that read it
        for n in reversed(members):
            if n in weightish:
                reach[n] = [position[u] for u in n.users if u in position] + [
                    i for u in n.users if u in reach for i in reach[u]]
        readers = {n: [position[u] for u in n.users if u in position] for n in ops}
        owner = {w: min(r, default=0) for w, r in reach.items()}
        bytes_at, weight_end = [0] * len(ops), {}
        for w, i in owner.items():
            bytes_at[i] += weights.get(w, 0)
            weight_end[i] = max(weight_end.get(i, i), *reach[w], i)
        piece = total / -(-total // max_bytes)  # balanced pieces of at most about `max_bytes`
        safe, open_until = [], []  # safe[i]: a cut before op i crosses nothing that may not cross
        for i, n in enumerate(ops):
            open_until = [end for end in open_until if end >= i]
            safe.append(not open_until)
            result_end = max(readers[n], default=i)
            if result_end > i and not crosses_safely(n):
                open_until.append(result_end)
            if weight_end.get(i, i) > i:
                open_until.append(weight_end[i])
        before = [0]  # before[i]: weight bytes of ops[:i]
        for b in bytes_at:
            before.append(before[-1] + b)
        cuts, start = [], 0
        for i in range(len(ops)):
            if bytes_at[i] and before[i] > before[start] and before[i + 1] - before[start] > piece + 0.5:
                # the latest safe cut at or before this op that leaves weights in the piece it closes
                j = next((j for j in range(i, start, -1) if safe[j] and before[j] > before[start]), None)
                if j is not None:
                    cuts.append(j)
                    start = j
        bounds = [0, *cuts, len(ops)]
        return [ops[a:b] + [w for w, i in owner.items() if a <= i < b] for a, b in zip(bounds, bounds[1:])]

    return WeightSplitPartitioner()


def transient_indirection():
    """Serialize every (non-depthwise, non-transposed) convolution with XNN_FLAG_TRANSIENT_INDIRECTION_BUFFER.

    XNNPACK's convolutions gather their input through an indirection buffer: one pointer per kernel tap per output
    pixel, built when the runtime is set up and kept for the runtime's life, per convolution. A 3x3 convolution
    at 512 x 512 holds 18.9 MB of pointers whatever its channels, and the paper-scale decoder has six of them at
    512 px and five at 256 px: 138 MiB of the 462 MiB it adds while running (measured: the decoder alone, Python
    runtime, 2 threads). With the flag XNNPACK builds each tile's pointers in the shared workspace as it computes
    it: same outputs bit for bit, same speed within noise (1.285 vs 1.297 s per 512 px fp32 decode).

    ExecuTorch 1.5.1 sets no such flag itself (its runtime flags are profiling only), but its XNNPACK compiler passes
    a Conv2d node's serialized ``flags`` to ``xnn_define_convolution_2d``, which accepts this one. So this scoped
    patch adds the flag in ``Conv2d.define_node``, for the duration of one lowering, for the releases in
    TRANSIENT_INDIRECTION_VERIFIED. Depthwise and transposed convolutions are left alone (XNNPACK's define
    functions for them refuse the flag).
    """
    from executorch.backends.xnnpack.serialization.xnnpack_graph_schema import XNNConv2d

    def define_node(original, self, node, xnn_graph, *args, **kwargs):
        before = len(xnn_graph.xnodes)
        result = original(self, node, xnn_graph, *args, **kwargs)
        for xnode in xnn_graph.xnodes[before:]:
            if type(xnode.xnode_union) is XNNConv2d:  # not the depthwise / transposed node types
                xnode.xnode_union.flags |= XNN_FLAG_TRANSIENT_INDIRECTION_BUFFER
        return result

    return _conv_visitor_wrapped(define_node)


@contextmanager
def retrace_only_when_changed():
    """ExecuTorch's XNNPACK passes re-trace a partition's graph only when they changed it.

    XNNPACK's preprocess runs 17 passes over each partition. Fifteen of them (backends/xnnpack/_passes: linear,
    SDPA and bilinear-upsample recognition, batch-norm fusion, activation fusion, channels-last copies, ...) scan
    the graph, rewrite what they match, and then re-trace the whole graph through ``ExportPass.call`` to refresh its
    metadata, whether or not they matched anything: a fake-tensor run of every node, ~1.5 s per pass on the tiny
    UNet, most of them matching nothing in MobileDiffusion's graphs (it has no batch norm, PReLU, conv1d or
    bilinear upsample). For the duration of one lowering, those passes' re-trace is skipped when the graph holds the
    same nodes (op, name, target, arguments) as when the pass began: there is nothing to refresh. Passes that do
    their rewriting inside the re-trace (ExecuTorch's own ``call_operator`` passes) are not touched. Only for the
    releases in RETRACE_WHEN_CHANGED_VERIFIED: the tiny w8a8 UNet's lowering 56 -> 43 s, every program
    byte-identical (tests/backends/test_xnnpack.py).
    """
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.pass_base import ExportPass
    from torch.fx.passes.infra.pass_base import PassResult

    def nodes(graph_module) -> list[tuple]:
        return [(n.op, n.name, str(n.target), repr(n.args), repr(n.kwargs)) for n in graph_module.graph.nodes]

    started: dict[int, list[tuple]] = {}  # id(pass) -> its graph's nodes when its `call` began
    retrace = ExportPass.call

    def call(self, graph_module):
        if id(self) in started and started[id(self)] == nodes(graph_module):
            return PassResult(graph_module, False)
        return retrace(self, graph_module)

    def scanning(call_):
        def wrapped(self, graph_module):
            started[id(self)] = nodes(graph_module)
            try:
                return call_(self, graph_module)
            finally:
                started.pop(id(self), None)
        return wrapped

    # the passes that scan in their own `call` and re-trace at its end (XNNPACKPassManager(None): the default list)
    scanners = [cls for cls in XNNPACKPassManager(None).passes
                if "call" in vars(cls) and cls.__module__.startswith("executorch.backends.")]
    originals = {cls: vars(cls)["call"] for cls in scanners}
    for cls in scanners:
        cls.call = scanning(originals[cls])
    ExportPass.call = call
    try:
        yield
    finally:
        ExportPass.call = retrace
        for cls, original in originals.items():
            cls.call = original


def graph_summary(blob: bytes) -> dict:
    """Nodes, constant tensors by dtype (count and bytes) of an XNNPACK delegate blob (XH00 header + XNNGraph)."""
    from executorch.backends.xnnpack.serialization import xnnpack_graph_serialize as xser
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = xser.XNNHeader.from_bytes(blob[:xser.XNNHeader.EXPECTED_LENGTH])
    flatbuffer = blob[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size]
    with tempfile.TemporaryDirectory() as d:
        schema = os.path.join(d, "schema.fbs")
        with open(schema, "wb") as f:
            f.write(xser._get_schema_bytes())
        with open(os.path.join(d, "schema.bin"), "wb") as f:
            f.write(flatbuffer)
        _flatc_decompile(d, schema, os.path.join(d, "schema.bin"), ["--raw-binary", "--strict-json",
                                                                    "--defaults-json"])
        with open(os.path.join(d, "schema.json")) as f:  # flatc writes non-finite floats as bare inf / nan
            graph = json.loads(re.sub(r"(?<=[\s:\[,])(-?)inf\b", r"\1Infinity", re.sub(r"\bnan\b", "NaN", f.read())))
    counts, sizes, transient = Counter(), Counter(), 0
    for xnode in graph.get("xnodes", []):
        if xnode.get("xnode_union_type") == "XNNConv2d":
            transient += bool(int(xnode.get("xnode_union", {}).get("flags", 0)) & XNN_FLAG_TRANSIENT_INDIRECTION_BUFFER)
    offsets = graph.get("constant_data", [])
    for value in graph.get("xvalues", []):
        union = value.get("xvalue_union", {})
        tensor = union.get("tensor_value", union)  # quantized values wrap a tensor value
        index = tensor.get("constant_buffer_idx", 0)
        if not index:
            continue
        dtype = str(tensor.get("datatype", "")).removeprefix("xnn_datatype_")
        counts[dtype] += 1
        sizes[dtype] += int(offsets[index]["size"]) if index < len(offsets) else 0
    return {"nodes": len(graph.get("xnodes", [])), "constant_dtypes": dict(counts.most_common()),
            "constant_bytes": dict(sizes.most_common()), "transient_indirection_convs": transient}
