"""What the trainer reads of a local Wan folder when a run starts from it (init.wan): whether a
path is one, its config.json (the model's shape, when the recipe loads) and its weights as a
CausalVideoDiT state dict. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from resforce.model.dit import DiTConfig
from resforce.wan.transformer import WanConversionError, load_tensors, resolve_dir, convert_state_dict


def is_wan_folder(path) -> bool:
    """Whether `path` is a local diffusers Wan transformer (or pipeline) folder: a config.json
    (there or in transformer/) naming WanTransformer3DModel. Resforce runs hold config.yaml."""
    try:
        folder = resolve_dir(Path(path).expanduser())
        return json.loads((folder / "config.json").read_text()).get("_class_name") == "WanTransformer3DModel"
    except (OSError, ValueError):
        return False


def read_wan_config(path) -> tuple[Path, dict]:
    """(transformer folder, its config.json as a dict) of a local Wan folder; nothing else is
    read (the trainer takes the model's shape from it when its config loads)."""
    folder = resolve_dir(Path(path).expanduser())
    try:
        return folder, json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise WanConversionError(f"{str(folder / 'config.json')!r} is not valid JSON: {e}") from e


def read_wan_state_dict(path, config: DiTConfig, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The Wan weights of a local folder as a CausalVideoDiT state dict for `config`, on the
    CPU in the file's dtype (loading casts them into the model's float32 parameters), checked
    key by key and shape by shape (WanConversionError naming the folder and every mismatch)."""
    folder = resolve_dir(Path(path).expanduser())
    try:
        return convert_state_dict(load_tensors(folder, variant), config)
    except WanConversionError as e:
        raise WanConversionError(f"{folder}: {e}") from None
