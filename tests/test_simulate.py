"""The fp16 simulation (fp32 arithmetic, every op's output rounded to fp16) against hand-computed fp16 and against
true fp16 execution (PyTorch's float16 kernels) on the embedded default; and the per-op overflow watch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdship import simulate
from mdship.stages.export import ProgramModule
from mdship_testing import ROOT

#: the embedded default with its own prompt sets (its 64 px components run true fp16 in about a second)
SHAPES = ["checkpoint=builtin:shapes", "resolution=null", "calibration.prompts=calibration/shapes-calib.txt",
          "calibration.eval_prompts=calibration/shapes-eval.txt"]

#: stated tolerance of the fast simulation against true fp16 execution, per component output (see the test)
PSNR_DELTA_DB = 1.5  # |PSNR(fast, fp32) - PSNR(true fp16, fp32)|
PER_OP_IDENTICAL = 0.99  # share of op output elements bit-identical to the fp16 kernel's, given the same inputs
PER_OP_MAX_DIFF = 2 ** -10  # the most any element differs, relative to its op output's largest magnitude (1 ulp there)


class Interface(nn.Module):
    """fp32 interface and an explicitly fp32 internal op, like the programs' casts and timestep embedding."""

    def forward(self, x, ids):
        y = x * 1.0009765625  # 1 + 2**-10: representable in fp16, its product with x often is not
        return (y + torch.arange(4, dtype=torch.float32)).float() + ids.float()


def test_forced_fp16_rounds_every_float_op_and_input():
    x = torch.full((4,), 1.0 + 2 ** -11)  # not representable in fp16
    ids = torch.tensor([1, 2, 3, 4])
    program = torch.export.export(Interface(), (x, ids))
    exact = Interface()(x, ids)
    fp32 = simulate.twin(program, forced_fp16=False)(x, ids)
    fp16 = simulate.twin(program, forced_fp16=True)(x, ids)
    assert fp32.dtype == fp16.dtype == torch.float32
    assert torch.equal(fp32, exact)  # an fp32 program, not forced: plain fp32
    reference = ((x.half() * torch.tensor(1.0009765625, dtype=torch.float16))
                 + torch.arange(4, dtype=torch.float16)) + ids.half()
    assert torch.equal(fp16, reference.float()) and not torch.equal(fp16, exact)
    assert torch.equal(simulate.true_fp16(program)(x, ids), reference.float())


def test_layers_kept_in_fp32_are_computed_in_fp32():
    """A program exported in fp16 with a `keep_fp32` layer, simulated in the graph's own dtypes: the kept layer's
    arithmetic is exact fp32, the rest rounds."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
            with torch.no_grad():
                self.a.weight.copy_(torch.eye(4) * (1 + 2 ** -12))  # rounds to 1 in fp16, not in fp32
                self.b.weight.copy_(torch.eye(4) * (1 + 2 ** -12))

        def forward(self, x):
            return self.b(self.a(x))

    x = torch.full((1, 4), 3.0)
    mixed = ProgramModule(Two(), torch.float16, keep_fp32=["a"])
    assert mixed.kept_fp32 == ["a"]
    program = torch.export.export(mixed, (x,), strict=False)
    out = simulate.twin(program, forced_fp16=False)(x)
    # a: 3 * (1 + 2^-12) exactly in fp32, rounded to fp16 (3.0) on the way out; b's weight is 1.0 in fp16
    assert torch.equal(out, torch.full((1, 4), 3.0))
    inside = {}

    class Capture(simulate._Fp16):  # each linear's output as the next op reads it (before the island's cast back)
        def run_node(self, n):
            value = super().run_node(n)
            if n.op == "call_function" and "linear" in str(n.target):
                inside.setdefault(simulate.layer_of(n), value)
            return value

    Capture(simulate.twin(program, forced_fp16=False).module, False, None).run(x)
    assert torch.all(inside["a"] == 3 * (1 + 2 ** -12)) and torch.all(inside["b"] == 3.0), inside


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """fp16 bit patterns mapped to integers that count ulps across zero."""
    i = t.contiguous().view(torch.int16).int()
    return torch.where(i < 0, -32768 - i, i)


class _PerOp(torch.fx.Interpreter):
    """Runs the fast simulation and, at every op, PyTorch's float16 kernel on the very same fp16 inputs: how many
    output elements differ, and by how much relative to the op output's largest magnitude."""

    def __init__(self, module):
        super().__init__(module)
        self.elements = self.identical = 0
        self.max_diff, self.worst_op = 0.0, None

    def run_node(self, n):
        if n.op != "call_function" or getattr(n.target, "__name__", "").startswith("_assert_tensor_metadata"):
            value = super().run_node(n)
            return simulate._round(value) if n.op in ("placeholder", "get_attr") else value
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        fast = simulate._round(n.target(*args, **kwargs))

        def half(v):
            return v.half() if isinstance(v, torch.Tensor) and v.dtype == torch.float32 else v

        true = n.target(*[half(a) for a in args], **{k: half(v) for k, v in kwargs.items()})
        if isinstance(fast, torch.Tensor) and fast.is_floating_point() and isinstance(true, torch.Tensor) \
                and torch.isfinite(fast).all() and fast.numel():
            true = true.half().float()
            self.elements += fast.numel()
            self.identical += int((fast == true).sum())
            diff = float((fast - true).abs().max()) / max(float(true.abs().max()), 2 ** -24)
            if diff > self.max_diff:
                self.max_diff, self.worst_op = diff, str(n.target)
        return fast


@pytest.fixture(scope="module")
def shapes_programs(build_cache):
    """The embedded default's three components exported in fp32 (as a force_fp16 delegate takes them), with the
    held-out vectors a build tests them on (first eval prompt: first and last UNet step)."""
    import os

    from mdship.build import Builder, _pick_vectors
    from mdship.cache import Cache
    from mdship.recipe import load_recipe
    from mdship.stages import calibrate

    os.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes/md-vulkan-fp16.yaml", SHAPES)
    builder = Builder(recipe, cache=Cache(build_cache), progress=False)
    modules = builder.checkpoint.modules()
    out = {}
    for name in ("text_encoder", "unet", "vae_decoder"):
        calls = [calibrate.for_program(name, c, 1) for c in _pick_vectors(builder.eval_recording(), name)]
        program = torch.export.export(ProgramModule(modules[name]).eval(), calls[0], strict=False)
        out[name] = (modules[name], program, calls)
    return out


def test_fast_simulation_agrees_with_true_fp16_on_the_embedded_default(shapes_programs):
    """What the fast simulation claims: every op computes what PyTorch's fp16 CPU kernel computes from the same fp16
    inputs, up to accumulation order, and so the simulated PSNR of a component against fp32 is the true fp16 one.

    Measured (builtin:shapes, the held-out vectors): 99.97% / 99.81% / 99.99% of op output elements (text encoder /
    UNet / decoder) bit-identical, every other within one fp16 ulp of its op output's largest magnitude (matmul and
    convolution accumulation order; fp16 rsqrt, which PyTorch's CPU kernel rounds twice); per component the two
    PSNRs against fp32 within 0.9 dB. Stated tolerance: PER_OP_IDENTICAL, PER_OP_MAX_DIFF, PSNR_DELTA_DB."""
    from mdship.metrics import tensor_psnr

    for name, (module, program, calls) in shapes_programs.items():
        fast, true = simulate.twin(program, forced_fp16=True), simulate.true_fp16(program)
        for call in calls:
            with torch.no_grad():
                reference = module(*call).float()
                fast_db, true_db = tensor_psnr(reference, fast(*call)), tensor_psnr(reference, true(*call))
            assert abs(fast_db - true_db) <= PSNR_DELTA_DB, (name, fast_db, true_db)
            assert 40 < true_db < 120, (name, true_db)  # fp16 did change the numbers: the comparison means something
        per_op = _PerOp(program.module())
        with torch.no_grad():
            per_op.run(*calls[0])
        assert per_op.elements > 10_000
        assert per_op.identical / per_op.elements >= PER_OP_IDENTICAL, (name, per_op.identical / per_op.elements)
        assert per_op.max_diff <= PER_OP_MAX_DIFF, (name, per_op.max_diff, per_op.worst_op)


class Attention(nn.Module):
    """A masked softmax like CLIP's causal mask (finfo(float32).min, an Inf in fp16 on purpose) after a projection
    whose gain decides whether fp16 overflows."""

    def __init__(self, gain: float):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.gain = gain

    def forward(self, x):
        scores = self.proj(x) * self.gain
        mask = torch.where(torch.ones(8, 8, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min, 0.0)
        return torch.softmax(scores.unsqueeze(-1) + mask, dim=-1).sum(-1)


@pytest.mark.parametrize("forced", [True, False])
def test_watch_names_the_layer_that_overflows_and_ignores_masks(forced):
    x = torch.full((1, 8), 10.0)
    for gain, overflow in ((1.0, False), (1e5, True)):
        module = Attention(gain).eval()
        program = torch.export.export(ProgramModule(module, torch.float32 if forced else torch.float16), (x,),
                                      strict=False)
        watch = simulate.Watch()
        with torch.no_grad():
            simulate.twin(program, forced_fp16=forced)(x, watch=watch)
        if not overflow:
            assert watch.first_overflow is None, watch.first_overflow  # the mask's -inf is not an overflow
            assert watch.closest(1)[0]["max_abs"] < 65504
            continue
        first = watch.first_overflow
        assert first is not None and first["call"] == 0 and first["max_abs"] >= 65520 and first["nonfinite"] > 0
        assert first["layer"] == "(component)" and "mul" in first["op"]  # proj(x) * gain, at the top level
