"""Every shipped Core ML recipe, built on the tiny preset: manifest, coverage, structure (the embedded Core ML
model unpacked and its spec loaded with coremltools), and simulated fp16 / weight-only numerics against the gates.
Nothing Core ML runs on Linux: verification must say `simulated`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mdship import simulate
from mdship_testing import TINY_OVERRIDES, build_recipe, shipped_recipe_builds

# `make test` builds the int4 recipe (per-group int4 UNet, int8 text encoder / decoder, fp16 compute: every path);
# `make test-slow` builds all three.
RECIPES = [pytest.param("md-coreml-fp16", marks=pytest.mark.slow),
           pytest.param("md-coreml-w8-fp16", marks=pytest.mark.slow),
           pytest.param("md-coreml-lut6-fp16", marks=pytest.mark.slow), "md-coreml-w4-fp16"]
QUANTIZED = {"md-coreml-w8-fp16": {"text_encoder": "int8", "unet": "int8", "vae_decoder": "int8"},
             "md-coreml-w4-fp16": {"text_encoder": "int8", "unet": "int4", "vae_decoder": "int8"},
             "md-coreml-lut6-fp16": {"text_encoder": "int8", "unet": "lut6", "vae_decoder": "int8"}}
#: components whose formats have a published Neural Engine failure (labelled ANE-unverified, not refused)
ANE_UNVERIFIED = {"md-coreml-w4-fp16": {"text_encoder", "unet"}}

built = shipped_recipe_builds(RECIPES)


def test_manifest_coverage_and_simulated_verification(built):
    name, result, manifest = built
    assert manifest["target"]["backend"] == "coreml" and manifest["target"]["coreml"]["compute_precision"] == "fp16"
    assert manifest["verification"]["mode"] == "simulated" and "simulated" in manifest["verification"]["note"]
    assert manifest["sampler"]["guidance_mode"] == "batch2"
    assert manifest["components"]["unet"]["inputs"][0]["shape"][0] == 2
    for comp, c in manifest["components"].items():
        v = c["verification"]
        assert v["mode"] == "simulated" and v["simulated_as"] == simulate.SIMULATED_AS, (comp, v)
        assert v["passed"] and v["psnr_db"] >= v["gate_db"], (comp, v)
        assert v["gate_db"] == (25 if name in QUANTIZED else 35)
        # coverage: the tiny model lowers entirely into one Core ML partition
        assert c["partitions"] >= 1 and c["partitions_by_backend"].get("CoreMLBackend", 0) >= 1
        assert 0.0 <= c["delegated_flops_share"] <= 1.0 and c["flops"] > 0
        assert c["delegated_flops_share"] >= 0.9, (comp, c["fallback_ops"], c["fallback_flops"])
        assert c["delegated_ops"] > 0 and isinstance(c["fallback_ops"], dict)
        assert c["partitions"] == 1 and c["non_delegated_ops"] == 0  # gates.delegated_flops_share 1.0: full graph
        caveats = c.get("caveats") or []
        assert bool(caveats) == (comp in ANE_UNVERIFIED.get(name, ())), (comp, caveats)
        assert all(line.startswith("ANE-unverified: ") and "apple/" in line for line in caveats)
    assert manifest["warnings"] == []


def test_structure_reads_the_embedded_core_ml_model(built):
    name, result, manifest = built
    for comp, c in manifest["components"].items():
        s = c["structure"]
        assert s["ok"], (comp, [x for x in s["checks"] if not x["passed"]])
        assert all(d["backend"] == "CoreMLBackend" and d["bytes"] > 0 for d in s["delegates"])
        [model] = s["coreml"]
        assert model["specification_version"] >= 9  # iOS18
        assert model["compile_specs"] == {"compute_units": "all", "min_deployment_target": "9",
                                          "model_compute_precision": "float16", "model_type": "model"}
        assert sorted(i["shape"] for i in model["inputs"]) == sorted(i["shape"] for i in c["inputs"])
        io = model["delegate_io"]  # the Core ML model's own names and dtypes, mapped to the program's
        assert [m["program"] for m in io["inputs"]] == [i["name"] for i in c["inputs"]]
        assert [m["delegate"] for m in io["inputs"]] == [f"inputs_{k}" for k in range(len(c["inputs"]))]
        assert [m["shape"] for m in io["inputs"]] == [i["shape"] for i in c["inputs"]]
        assert {m["dtype"] for m, i in zip(io["inputs"], c["inputs"]) if i["dtype"] == "int64"} <= {"INT32"}
        assert [m["dtype"] for m in io["outputs"]] == ["FLOAT16"]  # an fp16 model: float32 only at the .pte
        assert {x["check"] for x in s["checks"]} >= {"io_inputs", "io_outputs"}
        assert [o["shape"] for o in model["outputs"]] == [o["shape"] for o in c["outputs"]]
        assert model["fp16_op_share"] >= 0.9
        want = QUANTIZED.get(name, {}).get(comp)
        if want:
            names = {"int8": {"INT8", "UINT8"}, "int4": {"INT4", "UINT4"}, "lut6": {"UINT6"}}[want]
            assert names & set(model["weight_dtypes"]), (comp, model["weight_dtypes"])
            assert model["quantization_ops"], (comp, model["op_types"])
        else:
            assert set(model["weight_dtypes"]) == {"FLOAT16"}, (comp, model["weight_dtypes"])


def test_the_pte_holds_a_loadable_mlpackage(built):
    """Independently of the build's own report: unpack the .pte's Core ML blob and load its spec."""
    from mdship.backends import coreml
    from mdship.backends.base import delegates

    name, result, manifest = built
    pte = (result.bundle / "unet.pte").read_bytes()
    [delegate] = delegates(pte)
    with coreml.unpacked(delegate["blob"]) as root:
        spec = coreml.load_spec(root)
        metadata = json.loads((root / "metadata.json").read_text())
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [o.name for o in spec.description.output] == metadata["outputNames"]
    assert len(spec.description.input) == 3  # sample, timestep, context


def test_second_target_reuses_programs_and_emits_mlpackages(built, build_cache, tmp_path):
    """Two targets in one recipe: one bundle each; the second (same options + emit_mlpackage) lowers nothing."""
    name, first, _ = built
    if name != "md-coreml-w4-fp16":
        pytest.skip("checked once, on the recipe make test builds")
    options = "{compute_units: all, minimum_deployment_target: iOS18, compute_precision: fp16"
    targets = (f"targets=[{{backend: coreml, coreml: {options}}}}}, "
               f"{{name: coreml-pkg, backend: coreml, coreml: {options}, emit_mlpackage: true}}}}]")
    results = build_recipe(f"recipes/{name}.yaml", TINY_OVERRIDES + [f"output={tmp_path}", targets], build_cache)
    assert [r.target for r in results] == ["coreml", "coreml-pkg"]
    assert all(c.cached for r in results for c in r.components.values())
    plain, packaged = (json.loads((r.bundle / "manifest.json").read_text()) for r in results)
    assert not list(results[0].bundle.glob("*.mlpackage"))
    for comp in ("text_encoder", "unet", "vae_decoder"):
        assert packaged["components"][comp]["sha256"] == plain["components"][comp]["sha256"]
        assert packaged["components"][comp]["mlpackage"] == [f"{comp}.mlpackage"]
        package = results[1].bundle / f"{comp}.mlpackage"
        assert (package / "Manifest.json").is_file()
        assert f"{comp}.mlpackage/Data/com.apple.CoreML/model.mlmodel" in packaged["files"]
        import coremltools as ct

        spec = ct.models.utils.load_spec(str(package))
        assert [o.name for o in spec.description.output]
    assert Path(results[1].bundle / "unet.pte").read_bytes() == Path(first.bundle / "unet.pte").read_bytes()


@pytest.mark.parametrize("palettize", [False, True])
def test_trained_norm_affine_lowers_in_fp16(palettize, capfd):
    """A GroupNorm with a trained (non-identity) affine, as every real checkpoint has, in an fp16 program (as
    `precision: fp16` exports it) lowers to Core ML, also when a weight is palettized after conversion.

    Random-init norms (weight 1, bias 0) are folded away before coremltools' fuse_elementwise_to_batchnorm, which
    otherwise makes an fp16/fp32-mixed batch_norm that fails validation: the tiny preset alone cannot catch it, and
    coremltools' palettize_weights runs that pass again unless told the compile specs' pipeline."""
    import torch
    from executorch.exir import to_edge_transform_and_lower
    from torch import nn

    from mdship.backends import coreml
    from mdship.backends.base import delegates
    from mdship.backends.coreml import CoreMLBackend
    from mdship.recipe import CoreMLOptions, Target
    from mdship.stages.export import ProgramModule
    from mdship.stages.quantize import palettized

    class ResBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.proj = nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Conv2d(16, 16, 1)

        def forward(self, x):
            h = self.conv(x)
            return h + self.proj(nn.functional.silu(self.norm(h)))

    torch.manual_seed(0)
    block = ResBlock()
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
        if palettize:
            block.conv.weight.copy_(palettized(block.conv.weight, 4))
    program = torch.export.export(ProgramModule(block, torch.float16).eval(), (torch.randn(1, 8, 16, 16),))
    target = Target(backend="coreml", coreml=CoreMLOptions(compute_precision="fp16"))
    backend = CoreMLBackend()
    with backend.lowering(target, None, {"palettized": {"conv": 4}} if palettize else None):
        edge = to_edge_transform_and_lower(program, partitioner=backend.partitioners(target, None))
    [delegate] = delegates(edge.to_executorch().buffer)
    assert delegate["backend"] == "CoreMLBackend" and len(delegate["blob"]) > 0
    err = capfd.readouterr().err  # a quiet terminal: none of coremltools' progress bars
    assert not [bar for bar in ("Converting PyTorch Frontend", "Running MIL", "Running compression pass") if bar in err]
    with coreml.unpacked(delegate["blob"]) as root:
        ops = coreml.spec_summary(coreml.load_spec(root))["quantization_ops"]
    assert ops == ({"constexpr_lut_to_dense": 1} if palettize else {}), ops


def test_several_sizes_are_one_multifunction_model(tmp_path):
    """The tiny decoder at 64 and 96 px as two methods of one program: one Core ML multifunction model (a function
    per method, weights once), which the structural checks and `emit_mlpackage` read through the program's named
    data; an iOS 17 target is refused for it."""
    from mdship import backends
    from mdship.backends.base import delegates
    from mdship.backends.coreml import extract_mlpackages
    from mdship.checkpoint import Checkpoint
    from mdship.recipe import ComponentSpec, Target
    from mdship.errors import RecipeError
    from mdship.recipe import load_recipe
    from mdship.stages import export, lower, serialize

    backend, decoder = backends.get("coreml"), Checkpoint.open("preset:tiny").modules()["vae_decoder"]
    target, spec = Target(backend="coreml"), ComponentSpec(precision="fp16")

    def program(sizes):
        exported = {("forward" if i == 0 else f"res{px}"): export.run("vae_decoder", decoder, "fp32",
                                                                        (torch.randn(1, 8, px // 8, px // 8),),
                                                                        backend.rewrites)
                    for i, px in enumerate(sizes)}
        return serialize.run(lower.run(exported, backend.partitioners(target, spec), [])).data

    single, multi = program([64]), program([64, 96])
    assert {d["method"] for d in delegates(multi)} == {"forward", "res96"}
    assert len(multi) < 1.2 * len(single)  # the weights once
    io = ([{"name": "latent", "shape": [1, 8, 8, 8], "dtype": "float32"}],
          [{"name": "image", "shape": [1, 3, 64, 64], "dtype": "float32"}])
    structure = backend.inspect(multi, target, spec, *io)
    assert structure["ok"], [c for c in structure["checks"] if not c["passed"]]
    [part] = structure["coreml"]
    assert part["functions"] == ["forward", "res96"] and part["inputs"][0]["shape"] == [1, 8, 8, 8]
    [package] = extract_mlpackages(multi, tmp_path, "vae_decoder")
    assert (package / "Manifest.json").is_file()
    with pytest.raises(RecipeError, match="minimum_deployment_target: iOS17 cannot load a bundle with several"):
        load_recipe("recipes/md-coreml-fp16.yaml", ["resolutions=[512, 384]", "targets=[{backend: coreml, coreml: "
                                                     "{minimum_deployment_target: iOS17}}]"])


def test_full_graph_lowering_when_coverage_is_gated_at_100_percent():
    from mdship.backends.coreml import CoreMLBackend
    from mdship.recipe import Target

    plain = Target.model_validate({"backend": "coreml"})
    with_fallback = Target.model_validate({"backend": "coreml", "fallback": ["xnnpack"]})
    assert CoreMLBackend().partitioners(plain, None, whole_graph=True)[0].lower_full_graph is True
    assert CoreMLBackend().partitioners(plain, None)[0].lower_full_graph is False
    assert CoreMLBackend().partitioners(with_fallback, None, whole_graph=True)[0].lower_full_graph is False


def _decoder_entry(build_cache, tmp_path, overrides):
    """Only the decoder of md-coreml-fp16 on the tiny preset (a Core ML conversion of a few seconds)."""
    from mdship.build import Builder
    from mdship.cache import Cache
    from mdship.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes/md-coreml-fp16.yaml",
                         TINY_OVERRIDES + [f"output={tmp_path}", *overrides])
    builder = Builder(recipe, cache=Cache(build_cache), progress=False)
    return builder.component(recipe.targets[0], "vae_decoder")


def test_palettized_weights_become_core_ml_look_up_tables(build_cache, tmp_path):
    """lut4 on the decoder's convolutions: each planned weight is k-means palettized (at most 16 distinct values in the
    simulated twin, so simulation computes with the device's weights) and stored as one constexpr_lut_to_dense; 4-bit
    palettization on iOS18 is labelled ANE-unverified."""
    import torch

    result = _decoder_entry(build_cache, tmp_path, ["components.vae_decoder.conv.weights=lut4"])
    entry = result.entry
    q = entry.quantization
    assert q["scheme"]["conv"]["method"] == "palettize" and "OpPalettizerConfig" in q["scheme"]["conv"]["how"]
    assert q["palettized"] and set(q["palettized"].values()) == {4}
    assert sum(q["quantized"].values()) == len(q["palettized"])  # convs and 1x1 (pointwise) convs
    checks = {c["check"]: c for c in entry.structure["checks"]}
    assert checks["weights_palettized"]["passed"], checks["weights_palettized"]
    [model] = entry.structure["coreml"]
    assert model["quantization_ops"] == {"constexpr_lut_to_dense": len(q["palettized"])}
    assert checks["indices_4bit"]["passed"] and model["weight_dtypes"]["UINT4"] == len(q["palettized"])
    twin = torch.export.load(str(result.program.with_name("twin.forward.pt2")))
    weights = twin.state_dict
    for layer in q["palettized"]:
        assert torch.unique(weights[f"component.{layer}.weight"]).numel() <= 16, layer
    assert entry.caveats and entry.caveats[0].startswith("ANE-unverified: conv, pointwise weights lut4 per_tensor")
    assert entry.verification.passed and entry.verification.mode == "simulated"


def test_look_up_tables_take_the_layers_bits_on_large_fp16_weights():
    """A 64-value fp16 weight of paper-scale size (36,864 elements, a 3x3 conv of 64 channels) is stored with 6-bit
    indices and its values bit for bit. coremltools' mode="unique" counts values with np.unique on float16, which
    NumPy's AVX-512 float16 sort miscounts on arrays this large where the CPU has it (8-bit indices resulted)."""
    import numpy as np
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    from mdship.backends.coreml import exact_lut

    rng = np.random.default_rng(0)
    table = rng.standard_normal(64).astype(np.float16)
    weight = table[rng.integers(0, 64, size=(64, 64, 3, 3))]
    params = palettize_weights.blockwise_compress(weight, "CUSTOM", None, [0] * 4, exact_lut(6), 1)
    assert params.lut.shape[-2] == 64 and params.indices.max() < 64  # 6-bit indices
    assert np.array_equal(palettize_weights.decompress(params).reshape(weight.shape), weight)
    with pytest.raises(ValueError, match="holds 64 distinct values"):
        exact_lut(4)(weight)


def test_keep_fp32_on_core_ml_converts_with_fp32_compute_precision(build_cache, tmp_path):
    """A layer kept in fp32: compute_precision fp16 would cast it back to fp16, so the component is converted with
    compute precision fp32 from an fp16 program; the Core ML model then holds both fp16 and fp32 ops, and the
    simulation follows the program's dtypes."""
    result = _decoder_entry(build_cache, tmp_path, ["components.vae_decoder.keep_fp32=[decoder.mid]"])
    entry = result.entry
    assert entry.fp16_guard["kept_fp32"] == ["decoder.mid"] and entry.fp16_guard["action"] == "kept_layers_fp32"
    [model] = entry.structure["coreml"]
    assert model["compile_specs"]["model_compute_precision"] == "float32"
    assert 0.5 < model["fp16_op_share"] < 1.0, model["op_result_dtypes"]
    checks = {c["check"]: c for c in entry.structure["checks"]}
    assert checks["precision_mixed"]["passed"] and "precision_fp16" not in checks, checks
    assert json.loads(result.program.with_name("twin.json").read_text()) == {"forced_fp16": False}
    assert entry.verification.passed and entry.program_dtype == "float16"
