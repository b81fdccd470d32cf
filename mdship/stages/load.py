"""Stage `load`: resolve the recipe's checkpoint reference without loading weights until a stage needs them.

A rebuild whose every later stage hits the cache never loads the model: only the checkpoint hash (which
keys the cache) is computed, from the files (or, for presets, from the preset name and seed).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mdship.checkpoint import (Checkpoint, _dataclass_from_json, checkpoint_hash, parse_preset_ref, preset_hash,
                               preset_tokenizer, resolve_path, save_tokenizer)
from mdship.errors import CheckpointError
from mdship.models.presets import get_preset
from mdship.schedulers import SchedulerConfig


@dataclass
class LoadedModel:
    ref: str
    hash: str
    native_resolution: int
    path: Path | None = None  # None for presets
    _checkpoint: Checkpoint | None = field(default=None, repr=False)

    def checkpoint(self) -> Checkpoint:
        """The weights, loaded on first use."""
        if self._checkpoint is None:
            if self.path is None:
                name, seed = parse_preset_ref(self.ref)
                self._checkpoint = Checkpoint.from_preset(name, seed)
            else:
                self._checkpoint = Checkpoint.from_pretrained(self.path)
        return self._checkpoint

    def scheduler(self) -> SchedulerConfig:
        if self.path is None:
            return get_preset(parse_preset_ref(self.ref)[0]).scheduler
        return _dataclass_from_json(SchedulerConfig, self.path / "scheduler" / "scheduler_config.json")

    def write_tokenizer(self, directory: Path) -> None:
        """Copy the checkpoint's tokenizer files (CLIP's vocab.json + merges.txt format) into `directory`."""
        if self.path is not None:
            shutil.copytree(self.path / "tokenizer", directory)
            return
        preset = get_preset(parse_preset_ref(self.ref)[0])
        save_tokenizer(preset_tokenizer(preset), directory)


def run(checkpoint_ref: str) -> LoadedModel:
    if checkpoint_ref.startswith("preset:"):
        name, seed = parse_preset_ref(checkpoint_ref)
        return LoadedModel(checkpoint_ref, preset_hash(name, seed), get_preset(name).resolution)
    path = resolve_path(checkpoint_ref)
    index = path / "model_index.json"
    if not index.is_file():
        raise CheckpointError(f"{path}: not a checkpoint directory (model_index.json missing)")
    try:
        resolution = int(json.loads(index.read_text())["resolution"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: cannot read 'resolution' ({e})") from None
    return LoadedModel(checkpoint_ref, checkpoint_hash(path), resolution, path)
