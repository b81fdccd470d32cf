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


