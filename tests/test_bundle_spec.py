"""docs/bundle-format.md is enough to use a bundle: an outside consumer (tests/bundle_consumer.py, no mdship
import) generates the same pixels as `mdship run`; diffusers loads scheduler.json into the right scheduler; the
spec's test vectors and the manifest's JSON Schema are what the code says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "bundle-format.md"
PROMPT = "a small green square on a white background, bottom right"


def consumer_pixels(bundle: Path, tmp_path: Path, seed: int, *args: str) -> np.ndarray:
    out = tmp_path / f"consumer-{seed}.npy"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bundle_consumer.py"), str(bundle), PROMPT,
                           str(seed), str(out), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def mdship_pixels(run_cli, bundle: Path, tmp_path: Path, seed: int, *args: str) -> np.ndarray:
    out = tmp_path / f"mdship-{seed}.png"
    r = run_cli("run", bundle, "--prompt", PROMPT, "--seed", seed, "--out", out, *args)
    assert r.exit_code == 0, r.err
    return np.asarray(Image.open(out).convert("RGB"))


@pytest.mark.parametrize("seed, args", [(0, ()), (7, ("--guidance", "1")), (3, ("--steps", "2"))])
def test_outside_consumer_matches_mdship_run(tiny_bundle, run_cli, tmp_path, seed, args):
    mine = consumer_pixels(tiny_bundle, tmp_path, seed, *args)
    assert np.array_equal(mine, mdship_pixels(run_cli, tiny_bundle, tmp_path, seed, *args))


def test_outside_consumer_runs_a_quantized_bundle(tiny_8da4w_bundle, run_cli, tmp_path):
    """8da4w: an int4 token table (quantized_decomposed::embedding_4bit), which the spec says needs ExecuTorch's
    quantized kernels registered."""
    manifest = json.loads((tiny_8da4w_bundle / "manifest.json").read_text())
    assert "quantized_decomposed::embedding_4bit.out" in manifest["components"]["text_encoder"]["structure"][
        "cpu_operators"]
    mine = consumer_pixels(tiny_8da4w_bundle, tmp_path, 2)
    assert np.array_equal(mine, mdship_pixels(run_cli, tiny_8da4w_bundle, tmp_path, 2))


def test_diffusers_loads_the_scheduler_with_the_right_settings(tiny_bundle):
    from diffusers import DDIMScheduler

    config = json.loads((tiny_bundle / "scheduler.json").read_text())
    assert config["_class_name"] == "DDIMScheduler"
    scheduler = DDIMScheduler.from_config(config)
    assert scheduler.config.timestep_spacing == "trailing" and scheduler.config.clip_sample is False
    assert scheduler.config.set_alpha_to_one is True and scheduler.config.prediction_type == "epsilon"
    from mdship.schedulers import SchedulerConfig

    ours = SchedulerConfig(**{k: v for k, v in config.items() if k in SchedulerConfig.__dataclass_fields__})
    for steps in (1, 2, 4, 8, 3, 6):
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == ours.timesteps(steps), steps


def test_diffusers_ddim_steps_reproduce_the_sampler():
    """diffusers' DDIM step with eta 0, on the bundle's settings, is mdship's update (to float32 rounding)."""
    import torch
    from diffusers import DDIMScheduler

    from mdship.schedulers import SchedulerConfig, sample

    cfg = SchedulerConfig()
    scheduler = DDIMScheduler.from_config(cfg.to_diffusers())
    torch.manual_seed(0)
    start, context = torch.randn(1, 8, 4, 4), torch.randn(1, 5, 6)
    weights = torch.randn(8, 8) * 0.1

    def unet(x, t, ctx):
        return torch.einsum("oc,bchw->bohw", weights, x) * (1 + t.float() / 1000)

    ours = sample(cfg, unet, start, context, steps=8)
    x = start.clone()
    scheduler.set_timesteps(8)
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, torch.tensor([int(t)]), context), t, x, eta=0.0).prev_sample
    assert torch.allclose(ours, x, atol=1e-5), (ours - x).abs().max()


def test_the_spec_noise_vectors_are_the_code_s():
    from mdship.pipeline import _splitmix64, initial_latent

    text = SPEC.read_text()
    state, outputs = 0, []
    for _ in range(3):
        state, z = _splitmix64(state)
        outputs.append(f"0x{z:016x}")
    assert f"`{outputs[0]}`, `{outputs[1]}`, `{outputs[2]}`" in text
    for seed in (0, 42):
        quoted = re.search(rf"`initial_latent\({seed}, 64\)` begins `([^`]*)`", text.replace("\n", " ")).group(1)
        values = [float(v) for v in quoted.split(",")]
        assert values == initial_latent(seed, 64).flatten()[: len(values)].tolist(), seed


def test_the_committed_json_schema_is_the_manifest_model():
    from mdship.bundle import SCHEMA_VERSION, Manifest

    committed = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
    assert committed == json.loads(json.dumps(Manifest.model_json_schema())), (
        "docs/manifest.schema.json is stale: python -c 'from mdship.bundle import write_json_schema; "
        "write_json_schema()'")
    assert f"schema version {SCHEMA_VERSION}" in SPEC.read_text()
