"""The Python host runner: images match eager, and verify catches tampering, truncation and bad bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mdship.checkpoint import Checkpoint
from mdship.metrics import image_psnr
from mdship.pipeline import eager_generator
from mdship.runtime import Runner

from mdship_testing import rewrite_manifest

PROMPT = "a large red circle on a blue background, top left"


def test_run_matches_eager(tiny_bundle, run_cli, tmp_path):
    from PIL import Image
    import numpy as np

    out = tmp_path / "run.png"
    r = run_cli("run", tiny_bundle, "--prompt", PROMPT, "--seed", "3", "--out", out)
    assert r.exit_code == 0, r.err
    runner = Runner.open(tiny_bundle)
    eager = eager_generator(Checkpoint.from_preset("tiny", 0))(PROMPT, 3, runner.settings())
    assert image_psnr(eager, np.asarray(Image.open(out))) >= 40


def test_one_step_and_no_guidance_on_a_batch2_bundle(tiny_bundle):
    runner = Runner.open(tiny_bundle)
    eager = eager_generator(Checkpoint.from_preset("tiny", 0))
    for settings in (runner.settings(sampler="one_step", guidance=1.0), runner.settings(steps=2, guidance=1.0)):
        assert image_psnr(eager(PROMPT, 0, settings), runner.generator()(PROMPT, 0, settings)) >= 40


def test_verify_passes(tiny_bundle, run_cli):
    r = run_cli("verify", tiny_bundle)
    assert r.exit_code == 0, r.err
    assert r.out.count("executed") == 3 and "FAILED" not in r.out


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def test_tampered_program(bundle_copy, run_cli):
    data = bytearray((bundle_copy / "unet.pte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "unet.pte").write_bytes(bytes(data))
    r = run_cli("verify", bundle_copy)
    assert r.exit_code == 2 and "unet.pte: sha256 does not match" in r.err and r.err.count("\n") == 1


def test_truncated_and_missing_files(bundle_copy, tiny_bundle, run_cli):
    (bundle_copy / "tokenizer" / "merges.txt").write_text("")
    assert "merges.txt: sha256 does not match" in run_cli("verify", bundle_copy).err
    shutil.copyfile(tiny_bundle / "tokenizer" / "merges.txt", bundle_copy / "tokenizer" / "merges.txt")
    (bundle_copy / "vae_decoder.pte").unlink()
    r = run_cli("verify", bundle_copy)
    assert r.exit_code == 2 and "vae_decoder.pte: missing" in r.err


def test_failed_test_vector_exits_nonzero(bundle_copy, run_cli):
    from safetensors.torch import load_file, save_file

    from mdship.bundle import sha256_file

    path = bundle_copy / "test_vectors" / "unet.safetensors"
    flat = load_file(str(path))
    flat["0/expected"] = flat["0/expected"] + 1.0
    save_file(flat, str(path))
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["test_vectors/unet.safetensors"] = sha256_file(path)  # a consistent but wrong bundle
    rewrite_manifest(bundle_copy, manifest)
    r = run_cli("verify", bundle_copy)
    assert r.exit_code == 1 and "unet" in r.err and "FAILED" in r.out


def test_bad_bundles_are_one_line_errors(bundle_copy, run_cli, tmp_path):
    r = run_cli("run", tmp_path / "nope", "--prompt", "x", "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and "bundle directory not found" in r.err
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["target"]["backend"] = "vulkan"
    rewrite_manifest(bundle_copy, manifest)
    r = run_cli("run", bundle_copy, "--prompt", "x", "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and "vulkan bundle cannot run on this machine" in r.err
    manifest["schema_version"] = 99
    rewrite_manifest(bundle_copy, manifest)
    r = run_cli("bench", bundle_copy)
    assert r.exit_code == 2 and "schema_version 99 is not supported" in r.err and r.err.count("\n") == 1


def test_bench_json(tiny_bundle, run_cli):
    r = run_cli("bench", tiny_bundle, "--runs", "2", "--warmup", "0", "--threads", "2", "--json")
    assert r.exit_code == 0, r.err
    report = json.loads(r.out)
    assert set(report["components"]) == {"text_encoder", "unet", "vae_decoder"}
    assert report["end_to_end_one_step"]["unet_calls"] == 1 and report["peak_rss_mb"] > 0
    assert all(v["median_ms"] > 0 for v in report["components"].values())


def test_bench_profile_lists_the_operators_that_ran(tiny_bundle, run_cli):
    r = run_cli("bench", tiny_bundle, "--runs", "2", "--warmup", "1", "--profile", "--json")
    assert r.exit_code == 0, r.err
    prof = json.loads(r.out)["profile"]
    assert set(prof["components"]) == {"text_encoder", "unet", "vae_decoder"}
    for name, c in prof["components"].items():
        assert Path(c["etdump"]).stat().st_size > 0, name
        assert c["method_ms"] > 0 and 0 < c["delegated_ms"] <= c["method_ms"], (name, c)
        ops = c["top_ops"]
        assert ops == sorted(ops, key=lambda o: -o["ms"]) and sum(o["share"] for o in ops) <= 1.0 + 1e-3
    # The XNNPACK delegate names its own kernels: the big layers must show up as what they are.
    # (all listed ops, not the top 3: on a model this small a busy machine reorders them)
    top = {name: {o["op"] for o in c["top_ops"]} for name, c in prof["components"].items()}
    assert any(op.startswith("Fully Connected") for op in top["text_encoder"]), top
    assert any(op.startswith("Convolution") for op in top["vae_decoder"]), top
    # and the human-readable form prints them
    r = run_cli("bench", tiny_bundle, "--runs", "1", "--warmup", "0", "--profile")
    assert r.exit_code == 0 and "per-operator profile" in r.out and "Convolution (NHWC" in r.out


def test_run_warns_about_words_the_tokenizer_does_not_know(tiny_bundle, run_cli, tmp_path):
    r = run_cli("run", tiny_bundle, "--prompt", "a red zxqv", "--out", tmp_path / "x.png")
    assert r.exit_code == 0 and r.err.strip().splitlines() == [
        "warning: the tokenizer does not know 'zxqv': spelled out letter by letter, so the model has not learned "
        "what it means"], r.err
    assert run_cli("run", tiny_bundle, "--prompt", "a red circle", "--out", tmp_path / "y.png").err == ""
