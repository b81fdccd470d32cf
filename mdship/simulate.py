"""Simulated execution: run the exact exported (and quantized) program in eager PyTorch, computed as an fp16 delegate
computes it, at fp32 speed; and the per-layer statistics that locate an fp16 overflow.

A target that cannot run here (Vulkan, Core ML on Linux) is checked by running the same graph that was lowered, op
by op. An fp16 delegate stores every float tensor in fp16 and computes each op with fp32 (or wider) accumulation
inside, rounding its result to fp16. That is what this module does: every op runs in fp32 arithmetic on fp16 values
and its output is rounded to fp16 (``x.half().float()``) before the next op reads it. Weights are rounded once.

This is also what PyTorch's own CPU fp16 kernels compute (they upcast to fp32, accumulate and round the result), but
those run without fp16 hardware on this x86 CPU and are ~175x slower than fp32 (a 128 px decoder call: 65 s
against 0.37 s); the 512 px UNet took minutes per call. Measured against true fp16 execution (eager PyTorch in
float16) on the embedded default, op by op, the two differ in under 0.1% of conv outputs by at most a few fp16 ulp
(different accumulation order) and in fp16 ``rsqrt``, which PyTorch's CPU kernel rounds twice; end to end the PSNR
against fp32 they give agrees within the tolerance tests/test_simulate.py states.

Which ops are rounded:

* ``forced`` (Vulkan ``force_fp16``, Core ML ``compute_precision: fp16``): the delegate computes every float tensor
  in fp16, including the ones the program keeps in fp32 (the fp32 interface casts, an fp32 timestep embedding), so
  every float op output is rounded, and the program inputs too.
* otherwise each op computes in the dtype the graph gives it (``node.meta["val"]``): fp16 ops rounded, fp32 ops
  exact. A program exported in fp16 with layers kept in fp32 (``keep_fp32:``) is simulated this way.

Integer tensors (token ids, timesteps, int8 / int4 weights of weight-only quantization) are left alone, so the
dequantize ops of a quantized program run as exported. ``torch.finfo(float32).min`` / ``max`` are masking sentinels
(transformers writes them into attention masks): a delegate stores them as -inf / inf on purpose, and so does this
simulation, but they are never reported as overflows; neither are Inf values an op makes by pushing an input that is
already saturated (``finfo(float16).min`` = -65504 in the mask of a program exported in fp16, plus negative scores).

Overflow by layer (``watch``): each op's largest finite magnitude is recorded against the innermost module it came
from (``nn_module_stack``), and an op is an overflow when it makes an Inf or NaN from finite inputs: a finite fp32
result beyond fp16's range (|x| >= 65520 rounds to Inf) or an Inf / NaN computed from finite values. The first such
op names the layer the fp16 guard reports. ExecuTorch 1.5.1's ``executorch.devtools.intermediate_output_tap`` does
the same on a program by adding a statistics op after each tapped node as an extra program output, and is the tool
for a program that runs on a device; here, where the twin is interpreted op by op anyway, its STATS reducer (13
statistics per tap, including a top-k for p99_abs) would cost more than the op it watches on a 512 px UNet, and the
two numbers the guard needs (max |x|, non-finite values made) come free with the rounding.

This is a simulation: eager CPU kernels are not the GPU / Neural Engine kernels, accumulate differently and fuse
nothing. Reports label it `simulated`, never `executed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_flatten, tree_map

#: what simulated verification ran, for the manifest's `simulated_as`
SIMULATED_AS = "eager PyTorch: fp32 arithmetic, every op's output rounded to float16"
#: bumped when the simulation's numbers change for the same program (a key part of cached simulated results)
VERSION = 2

FP16_MAX = 65504.0
#: an fp32 value at or beyond this rounds to Inf in fp16 (round to nearest even)
FP16_OVERFLOW = 65520.0
_SENTINEL = torch.finfo(torch.float32).max


def _round(value):
    """An fp32 / fp16 tensor as fp16 values held in fp32."""
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float32, torch.float16):
        return value.to(torch.float16).float()
    return value


def _as_fp32(value):
    if isinstance(value, torch.Tensor) and value.dtype == torch.float16:
        return value.float()
    return value


def _graph_dtypes(node: torch.fx.Node) -> list:
    val = node.meta.get("val")
    leaves, _ = tree_flatten(val)
    return [getattr(v, "dtype", None) for v in leaves]


def layer_of(node: torch.fx.Node) -> str:
    """The innermost module (qualified name inside the component) an op of an exported program came from."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "(component)"
    path = list(stack.values())[-1][0]
    for prefix in ("L['self'].", "component."):
        path = path.removeprefix(prefix)
    return path if path and path != "component" else "(component)"


@dataclass
class Watch:
    """Per-layer statistics of one or more simulated calls (the fp16 guard's evidence)."""

    #: layer -> largest finite |value| any of its fp16 ops produced (masking sentinels excluded)
    max_abs: dict[str, float] = field(default_factory=dict)
    #: the first op that made an Inf / NaN from finite inputs: {"layer", "op", "max_abs", "nonfinite", "call"}
    first_overflow: dict | None = None
    call: int = 0

    def closest(self, n: int = 5) -> list[dict]:
        """The n layers whose values came closest to fp16's limit."""
        top = sorted(self.max_abs.items(), key=lambda kv: -kv[1])[:n]
        return [{"layer": k, "max_abs": round(v, 3)} for k, v in top]


class _Fp16(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, forced: bool, watch: Watch | None):
        super().__init__(module)
        self.forced = forced
        self.watch = watch
        self.hot: set[str] = set()  # nodes whose values hold Inf / NaN or saturated fp16 (|x| = 65504)

    def run_node(self, n: torch.fx.Node):
        if n.op == "placeholder":
            value = super().run_node(n)
            return _round(value) if self.forced else value
        if n.op != "call_function" and n.op != "call_method" and n.op != "call_module":
            return super().run_node(n)
        if getattr(n.target, "__name__", "").startswith("_assert_tensor_metadata"):
            return None  # export's dtype guards would refuse the fp32 tensors that stand in for fp16 ones
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        args, kwargs = tree_map(_as_fp32, args), tree_map(_as_fp32, kwargs)
        out = getattr(self, n.op)(n.target, args, kwargs)
        leaves, spec = tree_flatten(out)
        if self.forced:
            fp16 = [True] * len(leaves)
        else:
            dtypes = _graph_dtypes(n)
            fp16 = [d == torch.float16 for d in dtypes + [None] * (len(leaves) - len(dtypes))]
        rounded = [_round(v) if h else _as_fp32(v) for v, h in zip(leaves, fp16)]
        if self.watch is not None:
            self._observe(n, leaves, rounded, fp16)
        return spec.unflatten(rounded)

    def _observe(self, n: torch.fx.Node, exact: list, rounded: list, fp16: list) -> None:
        for before, after, half in zip(exact, rounded, fp16):
            if not isinstance(after, torch.Tensor) or not after.is_floating_point() or after.numel() == 0:
                continue
            layer = layer_of(n)
            peak = float(after.abs().amax())
            if half and peak == FP16_MAX:  # saturated, or fp16's finfo.min in an attention mask
                self.hot.add(n.name)
                below = after.abs()[after.abs() < FP16_MAX]
                peak = float(below.amax()) if below.numel() else 0.0
            if peak < (FP16_MAX if half else float("inf")):  # within range: the common case, one reduction
                if half:  # fp16 headroom is what is recorded (an fp32 op's magnitude is not at risk)
                    self.watch.max_abs[layer] = max(self.watch.max_abs.get(layer, 0.0), peak)
                continue
            self.hot.add(n.name)  # holds Inf / NaN
            before = before.float()
            real = before[torch.isfinite(before) & (before.abs() < _SENTINEL)]
            finite_peak = float(real.abs().amax()) if real.numel() else 0.0
            if half:
                self.watch.max_abs[layer] = max(self.watch.max_abs.get(layer, 0.0), min(finite_peak, FP16_MAX))
            if self.watch.first_overflow is not None or any(a.name in self.hot for a in n.all_input_nodes):
                continue  # an input already held Inf / NaN or saturated fp16 values: passed on, not made here
            # a finite fp16 result beyond fp16's range, or an Inf / NaN computed from finite values
            if (half and finite_peak >= FP16_OVERFLOW) or bool((~torch.isfinite(before)).any()):
                self.watch.first_overflow = {
                    "layer": layer, "op": str(n.target), "max_abs": finite_peak,
                    "nonfinite": int((~torch.isfinite(after)).sum()), "call": self.watch.call}


class Twin(torch.nn.Module):
    """An exported program's graph as an fp16 delegate computes it (or in fp32, for an fp32 program), fp32 out."""

    def __init__(self, program: torch.export.ExportedProgram, forced_fp16: bool):
        super().__init__()
        module = program.module()  # (an unlifted exported module refuses .train()/.eval())
        self.forced = forced_fp16
        self.fp16 = forced_fp16 or any(torch.float16 in _graph_dtypes(n) for n in module.graph.nodes)
        if self.fp16:  # weights as fp16 values held in fp32, in new tensors: the program's own stay as they are
            for owner in module.modules():
                for store in (owner._parameters, owner._buffers):
                    for name, t in store.items():
                        if t is not None and (t.dtype == torch.float16 or forced_fp16 and t.dtype == torch.float32):
                            value = _round(t.detach())
                            store[name] = torch.nn.Parameter(value, requires_grad=False) \
                                if isinstance(t, torch.nn.Parameter) else value
        self.module = module

    def forward(self, *inputs, watch: Watch | None = None):
        if self.fp16:
            out = _Fp16(self.module, self.forced, watch).run(*inputs)
        else:
            out = self.module(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
        return out.float()


def twin(program: torch.export.ExportedProgram, forced_fp16: bool) -> Twin:
    """The module that simulated verification, fidelity and the fp16 guard run: ``program`` as its delegate computes
    it (``forced_fp16``: the delegate computes every float tensor in fp16 whatever the program's dtypes)."""
    return Twin(program, forced_fp16)


def true_fp16(program: torch.export.ExportedProgram) -> torch.nn.Module:
    """The program with every float op computed by PyTorch's float16 kernels (slow on this CPU): the reference that
    tests hold the fast simulation against (tests/test_simulate.py), not used by builds."""

    class _Cast(torch.fx.Interpreter):
        def run_node(self, n):
            if n.op == "call_function" and getattr(n.target, "__name__", "").startswith("_assert_tensor_metadata"):
                return None
            cast = tree_map(lambda v: v.to(torch.float16) if isinstance(v, torch.Tensor) and
                            v.dtype == torch.float32 else v, super().run_node(n))
            return cast

    module = program.module()

    class _Module(torch.nn.Module):
        def forward(self, *inputs):
            with torch.no_grad():
                out = _Cast(module).run(*[x.half() if x.dtype == torch.float32 else x for x in inputs])
            out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
            return out.float()

    return _Module()
