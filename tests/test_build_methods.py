"""Several image sizes and guidance modes in one bundle: one program per component whose methods share their
weights, every method verified, the runner picking the method for a size and guidance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mdship.backends.base import delegates
from mdship.build import component_methods
from mdship.bundle import Bundle
from mdship.checkpoint import Checkpoint
from mdship.metrics import image_psnr
from mdship.pipeline import SamplerSettings, eager_generator
from mdship.runtime import Runner

PROMPT = "a large red circle on a blue background, top left"


def test_component_methods_default_first():
    assert [m.name for m in component_methods("unet", [64, 96], [2, 1])] == ["forward", "res64_b1", "res96_b2",
                                                                            "res96_b1"]
    assert [m.name for m in component_methods("vae_decoder", [64, 96], [2, 1])] == ["forward", "res96"]
    assert [(m.name, m.resolution) for m in component_methods("text_encoder", [96, 64], [1])] == [("forward", 96)]


def test_methods_share_their_weights_and_are_each_verified(multires_bundle, tiny_bundle):
    multi, single = Bundle.open(multires_bundle), Bundle.open(tiny_bundle)
    assert multi.manifest.resolutions == [64, 96] and multi.manifest.resolution == 64
    unet = multi.component("unet")
    assert [(m.name, m.resolution, m.batch) for m in multi.methods("unet")] == [
        ("forward", 64, 2), ("res64_b1", 64, 1), ("res96_b2", 96, 2), ("res96_b1", 96, 1)]
    assert [m.inputs[0].shape for m in multi.methods("unet")] == [[2, 8, 8, 8], [1, 8, 8, 8], [2, 8, 12, 12],
                                                                   [1, 8, 12, 12]]
    for m in multi.methods("unet") + multi.methods("vae_decoder"):
        assert m.verification.mode == "executed" and m.verification.passed and m.verification.psnr_db > 60, m
    # one program, four methods; the weights once (the tiny UNet's graph descriptions are a large share of it)
    assert len({d["method"] for d in delegates(multi.program("unet").read_bytes())}) == 4
    assert unet.bytes < 1.3 * single.component("unet").bytes
    assert multi.component("text_encoder").sha256 == single.component("text_encoder").sha256


def test_the_runner_picks_the_method_for_a_size_and_guidance(multires_bundle, run_cli, tmp_path):
    runner = Runner.open(multires_bundle)
    assert {n: m.name for n, m in runner.variant(96, 2.0).items()} == {
        "text_encoder": "forward", "unet": "res96_b2", "vae_decoder": "res96"}
    assert runner.variant(64, 1.0)["unet"].name == "res64_b1"  # no guidance: the batch-1 method, no wasted half
    eager = eager_generator(Checkpoint.from_preset("tiny", 0))
    eager.resolution = 96
    for guidance in ("2", "1"):
        out = tmp_path / f"g{guidance}.png"
        r = run_cli("run", multires_bundle, "--prompt", PROMPT, "--width", "96", "--height", "96",
                    "--guidance", guidance, "--out", out)
        assert r.exit_code == 0, r.err
        image = np.asarray(Image.open(out).convert("RGB"))
        assert image.shape == (96, 96, 3)
        settings = SamplerSettings.resolve(runner.scheduler(), guidance=float(guidance))
        assert image_psnr(eager(PROMPT, 0, settings), image) >= 40
    r = run_cli("run", multires_bundle, "--prompt", PROMPT, "--width", "128", "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and "serves 64x64, 96x96" in r.err and r.err.count("\n") == 1
    r = run_cli("run", multires_bundle, "--prompt", PROMPT, "--width", "64", "--height", "96",
                "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and "square" in r.err


def test_verify_runs_every_method(multires_bundle, run_cli):
    r = run_cli("verify", multires_bundle, "--json")
    assert r.exit_code == 0, r.err
    results = json.loads(r.out)
    assert set(results["unet"]["methods"]) == {"forward", "res64_b1", "res96_b2", "res96_b1"}
    assert set(results["vae_decoder"]["methods"]) == {"forward", "res96"}


def test_sizes_the_unet_cannot_take_are_refused(run_cli, tmp_path):
    r = run_cli("validate", "recipes/default.yaml", "resolutions=[64, 80]")
    assert r.exit_code == 2 and "resolutions[1]: 80 px is not a multiple of 32" in r.err, r.err
    # the model's own rule, checked when a build opens the checkpoint: 8 px per latent pixel, halved twice
    assert Checkpoint.open("preset:tiny").resolution_multiple() == 32
    assert Checkpoint.open("preset:mobilediffusion").resolution_multiple() == 32
