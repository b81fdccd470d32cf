"""The eager reference pipeline: deterministic images for both samplers, through the API and the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from mdship import schedulers
from mdship.pipeline import SamplerSettings, eager_generator, initial_latent
from mdship.schedulers import SchedulerConfig


@pytest.mark.parametrize("sampler,steps,guidance", [("ddim", 4, 2.0), ("one_step", 1, 1.0)])
def test_deterministic_for_a_seed(tiny_checkpoint, sampler, steps, guidance):
    gen = eager_generator(tiny_checkpoint)
    settings = SamplerSettings.resolve(tiny_checkpoint.scheduler, sampler, steps, guidance)
    a = gen("a red circle", 3, settings)
    b = gen("a red circle", 3, settings)
    c = gen("a red circle", 4, settings)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batched_and_two_call_guidance_agree(tiny_checkpoint):
    gen = eager_generator(tiny_checkpoint)
    batched = SamplerSettings("ddim", 3, 3.0, batched_guidance=True)
    split = SamplerSettings("ddim", 3, 3.0, batched_guidance=False)
    a = gen.latents("a blue star", 0, batched)
    b = gen.latents("a blue star", 0, split)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_initial_latent_is_seeded():
    assert torch.equal(initial_latent(5, 64), initial_latent(5, 64))
    assert initial_latent(5, 512).shape == (1, 8, 64, 64)


def test_trailing_timesteps_start_at_T():
    cfg = SchedulerConfig()
    assert cfg.timesteps(8)[0] == 999 and len(cfg.timesteps(8)) == 8
    assert cfg.timesteps(1) == [999]
    assert sorted(cfg.timesteps(8), reverse=True) == cfg.timesteps(8)


@pytest.mark.parametrize("prediction", schedulers.PREDICTION_TYPES)
def test_prediction_types_recover_x0_and_noise(prediction):
    cfg = SchedulerConfig(prediction_type=prediction)
    x0, noise = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    t = torch.tensor([300, 300])
    xt = schedulers.add_noise(cfg, x0, noise, t)
    target = schedulers.training_target(cfg, x0, noise, t)
    got_x0, got_eps = schedulers.predicted_clean_and_noise(cfg, float(cfg.alphas_cumprod()[300]), xt, target)
    torch.testing.assert_close(got_x0, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_eps, noise, atol=1e-4, rtol=1e-4)


def test_cli_generate_writes_png(run_cli, tiny_checkpoint_dir, tmp_path):
    out = tmp_path / "img.png"
    r = run_cli("generate", tiny_checkpoint_dir, "--prompt", "a red circle", "--seed", "1", "--steps", "2",
                "--out", out)
    assert r.exit_code == 0, r.err
    assert Image.open(out).size == (64, 64)
    r2 = run_cli("generate", tiny_checkpoint_dir, "--prompt", "a red circle", "--seed", "1", "--steps", "2",
                 "--out", tmp_path / "img2.png")
    assert r2.exit_code == 0, r2.err
    assert (tmp_path / "img2.png").read_bytes() == out.read_bytes()


def test_cli_rejects_bad_options(run_cli, tiny_checkpoint_dir, tmp_path):
    r = run_cli("generate", tiny_checkpoint_dir, "--prompt", "x", "--guidance", "0.5", "--out", tmp_path / "a.png")
    assert r.exit_code == 2 and "--guidance 0.5: expected a finite number in 1..100" in r.err
    r = run_cli("generate", tiny_checkpoint_dir, "--out", tmp_path / "a.png")
    assert r.exit_code == 2 and "Missing option '--prompt'" in r.err and r.err.count("\n") == 1
    assert not (tmp_path / "a.png").exists()
