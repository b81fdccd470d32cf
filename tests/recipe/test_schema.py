"""The recipe schema (mdship.recipe.schema): defaults, resolved layer specs, gates, hashes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mdship import capabilities
from mdship.recipe import ComponentSpec, LayerSpec, Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = textwrap.dedent("""\
    checkpoint: builtin:shapes
    output: out
    targets:
      - backend: xnnpack
    """)

# ----------------------------------------------------------------------------- hashes


def test_hash_ignores_order_output_description_and_spelled_out_defaults(tmp_path):
    a = load_recipe(write(tmp_path / "a.yaml", """\
        description: one
        checkpoint: builtin:shapes
        output: out-a
        sampler: {steps: 4, guidance: 2}
        targets: [{backend: xnnpack}]
        """))
    b = load_recipe(write(tmp_path / "b.yaml", """\
        targets:
          - {backend: xnnpack, name: xnnpack}
        sampler: {guidance: 2.0, steps: 4, guidance_mode: auto}
        output: out-b
        checkpoint: builtin:shapes
        components:
          unet: {precision: fp32, linear: {weights: fp32}, keep: [conv_in, conv_out, time_embedding.*, "*norm*"]}
        """))
    assert a.recipe_hash() == b.recipe_hash()
    assert len(a.recipe_hash()) == 64 and int(a.recipe_hash(), 16) >= 0
    assert a.recipe_hash() != load_recipe(tmp_path / "a.yaml", ["sampler.steps=5"]).recipe_hash()
    assert a.recipe_hash() != load_recipe(tmp_path / "a.yaml", ["checkpoint=builtin:other"]).recipe_hash()


def test_hash_is_stable_across_processes():
    path = RECIPES / "md-xnnpack-8da4w.yaml"
    here = load_recipe(path).recipe_hash()
    code = f"from mdship.recipe import load_recipe; print(load_recipe({str(path)!r}).recipe_hash())"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, cwd=ROOT, check=True).stdout.strip()
    assert here == there



# ----------------------------------------------------------------------------- helpers


def test_component_defaults_and_layer_specs(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", MINIMAL + textwrap.dedent("""\
    components:
      unet:
        precision: fp16
        linear: {weights: int4, activations: int8_dynamic}
        conv: {weights: int8, activations: int8_static}
      text_encoder:
        linear: {weights: int8, activations: int8_dynamic}
        attention: {weights: fp32}
    """)))
    te = recipe.component("text_encoder")
    assert te.layer_spec("attention").weights == "fp32"  # explicit attention wins
    assert te.layer_spec("linear").granularity == "per_channel"  # int8 default
    unet = recipe.component("unet")
    attn = unet.layer_spec("attention")  # falls back to linear
    assert (attn.weights, attn.granularity, attn.group_size, attn.activations) == \
        ("int4", "per_group", 32, "int8_dynamic")
    assert unet.layer_spec("conv").granularity == "per_channel"
    assert unet.is_quantized and unet.needs_calibration
    vae = recipe.component("vae_decoder")  # not in the recipe: fp32 defaults
    assert vae == ComponentSpec() and not vae.is_quantized
    assert vae.keep == ["conv_in", "conv_out", "time_embedding.*", "*norm*"]
    assert vae.layer_spec("conv") == LayerSpec(weights="fp32", activations="fp32")
    with pytest.raises(ValueError):
        recipe.component("vae_encoder")
    with pytest.raises(ValueError):
        unet.layer_spec("norm")


def test_gate_for(tmp_path):
    path = write(tmp_path / "r.yaml", """\
        checkpoint: builtin:shapes
        output: out
        components:
          unet: {linear: {weights: int8, activations: int8_dynamic}}
          text_encoder: {precision: fp16}
        targets:
          - backend: xnnpack
        """)
    recipe = load_recipe(path)
    assert recipe.gate_for("unet") == 25.0
    assert recipe.gate_for("text_encoder") == 35.0
    assert recipe.gate_for("vae_decoder") == 60.0
    assert recipe.gate_for("vae_decoder", computes_fp16=True) == 35.0  # e.g. Vulkan force_fp16
    assert load_recipe(path, ["gates.component_psnr_db=42"]).gate_for("unet") == 42.0


def test_target_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", """\
        checkpoint: builtin:shapes
        output: out
        targets:
          - backend: coreml
          - {backend: vulkan, name: gpu, fallback: [xnnpack]}
        """))
    coreml, vulkan = recipe.targets
    assert coreml.name == "coreml" and coreml.coreml.minimum_deployment_target == "iOS18"
    assert coreml.coreml.compute_units == "all" and coreml.coreml.emit_mlpackage is False
    assert vulkan.name == "gpu" and vulkan.vulkan.force_fp16 is True and vulkan.coreml is None
    assert vulkan.options is vulkan.vulkan and coreml.options is coreml.coreml
    assert capabilities.guidance_mode("auto", "vulkan") == "two_calls"
    assert capabilities.guidance_mode("batch2", "xnnpack") == "batch2"



def test_recipe_built_in_python_validates_too():
    with pytest.raises(ValueError, match="weight-only"):
        Recipe(checkpoint="builtin:shapes", output="o", targets=[{"backend": "xnnpack"}],
               components={"unet": {"linear": {"weights": "int8"}}})




# ----------------------------------------------------------------------------- per-layer overrides (layers:)


OVERRIDES = MINIMAL + textwrap.dedent("""\
    components:
      unet:
        linear: {weights: int4, granularity: per_group, group_size: 32, activations: int8_dynamic}
        layers:
          mid_transformer.layers.0.ff.proj_in: {weights: int8, granularity: per_channel, activations: int8_dynamic}
          "*.cross_attn.to_kv": {weights: fp32}
    """)


def test_layer_overrides_load_resolve_and_change_the_hash(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", OVERRIDES))
    unet = recipe.component("unet")
    resolved = unet.override_specs()
    assert list(resolved) == ["mid_transformer.layers.0.ff.proj_in", "*.cross_attn.to_kv"]
    assert resolved["*.cross_attn.to_kv"].activations == "fp32"  # resolved against the component
    assert unet.is_quantized and not unet.needs_calibration
    assert recipe.canonical()["components"]["unet"]["layers"]["*.cross_attn.to_kv"]["weights"] == "fp32"
    plain = load_recipe(write(tmp_path / "plain.yaml", OVERRIDES.split("    layers:")[0]))
    assert plain.recipe_hash() != recipe.recipe_hash()
    static = load_recipe(tmp_path / "r.yaml", ['components.unet.layers={"*.ff.*": {weights: int8, '
                                               'activations: int8_static}}'])
    assert static.component("unet").needs_calibration  # a static override needs the calibration recording
    float_only = ComponentSpec(layers={"conv_in": LayerSpec(weights="int8", activations="int8_static")})
    assert float_only.is_quantized  # the layer types are all float: the override alone quantizes


@pytest.mark.parametrize("layers, expected", [
    ("{mid.proj: {weights: int8, granularity: per_channel, activation: int8_dynamic}}",
     "r.yaml:7:66: components.unet.layers['mid.proj'].activation: unknown key 'activation'; did you mean "
     "'activations'?"),
    ("{mid.proj: {weights: fp16}}",
     "r.yaml:7:34: components.unet.layers['mid.proj'].weights: fp16 in an fp32 component is not a per-layer format "
     "(a component computes in one float precision); expected fp32 (leave the layer float), int8 or int4"),
    ("{mid.proj: {weights: int4, granularity: per_group, group_size: 48, activations: int8_dynamic}}",
     "r.yaml:7:76: components.unet.layers['mid.proj'].group_size: xnnpack: group_size 48 is not supported for linear "
     "int4 weights; expected a multiple of 32 (and no other layer type takes this format either)"),
    ("{mid.proj: {weights: int4, activations: int8_static}}",
     "r.yaml:7:14: components.unet.layers['mid.proj']: xnnpack: linear weights int4 with activations int8_static is "
     "not supported: static int8 (PT2E) quantizes weights to int8 only"),
    ("{'': {weights: int8, activations: int8_dynamic}}",
     "components.unet.layers['']: empty pattern; expected a module-name glob"),
    ("{'mid proj': {weights: int8, activations: int8_dynamic}}",
     "components.unet.layers['mid proj']: 'mid proj' contains white space; expected a module-name glob"),
    ("[mid.proj]", 'r.yaml:7:5: components.unet.layers: ["mid.proj"] is not a mapping; expected a mapping of '
                   'module-name globs to layer formats'),
    ("{mid.proj: int8}", "r.yaml:7:24: components.unet.layers['mid.proj']: 'int8' is not a mapping; expected a "
                         "mapping with keys weights, granularity, group_size, activations"),
])
def test_layer_override_errors_point_at_the_key(tmp_path, layers, expected):
    from mdship.errors import RecipeError

    text = MINIMAL + f"components:\n  unet:\n    layers: {layers}\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path / "r.yaml", text))
    assert expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_layer_override_legal_somewhere_loads_and_each_backend_judges_it(tmp_path):
    """Which layers a pattern matches is known only once the model loads: the recipe accepts a format some layer
    type takes on every target (weight-only int8 is an XNNPACK embedding format), the build judges each match
    (tests/stages/test_quantize.py); a format no layer type takes on a target is refused at once."""
    weight_only = "components:\n  unet:\n    layers: {'*.to_kv': {weights: int8, activations: fp32}}\n"
    load_recipe(write(tmp_path / "ok.yaml", MINIMAL + weight_only))
    dynamic = "components:\n  unet:\n    layers: {'*.to_kv': {weights: int8, activations: int8_dynamic}}\n"
    from mdship.errors import RecipeError

    with pytest.raises(RecipeError, match=r"components\.unet\.layers\['\*\.to_kv'\]: vulkan: linear weights int8 "
                                          r"with activations int8_dynamic is not supported: the Vulkan delegate has "
                                          r"no quantized-activation path"):
        load_recipe(write(tmp_path / "vk.yaml", MINIMAL.replace("xnnpack", "vulkan") + dynamic))
