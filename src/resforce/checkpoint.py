"""Checkpoints: atomic save, exact resume, self-contained weight files.

A checkpoint is a directory run_dir/checkpoints/step_00001234/ holding
  model.safetensors  online weights        (metadata "config": the full run config, YAML)
  ema.safetensors    EMA weights (sampling) (same metadata)
  state.pt           optimizer, step, RNG states, data-stream position
It is written into a hidden temporary directory and renamed into place, so a crash never
leaves a half-written checkpoint; only the last `keep` are kept.
A single .safetensors file is enough to generate: its metadata carries the config.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file, load_file

from .fileio import atomic_write

CKPT_DIR = "checkpoints"


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], config_yaml: str) -> None:
    """One safetensors file with the config in its metadata, written atomically."""
    tensors = _contiguous(state_dict)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"config": config_yaml,
                                                                          "format": "resforce"}))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state_dict, config YAML or None) of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), meta.get("config")


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: str | Path, step: int, model_sd, ema_sd, state: dict,
                    config_yaml: str, keep: int = 3) -> Path:
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp / "model.safetensors", model_sd, config_yaml)
    save_weights(tmp / "ema.safetensors", ema_sd, config_yaml)
    torch.save(state, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    if final.exists():  # re-saving a step: move the old one aside first, then drop it
        old = root / f".old_step_{step:08d}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    for stale in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(ckpt_dir: str | Path) -> tuple[dict, dict, dict]:
    """(model_sd, ema_sd, state) of a checkpoint directory."""
    d = Path(ckpt_dir)
    for name in ("model.safetensors", "ema.safetensors", "state.pt"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"checkpoint {d} is incomplete: {name} is missing")
    model_sd, _ = read_weights(d / "model.safetensors")
    ema_sd, _ = read_weights(d / "ema.safetensors")
    state = torch.load(d / "state.pt", weights_only=False)
    return model_sd, ema_sd, state


def resolve_weights(path: str | Path, prefer_ema: bool = True) -> Path:
    """A weights file from a run directory (its latest checkpoint), a checkpoint directory,
    or a .safetensors file."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (expected a run directory, a checkpoint "
                                f"directory or a .safetensors file)")
    if (p / CKPT_DIR).is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise FileNotFoundError(f"run directory {p} has no checkpoints yet")
        p = latest
    name = "ema.safetensors" if prefer_ema else "model.safetensors"
    if (p / name).is_file():
        return p / name
    raise FileNotFoundError(f"{p} holds neither a checkpoint nor {name}")


def load_model(path: str | Path, device="cpu", prefer_ema: bool = True):
    """(model in eval mode, TrainConfig) from a run dir, checkpoint dir or weights file."""
    from .config import config_from_yaml
    from .model.dit import CausalVideoDiT

    weights = resolve_weights(path, prefer_ema)
    sd, cfg_yaml = read_weights(weights)
    if cfg_yaml is None:
        raise ValueError(f"{weights} carries no resforce config in its metadata")
    cfg = config_from_yaml(cfg_yaml)
    model = CausalVideoDiT(cfg.model)
    model.load_state_dict(sd)
    return model.to(device).eval(), cfg


def export_weights(path: str | Path, out: str | Path, dtype: str = "float16", prefer_ema: bool = True) -> Path:
    """A single self-contained weights file (config in its metadata) from a run, in `dtype`
    (float16 halves the size of shipped checkpoints; loading upcasts to the model's dtype)."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"export dtype must be float32, float16 or bfloat16, got {dtype!r}")
    sd, cfg_yaml = read_weights(resolve_weights(path, prefer_ema))
    if cfg_yaml is None:
        raise ValueError(f"{path} carries no resforce config in its metadata")
    cast = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in sd.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, cast, cfg_yaml)
    return out
