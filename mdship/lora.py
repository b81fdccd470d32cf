"""LoRA adapters: read the two common safetensors layouts and merge them into a component's weights.

A recipe lists adapters (`lora: [{path, scale, target}]`); the checkpoint merges them into the weights before any
stage runs, so calibration, quantization and every check see the fine-tuned model (mdship.checkpoint, `with_lora`).

    PEFT / diffusers   <prefix>.<module>.lora_A.weight [r, in]    <prefix>.<module>.lora_B.weight [out, r]
                       alpha: adapter_config.json beside the file (`lora_alpha`, `r`), else alpha = r
    kohya              lora_<unet|te>_<module with _ for .>.lora_down.weight [r, in(, kh, kw)]
                       ....lora_up.weight [out, r(, 1, 1)]   ....alpha (a scalar)

The merge is W += scale * (alpha / r) * up @ down, for Linear layers and convolutions (a conv's down projection
has the conv's kernel, its up projection is 1x1), as peft's `merge_and_unload` computes it (tests/test_lora.py
checks mdship's merged weights and outputs against peft's).

Why not peft itself: peft merges adapters it created into a model it wraps; it does not load kohya files, and it is
a training library mdship would otherwise not need at run time. The formats are two key layouts and one matrix
product; peft stays in the tests as the reference.

Adapters are safetensors only: a pickle file (.bin, .pt, .ckpt) is refused without being opened.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mdship.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: prefixes adapters put before a module's name, per layout and tool
_PREFIXES = ("base_model.model.", "unet.", "text_encoder.", "transformer.", "model.")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}


class LoraError(UserError):
    """An adapter that cannot be merged: not safetensors, a key naming no layer, a shape that does not fit."""


@dataclass
class LayerDelta:
    down: torch.Tensor  # [r, in] (Linear) or [r, in, kh, kw] (conv)
    up: torch.Tensor  # [out, r] (Linear) or [out, r, 1, 1] (conv)
    alpha: float | None  # None: alpha = r (scale 1)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def weight(self) -> torch.Tensor:
        """up @ down, shaped like the layer's weight, times alpha / r."""
        scale = (self.alpha if self.alpha is not None else self.rank) / self.rank
        product = self.up.flatten(1).double() @ self.down.flatten(1).double()
        shape = (self.up.shape[0], *self.down.shape[1:])
        return (product * scale).reshape(shape)


def file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _alpha_from_config(path: Path) -> float | None:
    """PEFT's adapter_config.json beside the weights: lora_alpha (r is the tensors' own)."""
    config = path.with_name("adapter_config.json")
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoraError(f"{config}: not valid JSON ({e})") from None
    alpha = data.get("lora_alpha")
    if alpha is not None and not isinstance(alpha, (int, float)):
        raise LoraError(f"{config}: lora_alpha {alpha!r} is not a number")
    return alpha


def read(path: str | Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors; LoraError for a missing, pickle or unreadable file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraError(f"{path}: pickle files are not loaded (unsafe); convert the adapter to .safetensors")
    if not path.is_file():
        raise LoraError(f"{path}: LoRA adapter not found (expected a .safetensors file)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LoraError(f"{path}: not a readable safetensors file ({e}); expected a LoRA adapter in safetensors")


def deltas(path: str | Path, module: nn.Module, component: str) -> dict[str, LayerDelta]:
    """Per layer name of ``module`` (a Linear or Conv2d), the adapter's delta: PEFT / diffusers or kohya layout."""
    path = Path(path)
    tensors = read(path)
    layers = {name: m for name, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    kohya_names = {name.replace(".", "_"): name for name in layers}
    parts: dict[str, dict] = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(.+?)\.(lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up)(\.default)?\.weight"
                             r"|(.+?)\.alpha", key)
        if match is None:
            raise LoraError(f"{path}: key '{key}' is not a LoRA weight (expected <layer>.lora_A.weight / "
                            f"lora_B.weight, or kohya's <layer>.lora_down.weight / lora_up.weight / alpha)")
        stem = match.group(1) or match.group(4)
        name = _layer_name(stem, layers, kohya_names, component)
        if name is None:
            raise LoraError(f"{path}: key '{key}' names no layer of the {component} ({_closest(stem, layers)}); "
                            f"expected an adapter trained on this model's {component}")
        entry = parts.setdefault(name, {"key": key})
        if match.group(4):
            entry["alpha"] = float(tensor.float().flatten()[0])
        else:
            entry["down" if match.group(2) in ("lora_A", "lora_down", "lora.down") else "up"] = tensor
    config_alpha = _alpha_from_config(path)
    out = {}
    for name, entry in parts.items():
        if "down" not in entry or "up" not in entry:
            missing = "down (lora_A)" if "down" not in entry else "up (lora_B)"
            raise LoraError(f"{path}: layer '{name}' has no {missing} weight (from key '{entry['key']}')")
        delta = LayerDelta(entry["down"].float(), entry["up"].float(), entry.get("alpha", config_alpha))
        _check_shape(path, name, delta, layers[name])
        out[name] = delta
    return out


def _layer_name(stem: str, layers: dict, kohya_names: dict, component: str) -> str | None:
    """The model's layer a key's stem names: exactly, after a known prefix, or as the unique layer whose name ends
    with it (mdship's TextEncoder holds CLIPTextModel as `clip`, so CLIP adapters name `text_model.…`)."""
    for prefix, target in _KOHYA_PREFIXES.items():
        if stem.startswith(prefix):
            return _unique(stem[len(prefix):], kohya_names, "_") if target == component else None
    for prefix in ("",) + _PREFIXES:
        if stem.startswith(prefix):
            found = _unique(stem[len(prefix):], {n: n for n in layers}, ".")
            if found:
                return found
    return None


def _unique(name: str, names: dict, sep: str) -> str | None:
    if name in names:
        return names[name]
    tails = [full for key, full in names.items() if key.endswith(sep + name)]
    return tails[0] if len(tails) == 1 else None


def _closest(stem: str, layers: dict) -> str:
    import difflib

    close = difflib.get_close_matches(stem.split("base_model.model.")[-1], list(layers), n=1)
    return f"closest: '{close[0]}'" if close else "no similar layer"


def _check_shape(path: Path, name: str, delta: LayerDelta, layer: nn.Module) -> None:
    weight = tuple(layer.weight.shape)
    want = (weight[0], *weight[1:]) if isinstance(layer, nn.Conv2d) else weight
    got = (delta.up.shape[0], *delta.down.shape[1:])
    if delta.up.shape[1] != delta.rank or got != want:
        raise LoraError(f"{path}: layer '{name}': up {list(delta.up.shape)} @ down {list(delta.down.shape)} does "
                        f"not make its weight {list(want)}; expected an adapter trained on this model")


def merge(module: nn.Module, adapter: dict[str, LayerDelta], scale: float) -> int:
    """W += scale * delta for every layer of the adapter, in place; returns how many layers changed."""
    layers = dict(module.named_modules())
    with torch.no_grad():
        for name, delta in adapter.items():
            weight = layers[name].weight
            weight.copy_((weight.double() + scale * delta.weight()).to(weight.dtype))
    return len(adapter)
