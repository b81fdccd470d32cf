"""LoRA adapters (mdship.lora): merged weights and outputs equal peft's merge_and_unload, in PEFT and kohya
layouts; a bad adapter is one line naming the key; adapters enter the checkpoint hash."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mdship import lora
from mdship.checkpoint import Checkpoint
from mdship.errors import UserError
from mdship.recipe.schema import LoraAdapter

TARGETS = ["to_q", "to_kv", "to_out", "proj_in", "proj_out", "shortcut", "conv_out"]


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory):
    """A rank-4 adapter on the tiny UNet's attention, linears and convs, trained-looking (random A and B), saved
    by peft; and peft's own merged UNet."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    unet = copy.deepcopy(Checkpoint.from_preset("tiny", 0).unet)
    names = [n for n, m in unet.named_modules()  # `shortcut` is an Identity where channels match: not a layer
             if n.rsplit(".", 1)[-1] in TARGETS and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    model = get_peft_model(unet, LoraConfig(r=4, lora_alpha=8, target_modules=names, init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(out))
    return out / "adapter_model.safetensors", model.merge_and_unload()


def _inputs():
    torch.manual_seed(1)
    return torch.randn(2, 8, 8, 8), torch.tensor([500]), torch.randn(2, 77, 64)


def test_merged_weights_and_outputs_equal_peft(peft_adapter):
    path, merged = peft_adapter
    ckpt = Checkpoint.from_preset("tiny", 0).with_lora([LoraAdapter(path=str(path), target="unet")])
    ours = ckpt.unet.state_dict()
    theirs = merged.state_dict()
    assert ours.keys() == theirs.keys()
    changed = [k for k in ours if not torch.equal(ours[k], Checkpoint.from_preset("tiny", 0).unet.state_dict()[k])]
    assert len(changed) > 20  # the adapter touched many layers, convs included
    assert any("shortcut" in k for k in changed) and any("to_kv" in k for k in changed)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.unet(*_inputs()), merged(*_inputs()), atol=1e-5, rtol=1e-5)


def test_kohya_layout_merges_the_same(peft_adapter, tmp_path):
    """The same adapter in kohya's naming (lora_unet_<name with _>.lora_down / lora_up / alpha)."""
    path, merged = peft_adapter
    kohya = {}
    for key, tensor in load_file(str(path)).items():
        name, part = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        stem = "lora_unet_" + name.replace(".", "_")
        kohya[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = tensor
        kohya[f"{stem}.alpha"] = torch.tensor(8.0)
    file = tmp_path / "style.safetensors"
    save_file(kohya, str(file))
    unet = Checkpoint.from_preset("tiny", 0).with_lora([LoraAdapter(path=str(file), target="unet")]).unet
    for k, v in unet.state_dict().items():
        torch.testing.assert_close(v, merged.state_dict()[k], atol=1e-6, rtol=1e-5)


def test_scale_and_hash(peft_adapter):
    path, _ = peft_adapter
    base = Checkpoint.from_preset("tiny", 0)
    half = Checkpoint.open("preset:tiny").with_lora([LoraAdapter(path=str(path), scale=0.5)])
    full = Checkpoint.open("preset:tiny").with_lora([LoraAdapter(path=str(path), scale=1.0)])
    assert len({base.hash, half.hash, full.hash}) == 3  # cache keys follow the adapter and its scale
    key = "down.1.transformers.0.layers.0.cross_attn.to_q.weight"
    w0, w_half, w_full = (c.unet.state_dict()[key] for c in (base, half, full))
    torch.testing.assert_close(w_half - w0, (w_full - w0) / 2, atol=1e-6, rtol=1e-4)
    assert half.adapters[0]["sha256"] == lora.file_hash(path) and half.adapters[0]["scale"] == 0.5


def test_bad_adapters_are_one_line(peft_adapter, tmp_path):
    path, _ = peft_adapter
    tensors = load_file(str(path))

    def refused(tensors_or_file, words, target="unet"):
        file = tensors_or_file
        if isinstance(tensors_or_file, dict):
            file = tmp_path / "bad.safetensors"
            save_file(tensors_or_file, str(file))
        with pytest.raises(UserError) as info:
            # model_construct: the recipe schema refuses a non-.safetensors path first; this checks lora.py's guard
            adapter = LoraAdapter.model_construct(path=str(file), target=target, scale=1.0)
            Checkpoint.open("preset:tiny").with_lora([adapter]).modules()
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)

    pair = {k.replace("to_q", "to_qq"): v for k, v in tensors.items() if ".to_q." in k}
    assert len(pair) >= 2
    refused(pair, "names no layer of the unet")
    a_key = next(k for k in tensors if "lora_A" in k)
    refused({a_key: tensors[a_key]}, "has no up (lora_B) weight")
    b_key = a_key.replace("lora_A", "lora_B")
    refused({a_key: tensors[a_key], b_key: torch.randn(3, 4)}, "does not make its weight")
    refused({"whatever": torch.zeros(1)}, "key 'whatever' is not a LoRA weight")
    refused(tmp_path / "missing.safetensors", "LoRA adapter not found")
    (tmp_path / "style.pt").write_bytes(b"\x80\x04pickle")
    refused(tmp_path / "style.pt", "pickle files are not loaded")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    refused(tmp_path / "junk.safetensors", "not a readable safetensors file")
    refused(path, "names no layer of the text_encoder", target="text_encoder")


def test_recipe_lora_key(run_cli, tmp_path):
    r = run_cli("validate", "recipes/default.yaml", "lora=[{path: style.bin}]")
    assert r.exit_code == 2 and "lora[0].path" in r.err and "not a .safetensors file" in r.err, r.err
    r = run_cli("validate", "recipes/default.yaml", "lora=[{path: s.safetensors, target: vae}]")
    assert r.exit_code == 2 and "lora[0].target" in r.err, r.err


@pytest.mark.slow
def test_a_build_with_a_lora(peft_adapter, tmp_path, build_cache):
    """recipes/default.yaml on the tiny preset with the adapter merged: a verified bundle whose manifest names the
    adapter, whose images differ from the plain build's, and whose programs match the merged model."""
    from mdship_testing import TINY_OVERRIDES, build_recipe

    path, _ = peft_adapter
    [result] = build_recipe("recipes/default.yaml", TINY_OVERRIDES + [
        f"output={tmp_path}", f"lora=[{{path: {path}, scale: 0.8}}]"], build_cache)
    assert not result.failures, result.failures
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["checkpoint"]["lora"][0]["scale"] == 0.8
    assert manifest["components"]["unet"]["verification"]["psnr_db"] > 60
