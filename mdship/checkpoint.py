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
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mdship import __version__
from mdship.atomic import atomic_dir
from mdship.errors import CheckpointError, UserError
from mdship.models.presets import PRESET_NAMES, Preset, get_preset
from mdship.models.text_encoder import CLIP_L_TEXT_CONFIG, TextEncoder
from mdship.models.unet import MobileDiffusionUNet, UNetConfig
from mdship.models.vae import AutoencoderKL, ScaledDecoder, VAEConfig
from mdship.schedulers import SchedulerConfig
from mdship.tokenizer import save_tokenizer

BUILTIN_DIR = Path(__file__).parent / "builtin"
WEIGHT_FILES = {
    "text_encoder": "model.safetensors",
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
}
ACCEPTED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
PICKLE_NAMES = ("pytorch_model.bin", "diffusion_pytorch_model.bin", "model.pt", "model.ckpt", "model.pth")
CHECKPOINT_HELP = "a directory, 'builtin:NAME' or 'preset:mobilediffusion|tiny[@SEED]'"


# ---------------------------------------------------------------------- references
@dataclass(frozen=True)
class CheckpointRef:
    """What a user names as a checkpoint: a directory, `builtin:NAME` or `preset:NAME[@SEED]`.

    `CheckpointRef.parse` is the only parser of these strings (recipes, the CLI and `inspect` all use it).
    """

    kind: Literal["dir", "builtin", "preset"]
    name: str  # the path for "dir"
    seed: int | None = None  # presets only; None means 0

    @classmethod
    def parse(cls, ref: str | CheckpointRef) -> CheckpointRef:
        """Parse a reference; raise CheckpointError (one line, with what was expected) when malformed."""
        if isinstance(ref, CheckpointRef):
            return ref
        if not ref.strip():
            raise CheckpointError(f"empty checkpoint; expected {CHECKPOINT_HELP}")
        scheme, sep, rest = ref.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]+", scheme):
            return cls("dir", ref)  # a path ('C:\\...' has a one-letter 'scheme')
        if scheme == "builtin":
            if "@" in rest:
                raise CheckpointError(f"{ref!r}: a '@SEED' suffix is only for preset: checkpoints; "
                                      f"expected builtin:NAME")
            if not re.fullmatch(r"[A-Za-z0-9_-]+", rest):
                raise CheckpointError(f"{ref!r} has no valid name; expected builtin:NAME, e.g. builtin:shapes")
            return cls("builtin", rest)
        if scheme == "preset":
            name, at, seed = rest.partition("@")
            if name not in PRESET_NAMES:
                close = difflib.get_close_matches(name, PRESET_NAMES, n=1)
                hint = f"; did you mean 'preset:{close[0]}'?" if close else ""
                raise CheckpointError(f"unknown preset {name!r}; expected preset:"
                                      f"{' or preset:'.join(PRESET_NAMES)}{hint}")
            if at and not seed.isdigit():
                raise CheckpointError(f"{ref!r} has a bad seed {seed!r}; expected preset:{name}@INTEGER")
            return cls("preset", name, int(seed) if at else None)
        raise CheckpointError(f"unknown checkpoint scheme '{scheme}:'; expected {CHECKPOINT_HELP}")

    def __str__(self) -> str:
        if self.kind == "dir":
            return self.name
        return f"{self.kind}:{self.name}" + (f"@{self.seed}" if self.seed is not None else "")

    def directory(self) -> Path | None:
        """The checkpoint directory (None for presets); a builtin that is not shipped is a UserError."""
        if self.kind == "preset":
            return None
        if self.kind == "dir":
            return Path(self.name)
        path = BUILTIN_DIR / self.name
        if not path.is_dir():
            available = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
            raise UserError(f"unknown builtin checkpoint '{self.name}': available: {', '.join(available) or 'none'}")
        return path


# ---------------------------------------------------------------------- the checkpoint
class Checkpoint:
    """A MobileDiffusion checkpoint: text encoder, tokenizer, UNet, VAE and scheduler config.

    What a build needs before any weights (the hash that keys the cache, the native resolution, the scheduler,
    the tokenizer) is read from the configs; the modules are built or loaded on first use (`modules()`, or the
    `text_encoder` / `unet` / `vae` attributes). A rebuild whose every stage hits the cache never loads weights.

    `Checkpoint.open(ref)` is lazy; `from_pretrained(path)` and `from_preset(name, seed)` load at once (and so
    report a broken weight file right away).
    """

    def __init__(self, ref: CheckpointRef, resolution: int, scheduler: SchedulerConfig, hash: str,
                 path: Path | None = None):
        self.ref = ref
        self.resolution = resolution
        self.scheduler = scheduler
        self.hash = hash
        self.path = path
        self._modules: dict[str, torch.nn.Module] | None = None
        self._tokenizer = None
        self.adapters: list[dict] = []  # LoRA adapters merged into the weights: path, sha256, scale, target

    @property
    def source(self) -> str:
        return str(self.ref)

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, ref: str | CheckpointRef) -> Checkpoint:
        """Resolve a reference without loading weights: configs, scheduler and hash only."""
        ref = CheckpointRef.parse(ref)
        if ref.kind == "preset":
            preset = get_preset(ref.name)
            return cls(ref, preset.resolution, preset.scheduler, preset_hash(ref.name, ref.seed or 0))
        root = ref.directory()
        if not root.is_dir():
            raise CheckpointError(f"{root}: checkpoint directory not found (expected a directory with model_index.json)")
        index = _read_json(root / "model_index.json", "model_index")
        resolution = index.get("resolution")
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution % 64 or resolution <= 0:
            raise CheckpointError(f"{root / 'model_index.json'}: 'resolution' must be a positive multiple of 64, "
                                  f"found {resolution!r}")
        for comp in ("text_encoder", "tokenizer", "unet", "vae", "scheduler"):
            if not (root / comp).is_dir():
                raise CheckpointError(f"{root}: component folder '{comp}/' is missing (expected text_encoder/, "
                                      f"tokenizer/, unet/, vae/, scheduler/)")
        scheduler = _dataclass_from_json(SchedulerConfig, root / "scheduler" / "scheduler_config.json")
        problems = scheduler.validate()
        if problems:
            raise CheckpointError(f"{root / 'scheduler' / 'scheduler_config.json'}: {problems[0]}")
        return cls(ref, resolution, scheduler, checkpoint_hash(root), root)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> Checkpoint:
        """A random-init checkpoint of a preset, built now: the same seed gives the same weights."""
        ckpt = cls.open(CheckpointRef("preset", name, seed))
        ckpt.modules()
        return ckpt

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Checkpoint:
        """A checkpoint directory, loaded and checked now."""
        ckpt = cls.open(CheckpointRef("dir", str(path)))
        ckpt.modules()
        return ckpt

    @classmethod
    def from_modules(cls, text_encoder: TextEncoder, tokenizer, unet: MobileDiffusionUNet, vae: AutoencoderKL,
                     scheduler: SchedulerConfig, resolution: int) -> Checkpoint:
        """A checkpoint of modules in memory (a training run), to `save_pretrained`; its hash is known once saved."""
        ckpt = cls(CheckpointRef("dir", "<in memory>"), resolution, scheduler, hash="")
        ckpt._tokenizer = tokenizer
        for m in (text_encoder, unet, vae):
            m.eval().requires_grad_(False)
        ckpt._modules = {"text_encoder": text_encoder, "unet": unet, "vae": vae}
        return ckpt

    def unet_config(self) -> UNetConfig:
        """The UNet's configuration, read without its weights."""
        if self.path is None:
            return get_preset(self.ref.name).unet
        return _dataclass_from_json(UNetConfig, self.path / "unet" / "config.json")

    def resolution_multiple(self) -> int:
        """Image sizes this model takes are multiples of this: 8 pixels per latent pixel, and the latent is halved
        once per UNet level after the first (its skip connections need the halves to come out even)."""
        return 8 * 2 ** (len(self.unet_config().block_channels) - 1)

    def with_lora(self, adapters: list) -> Checkpoint:
        """This checkpoint with LoRA adapters (recipe `lora:` entries: path, scale, target) merged into its weights
        when they load, before any stage sees them. Its hash covers the adapters' bytes, scales and targets, so
        every cache key does too."""
        from mdship import lora

        if not adapters:
            return self
        merged = Checkpoint(self.ref, self.resolution, self.scheduler, self.hash, self.path)
        for a in adapters:
            path = Path(a.path)
            lora.read(path)  # a missing, pickle or unreadable file is refused now, not after an hour of work
            merged.adapters.append({"path": str(path), "sha256": lora.file_hash(path), "scale": a.scale,
                                    "target": a.target})
        merged.hash = hashlib.sha256(json.dumps([self.hash, merged.adapters], sort_keys=True).encode()).hexdigest()
        return merged

    def _merge_adapters(self) -> None:
        from mdship import lora

        for a in self.adapters:
            module = self._modules[a["target"]]
            lora.merge(module, lora.deltas(a["path"], module, a["target"]), a["scale"])

    # ------------------------------------------------------------------ lazy parts
    @property
    def tokenizer(self):
        """The CLIP tokenizer (transformers.CLIPTokenizer), loaded on first use."""
        if self._tokenizer is None:
            if self.path is None:
                self._tokenizer = preset_tokenizer(get_preset(self.ref.name))
            else:
                from mdship.tokenizer import load_tokenizer
                self._tokenizer = load_tokenizer(self.path / "tokenizer")
        return self._tokenizer

    def write_tokenizer(self, directory: Path) -> None:
        """The checkpoint's tokenizer files (CLIP's vocab.json + merges.txt format) into ``directory``."""
        from mdship.tokenizer import PRESET_TOKENIZER

        shutil.copytree(PRESET_TOKENIZER if self.path is None else self.path / "tokenizer", directory)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The shippable neural components by bundle name (the VAE encoder is training-only); built on first use."""
        if self._modules is None:
            text_encoder, unet, vae = self._build_preset() if self.path is None else self._load_directory()
            for m in (text_encoder, unet, vae):
                m.eval().requires_grad_(False)
            self._modules = {"text_encoder": text_encoder, "unet": unet, "vae": vae}
            self._merge_adapters()
        m = self._modules
        return {"text_encoder": m["text_encoder"], "unet": m["unet"], "vae_decoder": ScaledDecoder(m["vae"])}

    @property
    def text_encoder(self) -> TextEncoder:
        self.modules()
        return self._modules["text_encoder"]

    @property
    def unet(self) -> MobileDiffusionUNet:
        self.modules()
        return self._modules["unet"]

    @property
    def vae(self) -> AutoencoderKL:
        self.modules()
        return self._modules["vae"]

    def _build_preset(self):
        preset = get_preset(self.ref.name)
        torch.manual_seed(self.ref.seed or 0)
        text_cfg = dict(preset.text_encoder)
        if not preset.fixed_vocab:
            text_cfg["vocab_size"] = len(self.tokenizer)
        _align_special_ids(text_cfg, self.tokenizer)
        return TextEncoder(text_cfg), MobileDiffusionUNet(preset.unet), AutoencoderKL(preset.vae)

    def _load_directory(self):
        root = self.path
        tokenizer = self.tokenizer
        text_cfg = _read_json(root / "text_encoder" / "config.json", "text_encoder")
        _check_fields(root / "text_encoder" / "config.json", text_cfg, {k: type(v) for k, v in CLIP_L_TEXT_CONFIG.items()})
        unet_cfg = _dataclass_from_json(UNetConfig, root / "unet" / "config.json")
        vae_cfg = _dataclass_from_json(VAEConfig, root / "vae" / "config.json")
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
        return text_encoder, unet, vae

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the checkpoint atomically: a temp directory beside `path`, renamed into place."""
        root = Path(path)
        modules = {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae}
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
            for comp, module in modules.items():
                state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
                save_file(state, str(tmp / comp / WEIGHT_FILES[comp]), metadata={"format": "pt"})
        return root


def preset_hash(name: str, seed: int) -> str:
    """Random init depends on the preset, the seed, the tokenizer (its size shapes the text encoder) and torch's
    RNG: all go into the hash."""
    from mdship.tokenizer import PRESET_TOKENIZER

    return hashlib.sha256(f"preset:{name}@{seed}|mdship {__version__}|torch {torch.__version__}|tokenizer "
                          f"{checkpoint_hash(PRESET_TOKENIZER)}".encode()).hexdigest()


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
    """Random-init presets carry a valid CLIP-format tokenizer: the one shipped in mdship/data/preset-tokenizer."""
    from mdship.tokenizer import PRESET_TOKENIZER, load_tokenizer

    return load_tokenizer(PRESET_TOKENIZER)


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
