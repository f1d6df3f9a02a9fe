"""Checkpoints: data only, atomic and durable, exact resume, self-contained weight files.

A checkpoint is a directory run_dir/checkpoints/step_00001234/ holding
  model.safetensors  online weights        (metadata "config": the full run config, YAML)
  ema.safetensors    EMA weights (sampling) (same metadata)
  state.safetensors  optimizer tensors, RNG generator states (uint8 tensors)
  state.json         the rest of the resumable state: step, optimizer param_groups, data-stream
                     positions, ..., with each tensor replaced by its key (statefile.py)
  config.yaml        the run config, for people
Nothing is pickled, so loading a checkpoint cannot run code. Checkpoints written before this
format hold a pickled `state.pt`; it is read with torch's weights_only loader only, which
refuses anything but tensors and plain containers.

Writing: into a hidden .tmp_step_* directory, every file fsynced, then renamed into place and
the directory fsynced, so a crash or a full disk never leaves a half-written step_*; a failed
write removes its temporary directory. Checkpoints with a NaN or inf anywhere are refused.
Rotation (keep the last `keep`) orders by step number and never removes the one just written.
A single .safetensors file is enough to generate: its metadata carries the config.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from resforce.io.fileio import atomic_write, fsync_dir
from resforce.training.statefile import StateFileError, check_safetensors_file, load_state, save_state, split_state

CKPT_DIR = "checkpoints"
STEP_DIR = re.compile(r"^step_(\d+)$")
FILES = ("model.safetensors", "ema.safetensors", "state.json", "state.safetensors")
LEGACY_STATE = "state.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names its path and what was expected."""


class CheckpointDamaged(CheckpointError):
    """Missing, truncated or unreadable files, or NaN/inf values: resume may fall back."""


class CheckpointMismatch(CheckpointError):
    """A sound checkpoint of another model (other tensor names or shapes)."""


class NonFiniteCheckpoint(CheckpointError):
    """Refused to write a checkpoint holding NaN or inf."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (e.g. disk full); the previous checkpoints are untouched."""


# ----------------------------------------------------------------------------- weight files
def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], config_yaml: str) -> None:
    """One safetensors file with the config in its metadata, written atomically."""
    tensors = _contiguous(state_dict)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"config": config_yaml,
                                                                          "format": "resforce"}))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state_dict, config YAML or None) of a safetensors file; a damaged file raises
    StateFileError naming it and the size its header promises."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    check_safetensors_file(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path), device="cpu"), meta.get("config")  # memory-mapped, on the CPU on every rank


def first_nonfinite(tree, path: str = "") -> str | None:
    """Path of the first floating tensor holding NaN or inf in a tree of dicts/lists, or None."""
    if isinstance(tree, torch.Tensor):
        bad = tree.is_floating_point() and not bool(torch.isfinite(tree).all())
        return (path or "/") if bad else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for k, v in items:
        found = first_nonfinite(v, f"{path}/{k}" if path else str(k))
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------------- listing
def step_of(ckpt_dir: str | Path) -> int:
    m = STEP_DIR.match(Path(ckpt_dir).name)
    if not m:
        raise ValueError(f"{ckpt_dir} is not a checkpoint directory (expected a name like step_00000100)")
    return int(m.group(1))


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint directories, oldest first (by step number, not by name)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=step_of)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


# ----------------------------------------------------------------------------- writing
def save_checkpoint(run_dir: str | Path, step: int, model_sd, ema_sd, state: dict,
                    config_yaml: str, keep: int = 3) -> Path:
    root = Path(run_dir) / CKPT_DIR
    name = f"step_{step:08d}"
    for what, tree in (("model weights", model_sd), ("EMA weights", ema_sd), ("optimizer/RNG state", state)):
        bad = first_nonfinite(tree)
        if bad is not None:
            raise NonFiniteCheckpoint(f"step {step}: {what} hold NaN or inf (at {bad}); refusing to write "
                                      f"{root / name}; the last finite checkpoint stays "
                                      f"{latest_checkpoint(run_dir) or '(none)'}")
    split_state(state)  # TypeError naming anything that is not data, before a file is touched
    new_root = not root.is_dir()
    root.mkdir(parents=True, exist_ok=True)
    if new_root:
        fsync_dir(root.parent)
    final, tmp = root / name, root / f".tmp_{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_weights(tmp / "model.safetensors", model_sd, config_yaml)
        save_weights(tmp / "ema.safetensors", ema_sd, config_yaml)
        save_state(tmp, state)
        atomic_write(tmp / "config.yaml", lambda t: t.write_text(config_yaml))
        _swap_into_place(tmp, final)
    except (OSError, SafetensorError) as e:  # safetensors reports I/O errors (ENOSPC) as its own type
        shutil.rmtree(tmp, ignore_errors=True)
        code = getattr(e, "errno", None) or _os_error_code(str(e))
        why = f"could not write checkpoint {final}: {getattr(e, 'strerror', None) or e}; " \
              f"earlier checkpoints are untouched"
        raise (CheckpointWriteError(code, why) if code else CheckpointWriteError(why)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _rotate(root, keep, final)
    return final


def _os_error_code(message: str) -> int | None:
    m = re.search(r"os error (\d+)", message)
    return int(m.group(1)) if m else None


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished tmp directory to `final` and make the rename durable. Re-saving a
    step moves the old directory aside first; a crash in between leaves .old_step_* that
    recover_interrupted_saves puts back."""
    root = final.parent
    if final.exists():
        old = root / f".old_{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        fsync_dir(root)


def _rotate(root: Path, keep: int, written: Path) -> None:
    """Drop all but the newest `keep` checkpoints (by step); never the one just written. Each
    is renamed to .del_step_* before it is deleted, so an interrupted deletion never leaves a
    half-deleted step_* that looks like a checkpoint."""
    if keep <= 0:
        return
    for stale in checkpoint_dirs(root.parent)[:-keep]:
        if stale != written:
            trash = root / f".del_{stale.name}"
            os.replace(stale, trash)
            shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(root)


def recover_interrupted_saves(run_dir: str | Path) -> list[str]:
    """Clean up after a writer that died mid-save (run at start, under the run lock): remove
    .tmp_step_* and .del_step_* directories, and put back a .old_step_* whose step_* is missing
    (a crash between moving the old directory aside and renaming the new one in). Returns one
    line per action, for the log."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    done = []
    for p in sorted(root.iterdir()):
        m = re.match(r"^\.(tmp|old|del)_(step_\d+)$", p.name)
        if not m:
            continue
        kind, final = m.group(1), root / m.group(2)
        if kind == "old" and not final.exists():
            os.replace(p, final)
            done.append(f"restored {final.name} from {p.name} (a re-save was interrupted)")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name} (left by an interrupted checkpoint write)")
    if done:
        fsync_dir(root)
    return done


def move_aside(ckpt_dir: str | Path) -> Path:
    """Rename a damaged checkpoint to step_*.damaged (kept for inspection, no longer listed)."""
    d = Path(ckpt_dir)
    target = d.with_name(d.name + ".damaged")
    n = 1
    while target.exists():
        target, n = d.with_name(f"{d.name}.damaged{n}"), n + 1
    os.replace(d, target)
    fsync_dir(d.parent)
    return target


# ----------------------------------------------------------------------------- reading
def load_checkpoint(ckpt_dir: str | Path) -> tuple[dict, dict, dict]:
    """(model_sd, ema_sd, state) of a checkpoint directory. CheckpointDamaged (naming the
    directory, the file and what was expected) if a file is missing, truncated, unreadable or
    holds NaN/inf."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory {d} does not exist")
    legacy = not (d / "state.json").is_file() and (d / LEGACY_STATE).is_file()
    needed = FILES[:2] + ((LEGACY_STATE,) if legacy else FILES[2:])
    missing = [n for n in needed if not (d / n).is_file()]
    if missing:
        raise CheckpointDamaged(f"checkpoint {d} is incomplete: {', '.join(missing)} missing "
                                f"(expected {', '.join(needed)})")
    try:
        model_sd, _ = read_weights(d / "model.safetensors")
        ema_sd, _ = read_weights(d / "ema.safetensors")
        state = _load_legacy_state(d / LEGACY_STATE) if legacy else load_state(d)
    except StateFileError as e:
        raise CheckpointDamaged(f"checkpoint {d}: {e}") from None
    for what, tree in (("model.safetensors", model_sd), ("ema.safetensors", ema_sd),
                       ("optimizer/RNG state", state)):
        bad = first_nonfinite(tree)
        if bad is not None:
            raise CheckpointDamaged(f"checkpoint {d}: {what} holds NaN or inf (at {bad}); expected finite values")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointDamaged(f"checkpoint {d}: its state has no integer 'step'")
    return model_sd, ema_sd, state


def _load_legacy_state(path: Path) -> dict:
    """A pre-safetensors state.pt, through torch's weights_only unpickler: tensors, numbers,
    strings and containers only; anything else (an object that would run code) is refused
    before it is built."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError (zip), ... : all "not data"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StateFileError(f"{path} (a pickled state from an older version) was refused by torch's "
                             f"weights_only loader: {first}; expected tensors and plain containers only") from None


def check_fits(source: str | Path, sd: dict, expected: dict) -> None:
    """CheckpointMismatch naming `source` unless `sd` has exactly the tensor names and shapes of
    `expected` (a model's state dict)."""
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if not (missing or extra or wrong):
        return
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} tensor(s) of another shape, e.g. {k}: {tuple(sd[k].shape)} there, "
                     f"{tuple(expected[k].shape)} expected by this config")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
    raise CheckpointMismatch(f"{source} holds another model than the config describes (model.*): "
                             + "; ".join(parts))


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
    from resforce.config import config_from_yaml
    from resforce.model.dit import CausalVideoDiT

    weights = resolve_weights(path, prefer_ema)
    sd, cfg_yaml = read_weights(weights)
    if cfg_yaml is None:
        raise ValueError(f"{weights} carries no resforce config in its metadata")
    bad = first_nonfinite(sd)
    if bad is not None:
        raise ValueError(f"{weights} holds NaN or inf (tensor {bad}): the run diverged; "
                         f"use an earlier checkpoint")
    cfg = config_from_yaml(cfg_yaml)
    from resforce.model.lora import has_adapters, merge_lora_state_dict

    if has_adapters(sd):  # a LoRA run: its adapters folded into the base weights
        sd = merge_lora_state_dict(sd, cfg.lora)
    model = CausalVideoDiT(cfg.model)
    check_fits(weights, sd, model.state_dict())
    model.load_state_dict(sd)
    return model.to(device).eval(), cfg


def export_weights(path: str | Path, out: str | Path, dtype: str = "float16", prefer_ema: bool = True,
                   merge_lora: bool = False) -> Path:
    """A single self-contained weights file (config in its metadata) from a run, in `dtype`
    (float16 halves the size of shipped checkpoints; loading upcasts to the model's dtype).
    A LoRA run (lora.rank > 0) exports its adapters alone (lora_A / lora_B tensors), or with
    merge_lora the full model with the adapters folded in (loads like any run's weights)."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"export dtype must be float32, float16 or bfloat16, got {dtype!r}")
    sd, cfg_yaml = read_weights(resolve_weights(path, prefer_ema))
    if cfg_yaml is None:
        raise ValueError(f"{path} carries no resforce config in its metadata")
    from resforce.model.lora import adapter_state_dict, has_adapters, merge_lora_state_dict

    if merge_lora and not has_adapters(sd):
        raise ValueError(f"--merge-lora: {path} holds no LoRA adapters (a run with lora.rank 0, or weights already merged)")
    if has_adapters(sd):
        from resforce.config import config_from_yaml

        sd = merge_lora_state_dict(sd, config_from_yaml(cfg_yaml).lora) if merge_lora else adapter_state_dict(sd)
    cast = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in sd.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, cast, cfg_yaml)
    return out
