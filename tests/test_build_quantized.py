"""A quantized build on the tiny preset (md-xnnpack-8da4w): smaller programs, outputs that changed but stay close,
a manifest that says what was quantized, end-to-end image fidelity, and image gates that fail the build.

One build (the session fixture tiny_8da4w_bundle) on the session's shared cache; the gate test re-uses its cached programs and fidelity.
"""

from __future__ import annotations

import json
import re

import pytest

from mdship_testing import ROOT, TINY_OVERRIDES, build_recipe

RECIPE = "recipes/md-xnnpack-8da4w.yaml"


@pytest.fixture(scope="module")
def built(tiny_8da4w_bundle):
    """The session's 8da4w bundle (tests/conftest.py: RECIPE on the tiny preset) and its manifest."""
    return tiny_8da4w_bundle, json.loads((tiny_8da4w_bundle / "manifest.json").read_text())


def _fp32_weight_bytes() -> dict[str, int]:
    from mdship.checkpoint import Checkpoint

    modules = Checkpoint.from_preset("tiny", 0).modules()
    return {name: sum(p.numel() * 4 for p in m.parameters()) for name, m in modules.items()}


def test_quantized_programs_are_smaller(built):
    """Quantization that silently did nothing would leave the programs at their fp32 size."""
    _, manifest = built
    fp32 = _fp32_weight_bytes()
    sizes = {n: c["bytes"] for n, c in manifest["components"].items()}
    assert sizes["unet"] < 0.45 * fp32["unet"], (sizes, fp32)  # int4 linears + int8 convs
    assert sizes["vae_decoder"] < 0.5 * fp32["vae_decoder"], (sizes, fp32)  # int8 convs
    assert sizes["text_encoder"] < fp32["text_encoder"], (sizes, fp32)  # int8 linears (embeddings stay fp32)


def test_manifest_reports_the_quantization(built):
    _, manifest = built
    unet = manifest["components"]["unet"]["quantization"]
    assert unet["scheme"]["linear"]["weights"] == "int4" and unet["scheme"]["linear"]["group_size"] == 32
    assert unet["scheme"]["conv"]["activations"] == "int8_static"
    assert unet["quantized"]["linear"] > 0 and unet["quantized"]["attention"] > 0 and unet["quantized"]["conv"] > 0
    assert {"conv_in", "conv_out", "time_embedding.0", "time_embedding.2"} <= set(unet["kept_float"])
    decoder = manifest["components"]["vae_decoder"]["quantization"]
    assert {"decoder.conv_in", "decoder.conv_out"} <= set(decoder["kept_float"]) and decoder["quantized"]["conv"] > 0
    text = manifest["components"]["text_encoder"]["quantization"]
    assert text["scheme"]["attention"]["weights"] == "int8" and text["quantized"]["attention"] == 8


def test_quantized_outputs_changed_but_meet_the_gate(built):
    """Executed on the runtime against eager fp32 on held-out vectors: not bit-identical (fp32 programs give
    ~140 dB), not garbage (the quantized gate, 25 dB)."""
    _, manifest = built
    for name, c in manifest["components"].items():
        v = c["verification"]
        assert v["mode"] == "executed" and v["gate_db"] == 25, (name, v)
        assert 25 <= v["psnr_db"] < 90, (name, v)
        assert c["precision"] == "fp32" and c["fp16_guard"] is None


def test_fidelity_is_recorded(built):
    _, manifest = built
    f = manifest["fidelity"]
    assert f["mode"] == "executed" and f["prompts"] == 4 and f["seeds"] == [0, 1, 2, 3]
    psnr, ssim = f["image_psnr_db"], f["image_ssim"]
    assert 15 < psnr["worst"] <= psnr["mean"] < 200, f  # changed (200 = identical), not garbage
    assert 0.3 < ssim["worst"] <= ssim["mean"] < 1.0, f


def test_report_puts_the_quantized_bundle_against_fp32(built, tiny_bundle, run_cli):
    """The same tiny checkpoint as fp32 (tiny_bundle) and as 8da4w: the report's ratio and quality columns."""
    bundle, _ = built
    r = run_cli("report", tiny_bundle, bundle, "--json")
    assert r.exit_code == 0, r.err
    fp32, quantized = json.loads(r.out)["bundles"]
    assert fp32["ratio_vs_fp32"] == 1.0 and 0.1 < quantized["ratio_vs_fp32"] < 0.5, quantized
    assert all(quantized["bytes"][n] < fp32["bytes"][n] for n in fp32["bytes"])
    assert quantized["fidelity"]["image_psnr_db"]["mean"] < fp32["fidelity"]["image_psnr_db"]["mean"]


def test_fp32_reference_images_are_shared_between_bundles(built, tiny_bundle, build_cache):
    """fp32 and 8da4w bundles of one checkpoint are judged against the same cached fp32 images (computed once).
    Other reference sets in the session's cache (`mdship compare` on other prompts or seeds) have other sizes."""
    from safetensors.numpy import load_file

    entries = lambda stage: [p for p in (build_cache / stage).iterdir() if not p.name.startswith(".")]  # noqa: E731
    sizes = [len(load_file(str(p / "images.safetensors"))) for p in entries("reference")]
    assert len(entries("fidelity")) >= 2 and sizes.count(built[1]["fidelity"]["prompts"]) == 1, sizes


def test_image_gate_fails_the_build_from_the_cache(built, build_cache, tmp_path):
    _, manifest = built
    gate = manifest["fidelity"]["image_psnr_db"]["worst"] + 1.0
    [failed] = build_recipe(RECIPE, TINY_OVERRIDES + [f"output={tmp_path}", f"gates.image_psnr_db={gate}",
                                                      "gates.image_ssim=0.1"], build_cache)
    assert all(c.cached for c in failed.components.values())
    assert len(failed.failures) == 1 and "gates.image_psnr_db" in failed.failures[0], failed.failures
    assert not (tmp_path / "xnnpack").exists()


def test_fp16_overflow_fails_or_keeps_the_component_in_fp32(tmp_path, monkeypatch):
    """The guard's verdict is forced (the tiny model does not overflow); what the build does with it is real."""
    from mdship.build import Builder
    from mdship.cache import Cache
    from mdship.errors import VerificationError
    from mdship.recipe import load_recipe
    from mdship.stages import fidelity

    real_guard = fidelity.fp16_guard

    def overflowing(twin, inputs):
        return {**real_guard(twin, inputs[:1]), "overflow": True, "first_bad_call": 0}

    monkeypatch.setattr(fidelity, "fp16_guard", overflowing)
    monkeypatch.setenv("MDSHIP_BUILD_WORKERS", "1")  # the forced verdict lives in this process, not in build workers
    cache = Cache(tmp_path / "cache")  # private: these programs must not reach the session's cache
    overrides = TINY_OVERRIDES + [f"output={tmp_path / 'out'}"]
    recipe = load_recipe(ROOT / "recipes/md-xnnpack-fp16.yaml", overrides)
    with pytest.raises(VerificationError, match="text_encoder: fp16 output has Inf/NaN.*on_fp16_overflow: fp32"):
        Builder(recipe, cache=cache, progress=False).target(recipe.targets[0])

    recipe = load_recipe(ROOT / "recipes/md-xnnpack-fp16.yaml",
                         overrides + ["components.text_encoder.on_fp16_overflow=fp32"])
    entry = Builder(recipe, cache=cache, progress=False).component(recipe.targets[0], "text_encoder")
    assert entry.entry.precision == "fp32" and entry.entry.fp16_guard["action"] == "kept_fp32", entry
    assert entry.entry.verification.psnr_db > 60  # an fp32 program, not an fp16 one


def test_calibrate_command(run_cli, build_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MDSHIP_CACHE_DIR", str(build_cache))
    monkeypatch.chdir(ROOT)
    r = run_cli("calibrate", RECIPE, *TINY_OVERRIDES)
    assert r.exit_code == 0, r.err
    assert "recorded 2 prompts" in r.out and re.search(r"unet +16 calls", r.out)  # 2 prompts x 8 steps
    path = r.out.strip().splitlines()[-1].removeprefix("recording: ")
    assert path.startswith(str(build_cache)) and path.endswith(".safetensors")
    (tmp_path / "empty.txt").write_text("\n  \n")
    r = run_cli("calibrate", RECIPE, *TINY_OVERRIDES, f"calibration.prompts={tmp_path / 'empty.txt'}")
    assert r.exit_code == 2 and "prompt file is empty" in r.err and r.err.count("\n") == 1
