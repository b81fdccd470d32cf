"""The sensitivity stage (mdship.stages.sensitivity) on small modules: what it measures per layer and format."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mdship import backends
from mdship.recipe import ComponentSpec
from mdship.stages import sensitivity


class Stack(nn.Module):
    """Two linears and a 1x1 conv; `loud` is the layer whose quantization error the output feels most."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Linear(64, 64), nn.Linear(64, 64)])
        self.pointwise = nn.Conv2d(64, 64, 1)
        with torch.no_grad():
            self.blocks[0].weight[:, :4] *= 40  # outliers: int4 groups of 32 suffer

    def forward(self, x):
        h = self.blocks[1](torch.relu(self.blocks[0](x)))
        return self.pointwise(h.transpose(1, 2).reshape(x.shape[0], 64, 4, 4))


def rows_by(rows):
    return {(r.layer, r.format): r for r in rows}


def test_labels_bytes_blocks_and_groups():
    assert sensitivity.format_label({"weights": "fp32", "granularity": None, "group_size": 32,
                                     "activations": "fp32"}) == "fp32"
    assert sensitivity.format_label({"weights": "int4", "granularity": "per_group", "group_size": 128,
                                     "activations": "int8_dynamic"}) == "int4 g128 + a8 dynamic"
    assert sensitivity.format_label({"weights": "int8", "granularity": "per_channel", "group_size": 32,
                                     "activations": "fp16"}) == "int8 pc"
    layer = nn.Linear(256, 64)
    assert sensitivity.weight_bytes(layer, {"weights": "fp32"}) == 4 * 256 * 64
    assert sensitivity.weight_bytes(layer, {"weights": "int8", "granularity": "per_channel"}) == 256 * 64 + 4 * 64
    assert sensitivity.weight_bytes(layer, {"weights": "int4", "granularity": "per_group", "group_size": 32}) == \
        256 * 64 // 2 + 4 * 256 * 64 // 32
    assert sensitivity._block("down.1.resnets.0.conv1.pointwise") == "down.1.resnets.0"
    assert sensitivity._block("mid_resnet.conv1.depthwise") == "mid_resnet"
    assert sensitivity.group_of("unet", "mid_transformer.layers.0.cross_attn.to_kv") == "unet:content"
    assert sensitivity.group_of("unet", "mid_transformer.layers.0.self_attn.to_kv") == "unet"
    assert sensitivity.group_of("text_encoder", "clip.encoder.layers.0.mlp.fc1") == "text_encoder"


@pytest.fixture(scope="module")
def measured():
    module = Stack().eval()
    calls = [(torch.randn(2, 16, 64),) for _ in range(3)]
    spec = ComponentSpec(keep=[])
    rows, fixed, mode, _ = sensitivity._component_rows("unet", module, spec, backends.get("xnnpack"), calls, False)
    return module, calls, rows, fixed, mode


def test_each_layer_and_format_measured_at_the_component_output(measured):
    module, calls, rows, fixed, mode = measured
    by = rows_by(rows)
    assert mode == "layer"
    formats = {r.format for r in rows if r.layer == "blocks.0"}
    assert formats == {"fp32", "int8 pc + a8 dynamic", "int4 g32 + a8 dynamic"}  # no g128 (64 inputs), no static
    assert by[("blocks.0", "fp32")].noise == 0.0
    # int4 costs more than int8 wherever it is measured; the outlier layer suffers most from int4
    for layer in ("blocks.0", "blocks.1", "pointwise"):
        assert by[(layer, "int4 g32 + a8 dynamic")].noise > by[(layer, "int8 pc + a8 dynamic")].noise > 0
    assert by[("blocks.0", "int4 g32 + a8 dynamic")].local_noise > 1.5 * by[("blocks.1", "int4 g32 + a8 dynamic")
                                                                         ].local_noise
    # the last layer's output is the component's: measured and local noise are the same number
    last = by[("pointwise", "int8 pc + a8 dynamic")]
    assert last.noise == pytest.approx(last.local_noise, rel=1e-6)
    assert by[("blocks.0", "int4 g32 + a8 dynamic")].bytes < by[("blocks.0", "int8 pc + a8 dynamic")].bytes
    assert fixed == 4 * (64 * 3)  # the biases
    assert by[("blocks.0", "fp32")].macs == 2 * 16 * 64 * 64 and by[("blocks.0", "fp32")].input_shape == [2, 16, 64]
    assert [n for n, _ in module.named_children()] == ["blocks", "pointwise"]  # every layer swapped back


def test_block_mode_scales_local_proxies_by_the_measured_block(monkeypatch, measured):
    _, calls, _, _, _ = measured
    xnnpack = backends.get("xnnpack")
    one_call, _, _, _ = sensitivity._component_rows("unet", Stack().eval(), ComponentSpec(keep=[]), xnnpack,
                                                    calls[:1], False)
    monkeypatch.setattr(sensitivity, "LAYER_MODE_SECONDS", 0.0)  # no time: coarse blocks, one call
    rows, _, mode, _ = sensitivity._component_rows("unet", Stack().eval(), ComponentSpec(keep=[]), xnnpack, calls,
                                                   False)
    assert mode == "block (3 blocks, 1 calls)"  # blocks.0, blocks.1 and pointwise: indexed modules are blocks
    by, exact = rows_by(rows), rows_by(one_call)
    # the pointwise conv is a block of its own: measured at its cheapest format, its other formats follow the local
    # proxy by the block's gain
    cheap = by[("pointwise", "int4 g32 + a8 dynamic")]
    assert cheap.noise == pytest.approx(exact[("pointwise", "int4 g32 + a8 dynamic")].noise, rel=1e-6)
    gain = cheap.noise / cheap.local_noise
    assert by[("pointwise", "int8 pc + a8 dynamic")].noise == pytest.approx(
        gain * by[("pointwise", "int8 pc + a8 dynamic")].local_noise)
    for key, row in by.items():
        assert math.isfinite(row.noise) and (row.noise > 0) == (row.format != "fp32"), key
