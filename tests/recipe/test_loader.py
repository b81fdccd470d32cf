"""Reading recipes (mdship.recipe.loader): every malformed recipe is one `file:line:col: key: what; expected` line;
`extends:`, overrides, the shipped recipes."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mdship import capabilities
from mdship.capabilities import CAPABILITY_TABLE, CapabilityError, capability_markdown, legalize
from mdship.errors import RecipeError, UserError
from mdship.recipe import ComponentSpec, LayerSpec, Recipe, list_recipes, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
BAD = Path(__file__).resolve().parent / "recipes_bad"

# Each malformed recipe in tests/recipes_bad and a substring its one-line error must contain
# (file:line:col, key path and the gist of the message).
BAD_RECIPES = {
    "unknown_top_key.yaml": "unknown_top_key.yaml:3:1: targts: unknown key 'targts'; did you mean 'targets'?",
    "unknown_nested_key.yaml": "unknown_nested_key.yaml:4:3: sampler.stpes: unknown key 'stpes'; did you mean 'steps'?",
    "unknown_key_no_match.yaml": "unknown_key_no_match.yaml:4:3: sampler.zzz: unknown key 'zzz'; expected one of: kind, steps, guidance, guidance_mode",
    "unknown_component.yaml": "unknown_component.yaml:4:3: components.unnet: unknown key 'unnet'; did you mean 'unet'?",
    "unknown_layer_key.yaml": "unknown_layer_key.yaml:5:29: components.unet.linear.activation: unknown key 'activation'; did you mean 'activations'?",
    "bad_backend.yaml": "bad_backend.yaml:4:14: targets[0].backend: 'xnnpak' is not allowed; expected 'xnnpack', 'vulkan', 'coreml' or 'portable'",
    "missing_checkpoint.yaml": "missing_checkpoint.yaml:1:1: checkpoint: missing required key; expected a directory, 'builtin:NAME'",
    "missing_targets.yaml": "missing_targets.yaml:1:1: targets: missing required key; expected a list of targets",
    "missing_backend.yaml": "missing_backend.yaml:4:5: targets[0].backend: missing required key; expected one of xnnpack, vulkan, coreml, portable",
    "empty_targets.yaml": "empty_targets.yaml:3:1: targets: is empty; expected a list of targets",
    "targets_not_list.yaml": "targets_not_list.yaml:3:10: targets: 'xnnpack' is not a list; expected a list of targets",
    "resolution_not_multiple.yaml": "resolution_not_multiple.yaml:3:13: resolution: 500 px is not a multiple of 32 in 32..1024; expected",
    "resolution_string.yaml": "resolution_string.yaml:3:13: resolution: '512' is not an integer; expected an integer",
    "steps_zero.yaml": "steps_zero.yaml:4:10: sampler.steps: 0 is too small; expected a value >= 1",
    "steps_bool.yaml": "steps_bool.yaml:4:10: sampler.steps: true is not an integer",
    "guidance_low.yaml": "guidance_low.yaml:3:21: sampler.guidance: 0.5 is too small; expected a value >= 1.0",
    "guidance_mode_bad.yaml": "guidance_mode_bad.yaml:4:18: sampler.guidance_mode: 'batch3' is not allowed; expected 'batch2', 'two_calls' or 'auto'",
    "sampler_not_mapping.yaml": "sampler_not_mapping.yaml:3:10: sampler: 'fast' is not a mapping; expected a mapping with keys kind, steps",
    "one_step_steps.yaml": "one_step_steps.yaml:5:10: sampler.steps: kind one_step runs 1 step, not 8; expected steps: 1 or null",
    "bad_precision.yaml": "bad_precision.yaml:5:16: components.unet.precision: 'bf16' is not allowed; expected 'fp32' or 'fp16'",
    "weight_only_xnnpack.yaml": "weight_only_xnnpack.yaml:5:5: components.unet.linear: xnnpack: linear weights int8 with activations fp16 (weight-only) is not supported: XNNPACK claims weight-only",
    "int4_per_channel.yaml": "int4_per_channel.yaml:7:20: components.unet.linear.granularity: int4 weights are quantized per group only; expected granularity: per_group",
    "group_size_xnnpack.yaml": "group_size_xnnpack.yaml:7:19: components.unet.linear.group_size: xnnpack: group_size 48 is not supported for linear int4 weights; expected a multiple of 32",
    "int4_conv_xnnpack.yaml": "int4_conv_xnnpack.yaml:5:5: components.unet.conv: xnnpack: conv weights int4 with activations int8_static is not supported: XNNPACK has no int4 conv",
    "int8_dynamic_conv_xnnpack.yaml": "int8_dynamic_conv_xnnpack.yaml:5:5: components.vae_decoder.conv: xnnpack: conv weights int8 with activations int8_dynamic is not supported: PT2E dynamic int8 conv lowers, then fails at run time",
    "int8_static_per_group.yaml": "int8_static_per_group.yaml:5:42: components.unet.linear.granularity: xnnpack: linear weights int8 per_group with activations int8_static is not supported; expected granularity per_channel",
    "activations_without_int_weights.yaml": "activations_without_int_weights.yaml:5:27: components.unet.linear.activations: activations int8_dynamic need int8 or int4 weights",
    "vulkan_quant_conv.yaml": "vulkan_quant_conv.yaml:5:5: components.unet.conv: vulkan: conv weights int8 with activations fp16 (weight-only) is not supported: only linear layers can be quantized for Vulkan",
    "vulkan_int8_dynamic.yaml": "vulkan_int8_dynamic.yaml:5:5: components.unet.linear: vulkan: linear weights int8 with activations int8_dynamic is not supported: the Vulkan delegate has no quantized-activation path",
    "coreml_ios17_int4.yaml": "coreml_ios17_int4.yaml:9:34: targets[0].coreml.minimum_deployment_target: coreml: iOS17 cannot run unet.linear weights int4 per_group",
    "coreml_options_on_xnnpack.yaml": "coreml_options_on_xnnpack.yaml:5:5: targets[0].coreml: coreml options are given for backend xnnpack; expected them only with backend: coreml",
    "vulkan_options_on_coreml.yaml": "vulkan_options_on_coreml.yaml:5:5: targets[0].vulkan: vulkan options are given for backend coreml",
    "coreml_compute_units.yaml": "coreml_compute_units.yaml:5:29: targets[0].coreml.compute_units: 'cpu_and_npu' is not allowed; expected 'all', 'cpu_and_gpu', 'cpu_and_ne' or 'cpu_only'",
    "fallback_on_xnnpack.yaml": "fallback_on_xnnpack.yaml:5:5: targets[0].fallback: backend xnnpack takes no fallback",
    "fallback_not_xnnpack.yaml": "fallback_not_xnnpack.yaml:5:16: targets[0].fallback[0]: 'vulkan' is not allowed; expected 'xnnpack'",
    "fallback_weight_only.yaml": "fallback_weight_only.yaml:8:5: targets[0].fallback: ops vulkan rejects go to xnnpack, which cannot run components.unet",
    "vulkan_batch2.yaml": "vulkan_batch2.yaml:4:18: sampler.guidance_mode: batch2 is not supported by targets[0] (vulkan)",
    "duplicate_target_names.yaml": "duplicate_target_names.yaml:5:5: targets[1].name: target name 'xnnpack' is already used by targets[0]; expected unique names",
    "bad_target_name.yaml": "bad_target_name.yaml:5:11: targets[0].name: 'my phone/1' cannot name the output folder",
    "fp16_portable.yaml": "fp16_portable.yaml:5:16: components.unet.precision: portable: precision fp16 is not supported: the portable reference target runs fp32 only; expected precision fp32",
    "preset_typo.yaml": "preset_typo.yaml:1:13: checkpoint: unknown preset 'mobildiffusion'; expected preset:mobilediffusion or preset:tiny; did you mean 'preset:mobilediffusion'?",
    "checkpoint_scheme.yaml": "checkpoint_scheme.yaml:1:13: checkpoint: unknown checkpoint scheme 'hf:'",
    "builtin_seed.yaml": "builtin_seed.yaml:1:13: checkpoint: 'builtin:shapes@3': a '@SEED' suffix is only for preset: checkpoints",
    "gates_ssim.yaml": "gates_ssim.yaml:4:15: gates.image_ssim: 1.5 is too large; expected a value <= 1.0",
    "keep_not_list.yaml": "keep_not_list.yaml:5:11: components.unet.keep: 'conv_in' is not a list; expected a list of module-name globs",
    "keep_fp32_in_fp32.yaml": "keep_fp32_in_fp32.yaml:5:5: components.vae_decoder.keep_fp32: keeps layers of an fp16 component in fp32, but precision is fp32; expected precision: fp16",
    "lut_per_group.yaml": "lut_per_group.yaml:7:20: components.unet.linear.granularity: weights lut6 with granularity per_group: palettized (lut) weights take one look-up table per tensor",
    "lut_vulkan.yaml": "lut_vulkan.yaml:5:5: components.unet.linear: vulkan: linear weights lut4 with activations fp32 (weight-only) is not supported: palettized (look-up table) weights are a Core ML format",
    "keep_fp32_vulkan_int4.yaml": "keep_fp32_vulkan_int4.yaml:7:5: components.unet.keep_fp32: vulkan: keep_fp32 with linear weights int4 is not supported: ExecuTorch 1.5.1's Vulkan FusePatternsPass",
    "gates_flops_share.yaml": "gates_flops_share.yaml:4:26: gates.delegated_flops_share: 100 is too large; expected a value <= 1.0",
    "calibration_zero.yaml": "calibration_zero.yaml:4:16: calibration.num_prompts: 0 is too small; expected a value >= 1",
    "description_multiline.yaml": "description_multiline.yaml:1:14: description: spans several lines; expected one line",
    "yaml_syntax.yaml": "yaml_syntax.yaml:5:4: invalid YAML:",
    "yaml_tab.yaml": "yaml_tab.yaml:4:1: invalid YAML: found character '\\t'",
    "not_mapping.yaml": "not_mapping.yaml:1:1: the recipe is a list; expected a mapping of keys",
    "empty.yaml": "empty.yaml: the recipe is empty; expected a mapping",
    "duplicate_key.yaml": "duplicate_key.yaml:3:1: output: duplicate key (first set on line 2)",
    "non_string_key.yaml": "non_string_key.yaml:4:3: sampler.1: key 1 is not a name",
    "python_tag.yaml": "python_tag.yaml:3:10: invalid YAML: could not determine a constructor for the tag",
    "alias_recursive.yaml": "alias_recursive.yaml:3:4: x[0]: the value contains itself through an alias",
    "alias_bomb.yaml": "alias_bomb.yaml:3:26: e[0][6][8][8][6]: aliases expand the recipe beyond 20000 values",
    "extends_missing.yaml": "extends_missing.yaml:1:10: extends: no such file 'nope.yaml'",
    "extends_not_string.yaml": "extends_not_string.yaml:1:10: extends: 5 is not a file name",
    # the error is found in the base, and names the base, not the recipe
    "extends_cycle.yaml": "_bases/cycle_b.yaml:1:10: extends: cycle extends_cycle.yaml -> cycle_b.yaml -> extends_cycle.yaml",
    "extends_bad_base.yaml": "_bases/bad_base.yaml:3:10: sampler.steps: -1 is too small; expected a value >= 1",
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


MINIMAL = textwrap.dedent("""\
    checkpoint: builtin:shapes
    output: out
    targets:
      - backend: xnnpack
    """)


# ----------------------------------------------------------------------------- malformed recipes


def test_every_bad_recipe_has_an_expectation():
    on_disk = {p.name for p in BAD.glob("*.yaml")}
    assert on_disk == set(BAD_RECIPES)
    assert len(on_disk) >= 30


@pytest.mark.parametrize("name", sorted(BAD_RECIPES))
def test_bad_recipe_message(name):
    message = error_of(BAD / name)
    assert BAD_RECIPES[name] in message
    # file:line:col (or file: for whole-file problems) first, then the message
    assert message.startswith(str(BAD)), message


def test_recipe_error_is_a_user_error():
    assert issubclass(RecipeError, UserError)


def test_weight_only_int8_on_xnnpack_lists_legal_alternatives():
    message = error_of(BAD / "weight_only_xnnpack.yaml")
    assert "computes garbage" in message
    legal = message.split("expected one of (legal on xnnpack):", 1)[1]
    assert "int8_dynamic [8da8w" in legal and "[8da4w" in legal
    assert "weights fp32 + activations fp32" in legal and "weights fp16 + activations fp16" in legal
    assert "int8_static [PT2E" in legal


# ----------------------------------------------------------------------------- files and paths


def test_missing_file_suggests_sibling(tmp_path):
    write(tmp_path / "md-xnnpack-fp16.yaml", MINIMAL)
    message = error_of(tmp_path / "md-xnnpack-fp61.yaml")
    assert message.endswith("no such recipe file; did you mean "
                            f"'{tmp_path / 'md-xnnpack-fp16.yaml'}'?")


def test_directory_is_not_a_recipe(tmp_path):
    assert error_of(tmp_path) == f"{tmp_path}: is a directory; expected a recipe .yaml file"


def test_empty_sections_mean_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", MINIMAL + "sampler:\ngates:\ncomponents:\n"))
    assert recipe.sampler.guidance_mode == "auto"
    assert recipe.gates.component_psnr_db is None


def test_yaml_anchors_and_merge_keys(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", """\
        checkpoint: builtin:shapes
        output: out
        components:
          unet: &q
            precision: fp16
          text_encoder:
            <<: *q
            on_fp16_overflow: fp32
        targets: [{backend: xnnpack}]
        """))
    assert recipe.component("text_encoder").precision == "fp16"
    assert recipe.component("text_encoder").on_fp16_overflow == "fp32"


# ----------------------------------------------------------------------------- extends


def test_extends_deep_merges_mappings_and_replaces_lists(tmp_path, monkeypatch):
    write(tmp_path / "base" / "common.yaml", """\
        checkpoint: preset:tiny@7
        output: base-out
        resolution: 256
        sampler: {kind: ddim, steps: 8, guidance: 3.0}
        components:
          unet:
            precision: fp16
            keep: [conv_in]
        targets:
          - backend: xnnpack
          - backend: portable
        """)
    write(tmp_path / "recipes" / "child.yaml", """\
        extends: ../base/common.yaml
        output: child-out
        sampler: {steps: 4}
        components:
          unet:
            linear: {weights: int4, activations: fp16}
        targets:
          - backend: vulkan
        """)
    monkeypatch.chdir(ROOT)  # bases resolve relative to the recipe file, not the cwd
    recipe = load_recipe(tmp_path / "recipes" / "child.yaml")
    assert recipe.sampler.kind == "ddim" and recipe.sampler.steps == 4
    assert recipe.sampler.guidance == 3.0
    unet = recipe.component("unet")
    assert unet.precision == "fp16" and unet.keep == ["conv_in"]
    assert unet.layer_spec("linear").weights == "int4"
    assert [t.backend for t in recipe.targets] == ["vulkan"]
    assert recipe.output == "child-out" and recipe.resolution == 256
    assert recipe.checkpoint == "preset:tiny@7"
    assert recipe.extends == [str(tmp_path / "base" / "common.yaml")]


def test_extends_list_later_bases_win(tmp_path):
    write(tmp_path / "a.yaml", "resolution: 128\nsampler: {steps: 2, guidance: 2.0}\n")
    write(tmp_path / "b.yaml", "resolution: 256\nsampler: {steps: 3}\n")
    recipe = load_recipe(write(tmp_path / "r.yaml", "extends: [a.yaml, b.yaml]\n" + MINIMAL))
    assert recipe.resolution == 256
    assert recipe.sampler.steps == 3 and recipe.sampler.guidance == 2.0


def test_extends_recursive_chain(tmp_path):
    write(tmp_path / "grand.yaml", "resolution: 128\ndescription: grand\n")
    write(tmp_path / "parent.yaml", "extends: grand.yaml\nsampler: {steps: 5}\n")
    recipe = load_recipe(write(tmp_path / "r.yaml", "extends: parent.yaml\n" + MINIMAL))
    assert recipe.resolution == 128 and recipe.sampler.steps == 5
    assert recipe.description == "grand"
    assert [Path(p).name for p in recipe.extends] == ["grand.yaml", "parent.yaml"]


def test_extends_self_is_a_cycle(tmp_path):
    path = write(tmp_path / "r.yaml", "extends: r.yaml\n" + MINIMAL)
    assert error_of(path) == (f"{path}:1:10: extends: cycle r.yaml -> r.yaml; "
                              f"expected a chain of bases that ends")


def test_extends_error_points_at_the_file_that_set_the_value(tmp_path):
    write(tmp_path / "base.yaml", "sampler:\n  steps: 4\n  kind: ddm\n")
    path = write(tmp_path / "r.yaml", "extends: base.yaml\n" + MINIMAL)
    assert error_of(path).startswith(f"{tmp_path / 'base.yaml'}:3:9: sampler.kind: 'ddm'")
    # the child overriding the bad value takes the blame for its own value
    write(tmp_path / "base.yaml", "sampler:\n  steps: 4\n")
    path = write(tmp_path / "r.yaml", "extends: base.yaml\nsampler: {steps: 0}\n" + MINIMAL)
    assert error_of(path).startswith(f"{path}:2:18: sampler.steps: 0 is too small")


def test_extends_list_replaced_marks_follow_the_child(tmp_path):
    write(tmp_path / "base.yaml", "targets:\n  - backend: xnnpack\n  - backend: vulkan\n")
    path = write(tmp_path / "r.yaml", """\
        extends: base.yaml
        checkpoint: builtin:shapes
        output: out
        targets: [{backend: coreml, vulkan: {}}]
        """)
    assert error_of(path).startswith(f"{path}:4:29: targets[0].vulkan: vulkan options")


# ----------------------------------------------------------------------------- overrides


def test_overrides_apply_in_order(tmp_path):
    path = write(tmp_path / "r.yaml", MINIMAL)
    recipe = load_recipe(path, ["checkpoint=preset:mobilediffusion", "sampler.steps=4",
                                "targets=[{backend: vulkan}]", "targets[0].name=phone",
                                "components.unet.linear.weights=int4",
                                "resolution=null", "sampler.guidance=7"])
    assert recipe.checkpoint == "preset:mobilediffusion"
    assert recipe.sampler.steps == 4 and recipe.sampler.guidance == 7.0
    assert [(t.name, t.backend) for t in recipe.targets] == [("phone", "vulkan")]
    assert recipe.component("unet").layer_spec("linear").weights == "int4"


@pytest.mark.parametrize("override, expected", [
    ("sampler.stpes=4", "<override 'sampler.stpes=4'>: sampler.stpes: unknown key 'stpes'; did you mean 'steps'?"),
    ("sampler.steps=0", "<override 'sampler.steps=0'>: sampler.steps: 0 is too small; expected a value >= 1"),
    ("targets=[{backend: xnnpak}]", "<override 'targets=[{backend: xnnpak}]'>: targets[0].backend: 'xnnpak' is not allowed"),
    ("components.unet.linear={weights: int8, activations: fp32}",
     "<override 'components.unet.linear={weights: int8, activations: fp32}'>: components.unet.linear: xnnpack: linear weights int8 with activations fp32 (weight-only) is not supported"),
    ("colour.depth=8", "<override 'colour.depth=8'>: colour: unknown key 'colour'"),
    ("sampler.steps", "<override 'sampler.steps'>: no '='; expected KEY.PATH=VALUE"),
    ("sampler..steps=1", "<override 'sampler..steps=1'>: 'sampler..steps' is not a key path"),
    ("targets[3].backend=vulkan", "<override 'targets[3].backend=vulkan'>: targets[3]: no such list item (the list has 1); expected an index below 1"),
    ("output.path=x", "<override 'output.path=x'>: output: is the value 'out', not a mapping"),
    ("sampler.steps=[1", "<override 'sampler.steps=[1'>: sampler.steps: value '[1' is not valid YAML"),
    ("extends=other.yaml", "<override 'extends=other.yaml'>: extends: cannot be overridden"),
])
def test_override_errors(tmp_path, override, expected):
    message = error_of(write(tmp_path / "r.yaml", MINIMAL), [override])
    assert message.startswith(expected), message


def test_override_does_not_hide_file_errors(tmp_path):
    path = write(tmp_path / "r.yaml", MINIMAL + "resolution: 100\n")
    assert error_of(path, ["sampler.steps=2"]).startswith(f"{path}:5:13: resolution:")


# ----------------------------------------------------------------------------- shipped recipes


SHIPPED = sorted(p.name for p in RECIPES.glob("*.yaml"))


def test_shipped_recipe_set():
    expected = {"default.yaml", "md-xnnpack-fp32.yaml", "md-xnnpack-fp16.yaml",
                "md-xnnpack-w8a8.yaml", "md-xnnpack-8da4w.yaml", "md-vulkan-fp16.yaml",
                "md-vulkan-w4-fp16.yaml", "md-coreml-fp16.yaml", "md-coreml-w8-fp16.yaml",
                "md-coreml-w4-fp16.yaml"}
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_validates(name):
    recipe = load_recipe(RECIPES / name)
    assert recipe.description and "\n" not in recipe.description
    assert recipe.output == f"artifacts/{Path(name).stem}"
    if name != "default.yaml":
        assert recipe.checkpoint == "preset:mobilediffusion" and recipe.resolution == 512
        assert recipe.extends, "paper recipes share a base via extends"


def test_shipped_recipe_contents():
    default = load_recipe(RECIPES / "default.yaml")
    assert default.checkpoint == "builtin:shapes" and default.output == "artifacts/default"
    assert [t.backend for t in default.targets] == ["xnnpack"]
    assert not any(default.component(c).is_quantized for c in ("text_encoder", "unet", "vae_decoder"))

    w8a8 = load_recipe(RECIPES / "md-xnnpack-w8a8.yaml").component("unet")
    assert (w8a8.layer_spec("linear").weights, w8a8.layer_spec("linear").activations) == ("int8", "int8_dynamic")
    assert (w8a8.layer_spec("conv").weights, w8a8.layer_spec("conv").activations) == ("int8", "int8_static")
    assert w8a8.needs_calibration

    da4w = load_recipe(RECIPES / "md-xnnpack-8da4w.yaml").component("unet").layer_spec("linear")
    assert (da4w.weights, da4w.granularity, da4w.group_size, da4w.activations) == \
        ("int4", "per_group", 32, "int8_dynamic")

    vulkan = load_recipe(RECIPES / "md-vulkan-w4-fp16.yaml")
    assert vulkan.component("unet").precision == "fp16"  # from base/fp16.yaml, deep-merged
    assert vulkan.component("unet").layer_spec("attention").weights == "int4"
    assert vulkan.targets[0].fallback == []

    for name in ("md-xnnpack-fp16.yaml", "md-vulkan-fp16.yaml", "md-coreml-fp16.yaml"):
        recipe = load_recipe(RECIPES / name)
        assert all(recipe.component(c).precision == "fp16"
                   for c in ("text_encoder", "unet", "vae_decoder"))


def test_list_recipes_lists_top_level_only(tmp_path):
    listed = dict(list_recipes(RECIPES))
    assert set(listed) == {Path(n).stem for n in SHIPPED}
    assert "paper" not in listed and "fp16" not in listed
    assert all(d and not d.startswith("(invalid") for d in listed.values())

    write(tmp_path / "good.yaml", "description: fine\n" + MINIMAL)
    write(tmp_path / "broken.yaml", "checkpoint: x\n")
    write(tmp_path / "base" / "b.yaml", "resolution: 64\n")
    listed = dict(list_recipes(tmp_path))
    assert set(listed) == {"good", "broken"}
    assert listed["good"] == "fine"
    assert listed["broken"].startswith("(invalid: ") and "missing required key" in listed["broken"]
    with pytest.raises(RecipeError, match="no such recipes directory"):
        list_recipes(tmp_path / "nope")



def test_extends_chain_too_deep_is_one_line(tmp_path):
    from mdship.recipe import MAX_EXTENDS_DEPTH

    for i in range(MAX_EXTENDS_DEPTH + 5):
        write(tmp_path / f"b{i}.yaml", f"extends: b{i + 1}.yaml\n")
    write(tmp_path / f"b{MAX_EXTENDS_DEPTH + 5}.yaml", "resolution: 128\n")
    message = error_of(write(tmp_path / "r.yaml", "extends: b0.yaml\n" + MINIMAL))
    assert f"the chain of bases is deeper than {MAX_EXTENDS_DEPTH}" in message



@pytest.mark.parametrize("line, words", [
    ("sampler: {guidance: .inf}", "sampler.guidance: .inf is not a finite number; expected a finite number"),
    ("sampler: {guidance: .nan}", "sampler.guidance: .nan is not a finite number"),
    ("sampler: {guidance: 1000}", "sampler.guidance: 1000 is too large; expected a value <= 100.0"),
    ("components: {unet: {linear: {weights: int4, activations: int8_dynamic, group_size: 1180591620717411303424}}}",
     "components.unet.linear.group_size: 1180591620717411303424 is too large; expected a value <= 8192"),
    ("gates: {image_psnr_db: .inf}", "gates.image_psnr_db: .inf is not a finite number"),
    ("description: \"a\\x08b\"", None),
])
def test_numbers_must_be_finite_and_bounded(tmp_path, line, words):
    path = write(tmp_path / "r.yaml", MINIMAL + line + "\n")
    if words is None:
        load_recipe(path)  # an escaped control character inside a quoted string is text, and fine
        return
    assert words in error_of(path)


def test_a_control_character_in_the_file_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL + "description: a\x08b\n")
    assert error_of(path) == f"{path}:5:15: invalid YAML: character 0x0008 is not allowed; expected printable text"
