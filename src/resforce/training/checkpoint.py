"""Checkpoints: data only, atomic and durable, exact resume, self-contained weight files.

A checkpoint is a directory run_dir/checkpoints/step_00001234/ holding
  model.safetensors  online weights        (metadata "config": the full run config, YAML)
  ema.safetensors    EMA weights (sampling) (same metadata)
  state.safetensors  optimizer tensors, RNG generator states (uint8 tensors)
  state.json         the rest of the resumable state: step, optimizer param_groups, data-stream
                     positions, ..., with each tensor replaced by its key (statefile.py); and
                     the SHA-256 of model, ema and state .safetensors. Written last.
  config.yaml        the run config, for people
Nothing is pickled, so loading a checkpoint cannot run code. Checkpoints written before this
format hold a pickled `state.pt`; it is read with torch's weights_only loader only, which
refuses anything but tensors and plain containers.

Writing: into a hidden .tmp_step_* directory, every file fsynced, then renamed into place and
the directory fsynced, so a crash or a full disk never leaves a half-written step_*; a failed
write removes its temporary directory. Checkpoints with a NaN or inf anywhere are refused.
Reading verifies each file against its SHA-256 in state.json first: a flipped byte makes the
checkpoint damaged (resume falls back to the previous one, saying why), as a truncation does.
Rotation (keep the last `keep`) orders by step number and never removes the one just written.
A single .safetensors file is enough to generate: its metadata carries the config (the
weights-file functions live in io/weights.py; they are re-exported here for the trainer).

checkpoint_format: sharded writes another layout into the same step_* directories, each rank
its own pieces (sharded_checkpoint.py, io/sharded_weights.py); it shares the temporary
directory, the rename into place, the rotation and the clean-up after a crash defined here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from resforce.io.fileio import atomic_write, fsync_dir
from resforce.io.sharded_weights import is_sharded
from resforce.io.weights import (CKPT_DIR, DamagedFileError, WeightsMismatch, checkpoint_dirs, first_nonfinite,
                                 latest_checkpoint, read_weights, save_weights)
from resforce.io.weights import check_fits as _check_fits
from resforce.training.statefile import load_state, save_state, split_state, verify_checksums

FILES = ("model.safetensors", "ema.safetensors", "state.json", "state.safetensors")
LEGACY_STATE = "state.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names its path and what was expected."""


class CheckpointDamaged(CheckpointError):
    """Missing, truncated or unreadable files, or NaN/inf values: resume may fall back."""


class CheckpointMismatch(CheckpointError, WeightsMismatch):
    """A sound checkpoint of another model (other tensor names or shapes)."""


class NonFiniteCheckpoint(CheckpointError):
    """Refused to write a checkpoint holding NaN or inf."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (e.g. disk full); the previous checkpoints are untouched."""


# ----------------------------------------------------------------------------- writing
def save_checkpoint(run_dir: str | Path, step: int, model_sd, ema_sd, state: dict,
                    config_yaml: str, keep: int = 3) -> Path:
    final = Path(run_dir) / CKPT_DIR / f"step_{step:08d}"
    for what, tree in (("model weights", model_sd), ("EMA weights", ema_sd), ("optimizer/RNG state", state)):
        bad = first_nonfinite(tree)
        if bad is not None:
            raise refuse_nonfinite(run_dir, step, what, bad)
    split_state(state)  # TypeError naming anything that is not data, before a file is touched
    with committing(final):
        tmp = begin_write(run_dir, step)
        save_weights(tmp / "model.safetensors", model_sd, config_yaml)
        save_weights(tmp / "ema.safetensors", ema_sd, config_yaml)
        atomic_write(tmp / "config.yaml", lambda t: t.write_text(config_yaml))
        save_state(tmp, state, checksum=("model.safetensors", "ema.safetensors"))  # state.json last: the checksums
    rotate(final, keep)
    return final


@contextlib.contextmanager
def committing(final: Path):
    """The write of checkpoint `final` into its .tmp_ directory happens inside; on success the
    directory is renamed into place (`commit`). Any failure removes it, and an I/O failure
    becomes a CheckpointWriteError naming `final` (safetensors reports ENOSPC as its own type)."""
    tmp = final.parent / f".tmp_{final.name}"
    try:
        yield
        commit(tmp)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(e, final) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_nonfinite(run_dir, step: int, what: str, where: str) -> NonFiniteCheckpoint:
    """The error refusing checkpoint `step` because `what` holds NaN or inf at `where`."""
    root = Path(run_dir) / CKPT_DIR
    return NonFiniteCheckpoint(f"step {step}: {what} hold NaN or inf (at {where}); refusing to write "
                               f"{root / f'step_{step:08d}'}; the last finite checkpoint stays "
                               f"{latest_checkpoint(run_dir) or '(none)'}")


def begin_write(run_dir: str | Path, step: int) -> Path:
    """A fresh, empty .tmp_step_* directory for checkpoint `step` (checkpoints/ created durably
    if new); the checkpoint is written into it and then `commit`ted."""
    root = Path(run_dir) / CKPT_DIR
    new_root = not root.is_dir()
    root.mkdir(parents=True, exist_ok=True)
    if new_root:
        fsync_dir(root.parent)
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit(tmp: Path) -> Path:
    """Rename the finished .tmp_step_* directory into place, durably; returns the checkpoint's
    directory. Until this rename a crash leaves only the temporary directory (removed at the
    next start by recover_interrupted_saves) and the earlier checkpoints as they were."""
    final = tmp.parent / tmp.name[len(".tmp_"):]
    _swap_into_place(tmp, final)
    return final


def rotate(written: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints of the run (by step), never `written`."""
    _rotate(written.parent, keep, written)


def write_failed(e: BaseException, final: Path) -> CheckpointWriteError:
    """The CheckpointWriteError (errno kept) for a failed write of checkpoint `final`."""
    code = getattr(e, "errno", None) or _os_error_code(str(e))
    why = f"could not write checkpoint {final}: {getattr(e, 'strerror', None) or e}; " \
          f"earlier checkpoints are untouched"
    return CheckpointWriteError(code, why) if code else CheckpointWriteError(why)


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
    holds NaN/inf. A sharded checkpoint is merged in this process into the same form (full
    tensors; sharded_checkpoint.read_sharded_checkpoint); the trainer loads it piecewise instead."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory {d} does not exist")
    if is_sharded(d):
        from resforce.training.sharded_checkpoint import read_sharded_checkpoint

        return read_sharded_checkpoint(d)
    legacy = not (d / "state.json").is_file() and (d / LEGACY_STATE).is_file()
    needed = FILES[:2] + ((LEGACY_STATE,) if legacy else FILES[2:])
    missing = [n for n in needed if not (d / n).is_file()]
    if missing:
        raise CheckpointDamaged(f"checkpoint {d} is incomplete: {', '.join(missing)} missing "
                                f"(expected {', '.join(needed)})")
    try:
        if not legacy:
            verify_checksums(d)  # every file against its SHA-256 in state.json, before reading any
        model_sd, _ = read_weights(d / "model.safetensors")
        ema_sd, _ = read_weights(d / "ema.safetensors")
        state = _load_legacy_state(d / LEGACY_STATE) if legacy else load_state(d)
    except DamagedFileError as e:  # StateFileError too
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
        # torch's own message suggests turning the weights-only check off (which would run the file's code): never forwarded
        raise DamagedFileError(f"{path} (a pickled state from an older version) was refused by torch's "
                               f"weights_only loader ({type(e).__name__}): it holds something other than tensors "
                               f"and plain containers, or is damaged; it is never loaded any other way") from None


def check_fits(source: str | Path, sd: dict, expected: dict) -> None:
    """CheckpointMismatch naming `source` unless `sd` has exactly the tensor names and shapes of
    `expected` (a model's state dict)."""
    _check_fits(source, sd, expected, error=CheckpointMismatch)
