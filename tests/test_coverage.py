"""The coverage report's FLOPs accounting and its < 90% warning, on small hand-checked modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdship.coverage import MIN_DELEGATED_SHARE, flops_coverage, node_flops, op_name, warning
from mdship.stages.lower import coverage


class ConvNormLinear(nn.Module):
    """conv 4->8 3x3 on 8x8, GroupNorm (XNNPACK leaves it on the CPU), mean over H, W, linear 8->16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.linear = nn.Linear(8, 16)

    def forward(self, x):
        return self.linear(self.norm(self.conv(x)).mean((2, 3)))


CONV = 2 * (8 * 8 * 8) * (4 * 3 * 3)  # 2 x output elements x (C_in x k x k)
LINEAR = 2 * 16 * 8
NORM = 8 * 8 * 8  # one FLOP per element for non-contraction compute ops
MEAN = 8 * 8 * 8  # reductions: one per input element


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    return torch.export.export(ConvNormLinear().eval(), (torch.randn(1, 4, 8, 8),))


def test_node_flops_from_shapes(exported):
    flops = {op_name(n.target): node_flops(n) for n in exported.graph.nodes if n.op == "call_function"}
    assert flops == {"conv2d": CONV, "group_norm": NORM, "mean": MEAN, "linear": LINEAR}


def test_delegated_share_counts_cpu_ops(exported):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    cov = coverage(edge.exported_program().graph_module)
    total = CONV + NORM + MEAN + LINEAR
    assert cov["flops"] == total
    # XNNPACK takes conv and linear; GroupNorm and this mean (over a GroupNorm output) stay on portable kernels
    assert cov["delegated_flops"] == CONV + LINEAR
    assert cov["delegated_flops_share"] == pytest.approx((CONV + LINEAR) / total, abs=1e-6)
    assert cov["partitions"] == 2 and cov["partitions_by_backend"] == {"XnnpackBackend": 2}
    assert "getitem" not in cov["fallback_ops"]  # unpacking delegate outputs is no CPU op
    assert any("group_norm" in op for op in cov["fallback_ops"])
    assert set(cov["fallback_flops"]) == {"native_group_norm", "mean"}


def test_no_delegate_means_no_share_and_a_warning(exported):
    from executorch.exir import to_edge_transform_and_lower

    cov = flops_coverage(to_edge_transform_and_lower(exported).exported_program().graph_module)
    assert cov["delegated_flops_share"] == 0.0 and cov["partitions_by_backend"] == {}
    text = warning("unet", "vulkan", cov)
    assert text.startswith("vulkan/unet: only 0.0% of its FLOPs run in the delegate (< 90%)")
    assert "convolution" in text  # names the op that costs most on the CPU
    assert warning("unet", "vulkan", {**cov, "delegated_flops_share": MIN_DELEGATED_SHARE}) is None
