"""Checkpoints: a diffusers-style directory of config.json + safetensors per component. Never pickle.

    model_index.json                 which components, the native resolution
    text_encoder/config.json         CLIP text config (the fields in models/text_encoder.py)
    text_encoder/model.safetensors
    tokenizer/                       CLIPTokenizer files: vocab.json, merges.txt, tokenizer_config.json, ...
    unet/config.json                 UNetConfig
    unet/diffusion_pytorch_model.safetensors
    vae/config.json                  VAEConfig (encoder + lite decoder)
    vae/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json  SchedulerConfig: prediction type, betas, default sampler/steps/guidance

Loading checks everything a broken or mismatched checkpoint could get wrong and reports it as one line
(`CheckpointError`): component, file or key, expected vs found. A checkpoint reference is a directory path,
`builtin:NAME` (shipped inside the package) or `preset:NAME[@SEED]` (a seeded random init).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mdship import __version__
from mdship.atomic import atomic_dir
from mdship.errors import CheckpointError, UserError
from mdship.models.presets import Preset, get_preset
from mdship.models.text_encoder import CLIP_L_TEXT_CONFIG, TextEncoder
from mdship.models.unet import MobileDiffusionUNet, UNetConfig
from mdship.models.vae import AutoencoderKL, ScaledDecoder, VAEConfig
from mdship.schedulers import SchedulerConfig

BUILTIN_DIR = Path(__file__).parent / "builtin"
WEIGHT_FILES = {
    "text_encoder": "model.safetensors",
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
}
ACCEPTED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
PICKLE_NAMES = ("pytorch_model.bin", "diffusion_pytorch_model.bin", "model.pt", "model.ckpt", "model.pth")


@dataclass
class Checkpoint:
    """The five components of a MobileDiffusion model, in memory (eval mode, fp32)."""

    text_encoder: TextEncoder
    tokenizer: object  # transformers.CLIPTokenizer
    unet: MobileDiffusionUNet
    vae: AutoencoderKL
    scheduler: SchedulerConfig
    resolution: int
    source: str = ""
    hash: str | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        """The shippable neural components by bundle name (the VAE encoder is training-only)."""
        return {"text_encoder": self.text_encoder, "unet": self.unet, "vae_decoder": ScaledDecoder(self.vae)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> "Checkpoint":
        """A random-init checkpoint of a preset: the same seed gives the same weights."""
        preset = get_preset(name)
        tokenizer = preset_tokenizer(preset)
        torch.manual_seed(seed)
        text_cfg = dict(preset.text_encoder)
        if not preset.fixed_vocab:
            text_cfg["vocab_size"] = len(tokenizer)
        _align_special_ids(text_cfg, tokenizer)
        ckpt = cls(TextEncoder(text_cfg), tokenizer, MobileDiffusionUNet(preset.unet), AutoencoderKL(preset.vae),
                   preset.scheduler, preset.resolution, source=f"preset:{name}@{seed}")
        ckpt.hash = preset_hash(name, seed)
        return ckpt.eval()

    def eval(self) -> "Checkpoint":
        for m in (self.text_encoder, self.unet, self.vae):
            m.eval().requires_grad_(False)
        return self

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Checkpoint":
        root = Path(path)
        if not root.is_dir():
            raise CheckpointError(f"{root}: checkpoint directory not found (expected a directory with model_index.json)")
        index = _read_json(root / "model_index.json", "model_index")
        resolution = index.get("resolution")
        if not isinstance(resolution, int) or resolution % 64 or resolution <= 0:
            raise CheckpointError(f"{root / 'model_index.json'}: 'resolution' must be a positive multiple of 64, found {resolution!r}")
        for comp in ("text_encoder", "tokenizer", "unet", "vae", "scheduler"):
            if not (root / comp).is_dir():
                raise CheckpointError(f"{root}: component folder '{comp}/' is missing (expected text_encoder/, tokenizer/, unet/, vae/, scheduler/)")

        from mdship.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(root / "tokenizer")

        text_cfg = _read_json(root / "text_encoder" / "config.json", "text_encoder")
        _check_fields(root / "text_encoder" / "config.json", text_cfg, {k: type(v) for k, v in CLIP_L_TEXT_CONFIG.items()})
        unet_cfg = _dataclass_from_json(UNetConfig, root / "unet" / "config.json")
        vae_cfg = _dataclass_from_json(VAEConfig, root / "vae" / "config.json")
        sched_cfg = _dataclass_from_json(SchedulerConfig, root / "scheduler" / "scheduler_config.json")
        problems = sched_cfg.validate()
        if problems:
            raise CheckpointError(f"{root / 'scheduler' / 'scheduler_config.json'}: {problems[0]}")
        if unet_cfg.cross_attention_dim != text_cfg["hidden_size"]:
            raise CheckpointError(f"{root / 'unet' / 'config.json'}: cross_attention_dim {unet_cfg.cross_attention_dim} "
                                  f"does not match the text encoder's hidden_size {text_cfg['hidden_size']}")
        if len(tokenizer) > text_cfg["vocab_size"]:
            raise CheckpointError(f"{root / 'tokenizer'}: tokenizer has {len(tokenizer)} tokens but the text encoder's "
                                  f"vocab_size is {text_cfg['vocab_size']}")

        try:
            # UNet and VAE are built on the meta device (no random init of weights about to be replaced). The
            # text encoder is built on the CPU: CLIP has non-persistent buffers (position ids) that no
            # checkpoint carries and that would otherwise stay on meta and read garbage.
            text_encoder = TextEncoder(text_cfg)
            with torch.device("meta"):
                unet, vae = MobileDiffusionUNet(unet_cfg), AutoencoderKL(vae_cfg)
        except (ValueError, AssertionError, TypeError, ZeroDivisionError) as e:
            raise CheckpointError(f"{root}: component configs describe an impossible model: {e}") from None
        for comp, module in (("text_encoder", text_encoder), ("unet", unet), ("vae", vae)):
            _load_weights(module, root / comp, comp)

        ckpt = cls(text_encoder, tokenizer, unet, vae, sched_cfg, resolution, source=str(root))
        ckpt.hash = checkpoint_hash(root)
        return ckpt.eval()

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the checkpoint atomically: a temp directory beside `path`, renamed into place."""
        root = Path(path)
        with atomic_dir(root) as tmp:
            _write_json(tmp / "model_index.json", {
                "_class_name": "MobileDiffusionPipeline", "_mdship_version": __version__,
                "resolution": self.resolution,
                "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["mdship", "MobileDiffusionUNet"], "vae": ["mdship", "AutoencoderKL"],
                "scheduler": ["mdship", "SchedulerConfig"],
            })
            save_tokenizer(self.tokenizer, tmp / "tokenizer")
            _write_json(tmp / "text_encoder" / "config.json", self.text_encoder.config)
            _write_json(tmp / "unet" / "config.json", dataclasses.asdict(self.unet.config))
            _write_json(tmp / "vae" / "config.json", dataclasses.asdict(self.vae.config))
            _write_json(tmp / "scheduler" / "scheduler_config.json", dataclasses.asdict(self.scheduler))
            for comp, module in (("text_encoder", self.text_encoder), ("unet", self.unet), ("vae", self.vae)):
                state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
                save_file(state, str(tmp / comp / WEIGHT_FILES[comp]), metadata={"format": "pt"})
        self.hash = checkpoint_hash(root)
        return root


# ---------------------------------------------------------------------- references
def load_checkpoint(ref: str, device_meta: bool = False) -> Checkpoint:
    """Resolve a checkpoint reference: a path, 'builtin:NAME' or 'preset:NAME[@SEED]'."""
    if ref.startswith("preset:"):
        name, seed = parse_preset_ref(ref)
        return Checkpoint.from_preset(name, seed)
    return Checkpoint.from_pretrained(resolve_path(ref))


def resolve_path(ref: str) -> Path:
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        path = BUILTIN_DIR / name
        if not path.is_dir():
            available = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
            raise UserError(f"unknown builtin checkpoint '{name}': available: {', '.join(available) or 'none'}")
        return path
    return Path(ref)


def parse_preset_ref(ref: str) -> tuple[str, int]:
    body = ref.split(":", 1)[1]
    name, _, seed = body.partition("@")
    get_preset(name)  # validates the name
    if seed and not seed.isdigit():
        raise UserError(f"checkpoint '{ref}': the seed after '@' must be a non-negative integer")
    return name, int(seed or 0)


def preset_hash(name: str, seed: int) -> str:
    """Random init depends on the preset, the seed, and torch's RNG: all go into the hash."""
    return hashlib.sha256(f"preset:{name}@{seed}|mdship {__version__}|torch {torch.__version__}".encode()).hexdigest()


def checkpoint_hash(root: Path) -> str:
    """sha256 over every file of the checkpoint (relative path + bytes), in sorted order: stable across machines."""
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).replace(os.sep, "/").encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def preset_tokenizer(preset: Preset):
    """Random-init presets still carry a valid CLIP-format tokenizer, generated from a word list."""
    from mdship.tokenizer import DEFAULT_WORDS, load_tokenizer, save_clip_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        save_clip_tokenizer(tmp, list(DEFAULT_WORDS) + preset.extra_words,
                            model_max_length=preset.text_encoder["max_position_embeddings"])
        return load_tokenizer(tmp)


def save_tokenizer(tokenizer, directory: Path) -> None:
    """Write a loaded CLIPTokenizer as CLIP's own files (vocab.json + merges.txt + configs).

    transformers 5 saves only tokenizer.json; mdship keeps the original two-file format because it is what
    CLIP checkpoints ship and what the C++ runner reads.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    (directory / "tokenizer.json").unlink(missing_ok=True)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n", encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (directory / "merges.txt").write_text("\n".join(["#version: 0.2"] + merges) + "\n", encoding="utf-8")


def _align_special_ids(text_cfg: dict, tokenizer) -> None:
    """The text config's bos/eos/pad ids must be the tokenizer's (a generated vocab puts them last)."""
    text_cfg["bos_token_id"] = tokenizer.bos_token_id
    text_cfg["eos_token_id"] = tokenizer.eos_token_id
    text_cfg["pad_token_id"] = tokenizer.pad_token_id


# ---------------------------------------------------------------------- strict readers
def _read_json(path: Path, component: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({component} needs it)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _check_fields(path: Path, data: dict, expected: dict[str, type]) -> None:
    """Unknown or missing fields, or values of the wrong type, are errors: defaults would load the wrong model."""
    for key in data:
        if key not in expected:
            close = difflib.get_close_matches(key, expected, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise CheckpointError(f"{path}: unknown field '{key}'{hint}")
    for key, typ in expected.items():
        if key not in data:
            raise CheckpointError(f"{path}: missing field '{key}'")
        value = data[key]
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise CheckpointError(f"{path}: field '{key}' should be {typ.__name__}, found {type(value).__name__} {value!r}")


def _dataclass_from_json(cls, path: Path):
    data = _read_json(path, path.parent.name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    _check_fields(path, data, {name: type(getattr(defaults, name)) for name in fields})
    return cls(**data)


def _load_weights(module: torch.nn.Module, folder: Path, component: str) -> None:
    """Load a component's safetensors into a meta-device module, checking keys, shapes, dtypes and values."""
    file = folder / WEIGHT_FILES[component]
    if not file.is_file():
        pickles = [n for n in PICKLE_NAMES if (folder / n).exists()]
        if pickles:
            raise CheckpointError(f"{folder / pickles[0]}: pickle weights are not loaded (unsafe); "
                                  f"convert to {WEIGHT_FILES[component]} with safetensors")
        raise CheckpointError(f"{file}: missing ({component} weights, safetensors)")
    expected = module.state_dict()
    tensors = {}
    try:
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            missing = sorted(set(expected) - keys)
            unexpected = sorted(keys - set(expected))
            if missing:
                raise CheckpointError(f"{file}: missing weight '{missing[0]}' ({len(missing)} missing in {component})")
            if unexpected:
                raise CheckpointError(f"{file}: unexpected weight '{unexpected[0]}' ({len(unexpected)} not in the {component} config's model)")
            for key in sorted(keys):
                sl = f.get_slice(key)
                dtype, shape = sl.get_dtype(), tuple(sl.get_shape())
                if shape != tuple(expected[key].shape):
                    raise CheckpointError(f"{file}: weight '{key}' has shape {list(shape)}, expected {list(expected[key].shape)}")
                if dtype not in ACCEPTED_DTYPES:
                    raise CheckpointError(f"{file}: weight '{key}' has dtype {dtype}, expected one of {', '.join(ACCEPTED_DTYPES)}")
                tensor = f.get_tensor(key)
                if not torch.isfinite(tensor).all():
                    raise CheckpointError(f"{file}: weight '{key}' contains NaN or Inf")
                tensors[key] = tensor.float()
    except SafetensorError as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e}); truncated or not safetensors?") from None
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e.strerror or e})") from None
    module.load_state_dict(tensors, assign=True, strict=True)
    left_on_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    assert not left_on_meta, f"{component}: tensors not materialized by the checkpoint: {left_on_meta[:3]}"
