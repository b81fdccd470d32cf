"""The fp16 guard on a real decoder: an injected overflow (one layer's weights scaled up) is found and named, and
keeping just that layer in fp32 clears it."""

from __future__ import annotations

import pytest
import torch

from mdship import backends, simulate
from mdship.stages.export import ProgramModule
from mdship.stages.fidelity import fp16_guard, overflow_message


@pytest.fixture(scope="module")
def decoder():
    from mdship.checkpoint import Checkpoint

    return Checkpoint.from_preset("tiny", seed=0).modules()["vae_decoder"]


def _guard(module, latents, backend="vulkan", keep_fp32=None):
    """The guard as a build runs it: the backend's export rewrites, the program's simulated twin."""
    be = backends.get(backend)
    fp16 = keep_fp32 is not None  # layers kept in fp32 need an fp16 program (the delegate then honours its dtypes)
    program = torch.export.export(ProgramModule(module, torch.float16 if fp16 else torch.float32, be.rewrites,
                                                keep_fp32).eval(), (latents[0],), strict=False)
    return fp16_guard(simulate.twin(program, forced_fp16=not fp16), [(x,) for x in latents])


def _scaled(decoder, layer: str, gain: float):
    import copy

    module = copy.deepcopy(decoder)
    with torch.no_grad():
        module.get_submodule(layer).weight.mul_(gain)
    return module


LATENTS = [torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]


@pytest.mark.parametrize("backend", ["vulkan", "coreml"])
def test_guard_passes_the_healthy_decoder(decoder, backend):
    guard = _guard(decoder, LATENTS, backend)
    assert guard["overflow"] is False and guard["checked_calls"] == 3 and guard["first_overflow"] is None
    assert 0 < guard["closest_layers"][0]["max_abs"] < 65504  # the headroom, layer by layer


@pytest.mark.parametrize("backend", ["vulkan", "coreml"])
def test_guard_names_an_injected_overflow(decoder, backend):
    """One conv scaled by 1e5: its own output leaves fp16's range, and the guard names that conv."""
    layer = "decoder.blocks.0.conv2"
    guard = _guard(_scaled(decoder, layer, 1e5), LATENTS, backend)
    first = guard["first_overflow"]
    assert guard["overflow"] is True and guard["first_bad_call"] == 0 and guard["checked_calls"] == 1
    assert first["layer"] == layer and "conv" in first["op"] and first["max_abs"] > 65504, first
    message = overflow_message("vae_decoder", guard)
    assert message.startswith(f"vae_decoder: fp16 overflow in layer {layer} (")
    assert f"components.vae_decoder.keep_fp32: [{layer}]" in message and "\n" not in message


def test_keeping_the_named_layer_in_fp32_clears_the_overflow(decoder):
    """A conv scaled so that its output still fits fp16 (|x| ~ 400) but the next GroupNorm's x*x does not (the
    4-D-means rewrite Core ML and XNNPACK use): the guard names the norm; keep_fp32 on it computes the variance in
    fp32, and the component passes. Vulkan's native GroupNorm computes its statistics inside one op and does not
    overflow at all."""
    module = _scaled(decoder, "decoder.blocks.0.conv2", 200.0)
    assert _guard(module, LATENTS, "vulkan")["overflow"] is False
    guard = _guard(module, LATENTS, "coreml")
    assert guard["overflow"] is True, guard["closest_layers"]
    layer = guard["first_overflow"]["layer"]
    assert layer == "decoder.blocks.1.norm1" and "mul" in guard["first_overflow"]["op"], guard["first_overflow"]
    kept = _guard(module, LATENTS, "coreml", keep_fp32=[layer])
    assert kept["overflow"] is False and kept["checked_calls"] == 3, kept["first_overflow"]
    assert layer not in {c["layer"] for c in kept["closest_layers"]}  # computed in fp32: no fp16 headroom to report
