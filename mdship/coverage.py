"""How much of a component's arithmetic runs inside delegates: FLOPs per node of a lowered ExecuTorch graph.

Op counts alone mislead (a partition boundary made of 30 view ops looks worse than one non-delegated 3x3 conv
that does a third of the work), so the coverage report also weighs every op by its FLOPs:

* conv, linear, matmul / bmm / addmm / baddbmm and fused attention: 2 x MACs, the MACs computed from the
  shapes in ``node.meta["val"]`` (output numel x reduction length);
* other compute ops (elementwise, norms, softmax, reductions): one FLOP per output element (input element for
  reductions), a floor that keeps non-delegated GroupNorms and activations visible;
* data movement (view, permute, slice, cat, copies, dim-order casts, getitem, constants): zero.

The lowered graph holds the non-delegated ops at the top level and each delegate's ops in its lowered
module's ``original_module`` (the edge subgraph the partitioner handed to the backend), so
``delegated / (delegated + outside)`` is the share of the component's FLOPs that runs in a delegate.
"""

from __future__ import annotations

import math
import re
from collections import Counter

#: below this share of FLOPs in delegates a component gets a warning in the build summary and manifest
MIN_DELEGATED_SHARE = 0.90

_MATMUL = {"mm", "bmm", "matmul"}
_ADD_MATMUL = {"addmm", "baddbmm"}
_ATTENTION = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_attention_math", "sdpa_with_kv_cache"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "var", "var_mean", "std", "_softmax", "softmax", "_log_softmax",
               "native_group_norm", "native_layer_norm", "group_norm", "layer_norm"}
# Data movement and bookkeeping: no arithmetic.
_FREE = re.compile(r"^(view|_unsafe_view|reshape|permute|transpose|t|expand|squeeze|unsqueeze|slice|select|cat|"
                   r"stack|split|split_with_sizes|chunk|unbind|clone|contiguous|alias|detach|lift_fresh|copy|"
                   r"_to_copy|_to_dim_order_copy|to|empty|full|full_like|zeros|zeros_like|ones|ones_like|arange|"
                   r"scalar_tensor|getitem|repeat|index_select|embedding|gather|pixel_shuffle|pixel_unshuffle|"
                   r"constant_pad_nd|pad|flip|roll|prepack|sym_size|sym_numel|_local_scalar_dense|"
                   r"dequantize_affine|quantize_affine|choose_qparams_affine|dequantize_per_tensor|"
                   r"quantize_per_tensor|dequantize_per_channel|quantize_per_channel|executorch_call_delegate|"
                   r"alloc|delegate)(_copy)?$")


def op_name(target) -> str:
    """The short op name of a call_function target: ``aten.convolution.default`` -> ``convolution``.

    Works for torch OpOverloads, ExecuTorch EdgeOpOverloads (whose ``__name__`` is the dotted name),
    builtins (``operator.getitem``) and higher-order ops (``executorch_call_delegate``).
    """
    text = str(target)
    if text.startswith("<"):  # EdgeOpOverload, builtins and higher-order ops print as '<...>'
        text = getattr(target, "__name__", None) or text
    parts = text.split(".")  # 'aten.convolution.default', 'torchao.dequantize_affine.default', 'conv2d.default'
    return parts[1] if len(parts) >= 3 else parts[0]


def _numel(value) -> int:
    try:
        return int(math.prod(int(d) for d in value.shape))
    except (AttributeError, TypeError, ValueError):
        return 0


def _val(node):
    return node.meta.get("val") if hasattr(node, "meta") else None


def _first_tensor(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
        return None
    return value if hasattr(value, "shape") else None


def node_flops(node) -> int:
    """FLOPs of one call_function node (2 per MAC for contractions), from the shapes in ``meta['val']``."""
    if node.op != "call_function":
        return 0
    name = op_name(node.target)
    if _FREE.match(name):
        return 0
    out = _first_tensor(_val(node))
    out_numel = _numel(out) if out is not None else 0
    args = [a for a in node.args]

    def arg_val(i):
        return _first_tensor(_val(args[i])) if i < len(args) and hasattr(args[i], "meta") else None

    if name in ("convolution", "conv2d", "conv1d", "_convolution", "conv_with_clamp"):
        weight = arg_val(1)
        if weight is None or out is None:
            return 0
        # weight: (C_out, C_in / groups, *kernel) -> MACs per output element = C_in/groups x kernel size
        # (transposed conv: (C_in, C_out / groups, *kernel); same count per input element, close enough)
        per_out = int(math.prod(int(d) for d in weight.shape[1:]))
        return 2 * out_numel * per_out
    if name in ("linear",):
        weight = arg_val(1)
        k = int(weight.shape[-1]) if weight is not None else 0
        return 2 * out_numel * k
    if name in _MATMUL:
        a = arg_val(0)
        k = int(a.shape[-1]) if a is not None and len(a.shape) else 0
        return 2 * out_numel * k
    if name in _ADD_MATMUL:
        a = arg_val(1)
        k = int(a.shape[-1]) if a is not None and len(a.shape) else 0
        return 2 * out_numel * k + out_numel
    if name in _ATTENTION:
        q, k = arg_val(0), arg_val(1)
        if q is None or k is None:
            return 0
        # QK^T and PV: 2 x (B H L S E) MACs each
        s = int(k.shape[-2])
        return 4 * _numel(q) * s
    if name in _REDUCTIONS:
        a = arg_val(0)
        return max(_numel(a) if a is not None else 0, out_numel)
    return out_numel


def _graph_flops(graph_module) -> tuple[int, Counter]:
    total, by_op = 0, Counter()
    for node in graph_module.graph.nodes:
        f = node_flops(node)
        if f:
            total += f
            by_op[op_name(node.target)] += f
    return total, by_op


def flops_coverage(graph_module) -> dict:
    """FLOPs inside delegates vs outside, per backend, for a lowered (edge) graph module."""
    delegated, by_backend = 0, Counter()
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            lowered = getattr(graph_module, node.target)
            f, _ = _graph_flops(lowered.original_module.graph_module)
            delegated += f
            by_backend[lowered.backend_id] += 1
    outside, outside_by_op = _graph_flops(graph_module)
    total = delegated + outside
    share = delegated / total if total else (1.0 if by_backend else 0.0)
    return {
        "flops": total,
        "delegated_flops": delegated,
        "delegated_flops_share": round(share, 6),
        "partitions_by_backend": dict(sorted(by_backend.items())),
        "fallback_flops": dict(outside_by_op.most_common()),
    }


def warning(component: str, target: str, coverage: dict, threshold: float = MIN_DELEGATED_SHARE) -> str | None:
    """A one-line warning when a component runs less than ``threshold`` of its FLOPs inside delegates."""
    share = coverage.get("delegated_flops_share")
    if share is None or share >= threshold:
        return None
    top = ", ".join(f"{op} {f / max(1, coverage.get('flops', 1)):.0%}"
                    for op, f in list(coverage.get("fallback_flops", {}).items())[:3])
    return (f"{target}/{component}: only {share:.1%} of its FLOPs run in the delegate (< {threshold:.0%}); "
            f"on the CPU: {top or 'nothing countable'}")
