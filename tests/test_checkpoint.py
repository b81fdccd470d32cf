"""Checkpoints round-trip exactly, hash stably, and every kind of breakage gives one clear line (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mdship.checkpoint import Checkpoint, CheckpointRef, checkpoint_hash
from mdship.errors import CheckpointError


def test_round_trip_is_exact(tiny_checkpoint_dir, tmp_path):
    original = Checkpoint.from_preset("tiny", seed=0)
    loaded = Checkpoint.from_pretrained(tiny_checkpoint_dir)
    for name, module in original.modules().items():
        a, b = module.state_dict(), loaded.modules()[name].state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k} changed on the round trip"
    assert loaded.scheduler == original.scheduler and loaded.resolution == 64
    # Saving the loaded checkpoint again gives the same bytes, hence the same hash.
    again = loaded.save_pretrained(tmp_path / "again")
    assert checkpoint_hash(again) == checkpoint_hash(tiny_checkpoint_dir)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (Checkpoint.from_preset("tiny", s) for s in (1, 1, 2))
    key = "conv_in.weight"
    assert torch.equal(a.unet.state_dict()[key], b.unet.state_dict()[key])
    assert not torch.equal(a.unet.state_dict()[key], c.unet.state_dict()[key])


def test_inspect_checkpoint_json(run_cli, tiny_checkpoint_dir):
    r = run_cli("inspect", tiny_checkpoint_dir, "--json")
    assert r.exit_code == 0, r.err
    report = json.loads(r.out)
    assert set(report["components"]) == {"text_encoder", "unet", "vae_decoder"}
    assert report["hash"] == checkpoint_hash(tiny_checkpoint_dir)
    assert report["total_parameters"] == sum(c["parameters"] for c in report["components"].values())


def _edit_json(path: Path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _edit_weights(path: Path, fn):
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _pickle_instead(path: Path):
    torch.save({"w": torch.zeros(1)}, path.with_name("diffusion_pytorch_model.bin"))
    path.unlink()


def _first_key(tensors):
    return sorted(tensors)[0]


BREAKAGES = {
    "missing component folder": (lambda d: shutil.rmtree(d / "vae"), "component folder 'vae/' is missing"),
    "missing model_index": (lambda d: (d / "model_index.json").unlink(), "model_index.json: missing"),
    "missing weight key": (
        lambda d: _edit_weights(d / "unet/diffusion_pytorch_model.safetensors", lambda t: t.pop("conv_in.weight")),
        "missing weight 'conv_in.weight'"),
    "unexpected weight key": (
        lambda d: _edit_weights(d / "unet/diffusion_pytorch_model.safetensors",
                                lambda t: t.__setitem__("extra.weight", torch.zeros(2))),
        "unexpected weight 'extra.weight'"),
    "shape mismatch": (
        lambda d: _edit_weights(d / "unet/diffusion_pytorch_model.safetensors",
                                lambda t: t.__setitem__("conv_in.bias", torch.zeros(7))),
        "weight 'conv_in.bias' has shape [7], expected [32]"),
    "nan weights": (
        lambda d: _edit_weights(d / "vae/diffusion_pytorch_model.safetensors",
                                lambda t: t["decoder.conv_in.bias"].fill_(float("nan"))),
        "weight 'decoder.conv_in.bias' contains NaN or Inf"),
    "wrong dtype": (
        lambda d: _edit_weights(d / "unet/diffusion_pytorch_model.safetensors",
                                lambda t: t.__setitem__("conv_in.bias", torch.zeros(32, dtype=torch.int32))),
        "has dtype I32, expected one of F32, F16, BF16"),
    "unknown config field": (
        lambda d: _edit_json(d / "unet/config.json", lambda c: c.__setitem__("block_channel", [1])),
        "unknown field 'block_channel'; did you mean 'block_channels'?"),
    "missing config field": (
        lambda d: _edit_json(d / "vae/config.json", lambda c: c.pop("latent_channels")),
        "missing field 'latent_channels'"),
    "wrong config type": (
        lambda d: _edit_json(d / "text_encoder/config.json", lambda c: c.__setitem__("hidden_size", "64")),
        "field 'hidden_size' should be int, found str"),
    "truncated safetensors": (lambda d: _truncate(d / "unet/diffusion_pytorch_model.safetensors"),
                              "not a readable safetensors file"),
    "pickle weights": (lambda d: _pickle_instead(d / "unet/diffusion_pytorch_model.safetensors"),
                       "pickle weights are not loaded"),
    "invalid json": (lambda d: (d / "scheduler/scheduler_config.json").write_text("{nope"), "not valid JSON"),
    "bad scheduler value": (
        lambda d: _edit_json(d / "scheduler/scheduler_config.json", lambda c: c.__setitem__("prediction_type", "x")),
        "prediction_type 'x' is not one of"),
    "missing tokenizer file": (lambda d: (d / "tokenizer/merges.txt").unlink(), "missing merges.txt"),
}


@pytest.mark.parametrize("kind", list(BREAKAGES))
def test_broken_checkpoint_gives_one_clear_line(kind, tiny_checkpoint_dir, tmp_path, run_cli):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint_dir, broken)
    breaker, expected = BREAKAGES[kind]
    breaker(broken)
    r = run_cli("inspect", broken, "--json")
    assert r.exit_code == 2
    assert expected in r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err, r.err


def test_missing_checkpoint_directory(run_cli, tmp_path):
    r = run_cli("generate", tmp_path / "nope", "--prompt", "x", "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and "checkpoint directory not found" in r.err


def test_unknown_builtin_and_preset(run_cli, tmp_path):
    assert "unknown builtin checkpoint 'nope'" in run_cli("inspect", "builtin:nope").err
    r = run_cli("inspect", "preset:huge")
    assert r.exit_code == 2 and "unknown preset 'huge'" in r.err


@pytest.mark.parametrize("ref, parsed", [
    ("builtin:shapes", ("builtin", "shapes", None)),
    ("preset:mobilediffusion", ("preset", "mobilediffusion", None)),
    ("preset:tiny@42", ("preset", "tiny", 42)),
    ("checkpoints/md", ("dir", "checkpoints/md", None)),
    ("/abs/path:with:colons", ("dir", "/abs/path:with:colons", None)),
])
def test_checkpoint_ref_parse(ref, parsed):
    r = CheckpointRef.parse(ref)
    assert (r.kind, r.name, r.seed) == parsed
    assert str(r) == ref


@pytest.mark.parametrize("ref", ["", "preset:tiny@x", "preset:huge", "builtin:", "s3:bucket/x"])
def test_checkpoint_ref_rejects(ref):
    with pytest.raises(CheckpointError, match="expected"):
        CheckpointRef.parse(ref)


def test_open_is_lazy_and_hashes_without_weights(tiny_checkpoint_dir):
    ckpt = Checkpoint.open(str(tiny_checkpoint_dir))
    assert ckpt._modules is None and ckpt.hash == checkpoint_hash(tiny_checkpoint_dir)
    assert ckpt.resolution == 64 and ckpt.scheduler.default_guidance == 2.0
    assert set(ckpt.modules()) == {"text_encoder", "unet", "vae_decoder"}
