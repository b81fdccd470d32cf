"""The capability table (mdship.capabilities): what each backend computes correctly, and the refusals."""

from __future__ import annotations

import itertools
import re

import pytest

from mdship import capabilities
from mdship.capabilities import CAPABILITY_TABLE, CapabilityError, capability_markdown, legalize
from mdship.recipe import ComponentSpec, LayerSpec

# ----------------------------------------------------------------------------- capabilities


class _Spec:
    """A stand-in component spec: ``layer`` in the given format, the other layer types fp32."""

    def __init__(self, layer, weights, activations, granularity=None, group_size=32):
        self.precision = "fp32"
        self.layer = layer
        self.spec = LayerSpec.model_construct(weights=weights, activations=activations,
                                              granularity=granularity, group_size=group_size)

    def layer_spec(self, layer_type):
        if layer_type == self.layer:
            return self.spec
        return LayerSpec().resolved("fp32")


def test_legalize_refuses_weight_only_on_xnnpack():
    with pytest.raises(CapabilityError) as info:
        legalize("xnnpack", "unet", ComponentSpec(linear={"weights": "int8", "activations": "fp16"}))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith("xnnpack: linear weights int8 with activations fp16 (weight-only) "
                              "is not supported: XNNPACK claims weight-only int8/int4 linears "
                              "and computes garbage")
    assert "int8_dynamic" in message and "fp32" in message and "fp16" in message
    assert info.value.layer == "linear" and info.value.field is None


@pytest.mark.parametrize("backend, spec, ios", [
    ("xnnpack", dict(linear={"weights": "int8", "activations": "int8_dynamic"}), None),
    ("xnnpack", dict(linear={"weights": "int4", "activations": "int8_dynamic", "group_size": 64}), None),
    ("xnnpack", dict(conv={"weights": "int8", "activations": "int8_static"}), None),
    ("xnnpack", dict(precision="fp16"), None),
    ("vulkan", dict(linear={"weights": "int4", "activations": "fp16"}, precision="fp16"), None),
    ("vulkan", dict(linear={"weights": "int8", "activations": "fp32"}), None),
    ("coreml", dict(linear={"weights": "int8", "activations": "fp16"},
                    conv={"weights": "int8", "activations": "fp16"}), "iOS16"),
    ("coreml", dict(conv={"weights": "int4", "group_size": 16, "activations": "fp16"}), "iOS18"),
    ("portable", dict(), None),
])
def test_legalize_accepts(backend, spec, ios):
    legalize(backend, "unet", ComponentSpec(**spec), minimum_deployment_target=ios)


@pytest.mark.parametrize("backend, spec, ios, field, words", [
    ("vulkan", dict(linear={"weights": "int4", "group_size": 48, "activations": "fp16"}), None,
     "group_size", "multiple of 32"),
    ("vulkan", dict(linear={"weights": "int8", "granularity": "per_group", "activations": "fp16"}),
     None, "granularity", "per_channel"),
    ("coreml", dict(linear={"weights": "int8", "granularity": "per_group", "activations": "fp16"}),
     "iOS17", "minimum_deployment_target", "iOS18"),
    ("coreml", dict(linear={"weights": "int8", "activations": "int8_static"}), None, None,
     "weight-only"),
    ("portable", dict(precision="fp16"), None, "precision", "fp32 only"),
    ("portable", dict(linear={"weights": "int8", "activations": "int8_dynamic"}), None, None,
     "fp32 only"),
])
def test_legalize_refuses(backend, spec, ios, field, words):
    with pytest.raises(CapabilityError, match="expected") as info:
        legalize(backend, "unet", ComponentSpec(**spec), minimum_deployment_target=ios)
    assert info.value.field == field and words in str(info.value)


def test_legalize_agrees_with_the_table():
    """Every combination is legal exactly when a CAPABILITY_TABLE row covers it."""
    for backend, layer, weights, activations, granularity, group in itertools.product(
            capabilities.BACKENDS, capabilities.LAYER_TYPES, capabilities.WEIGHT_DTYPES,
            capabilities.ACTIVATION_DTYPES, capabilities.GRANULARITIES, (32, 48)):
        if weights in capabilities.FLOAT_DTYPES:
            granularity = None
        spec = _Spec(layer, weights, activations, granularity, group)
        covered = any(
            s.backend == backend and layer in s.layers and weights in s.weights
            and activations in s.activations
            and (granularity is None or granularity in s.granularity)
            and not (granularity == "per_group" and s.group_multiple and group % s.group_multiple)
            for s in CAPABILITY_TABLE)
        try:
            legalize(backend, "unet", spec)
            legal = True
        except CapabilityError as exc:
            legal = False
            assert f"{backend}:" in str(exc) and "expected" in str(exc)
        assert legal == covered, (backend, layer, weights, activations, granularity, group)


def test_no_weight_only_row_for_xnnpack():
    """XNNPACK computes weight-only int8/int4 matmuls wrong: no such row. Embeddings are weight-only by nature (a
    table lookup, run by ExecuTorch's quantized embedding kernels on the CPU, not by XNNPACK)."""
    for row in CAPABILITY_TABLE:
        if row.backend == "xnnpack" and set(row.weights) & set(capabilities.INT_DTYPES) and row.layers != ("embedding",):
            assert not set(row.activations) & set(capabilities.FLOAT_DTYPES), row


def test_capability_markdown():
    text = capability_markdown()
    for backend in capabilities.BACKENDS:
        assert f"| {backend} |" in text
    assert text.startswith("| backend | layers | weights |")
    assert "computes garbage" in text


def test_device_caveats_label_published_ane_failures_only_where_they_apply():
    from mdship.capabilities import DEVICE_CAVEATS, device_caveats

    for c in DEVICE_CAVEATS:  # each names its published evidence, and labels a format the backend does run
        assert re.search(r"apple/[\w-]+#\d+", c.reason), c
        assert any(set(c.weights) & set(s.weights) and set(c.granularity) & set(s.granularity)
                   for s in CAPABILITY_TABLE if s.backend == c.backend), c
    int4 = ComponentSpec(linear=LayerSpec(weights="int4", granularity="per_group"))
    ios18 = {"compute_units": "all", "minimum_deployment_target": "iOS18"}
    [line] = device_caveats("coreml", int4, ios18)
    assert line.startswith("ANE-unverified: linear, attention weights int4 per_group: ") and "#2688" in line
    assert device_caveats("coreml", int4, {**ios18, "compute_units": "cpu_and_gpu"}) == []  # no Neural Engine
    assert device_caveats("vulkan", int4, None) == []
    lut4 = ComponentSpec(conv=LayerSpec(weights="lut4"))
    assert device_caveats("coreml", lut4, {**ios18, "minimum_deployment_target": "iOS17"}) == []  # iOS18 lowering
    assert len(device_caveats("coreml", lut4, ios18)) == 1
    ane_safe = ComponentSpec(linear=LayerSpec(weights="lut6"), conv=LayerSpec(weights="int8", granularity="per_channel"))
    assert device_caveats("coreml", ane_safe, ios18) == []
