"""Sharded checkpoints (checkpoint_format: sharded): every rank writes its own pieces of the
weights, the EMA and the optimizer state with torch.distributed.checkpoint (DCP), so nothing
is gathered to rank 0 (the full layout moves 22.7 GB through rank 0 per save at Wan2.1-1.3B
with EMA and AdamW, 229 GB at 14B).

The files (io/sharded_weights.py has the layout and the single-process reader) are safetensors
and JSON only. DCP's default FileSystemWriter pickles a `.metadata` file and its
FileSystemReader unpickles it with pickle.load; that pair is never used. DCP's
HuggingFaceStorageWriter with save_distributed=True writes one safetensors file per rank and
records each piece's offsets in the full tensor as JSON in the file's header; with
consolidation off it writes no other file. HuggingFaceStorageReader rebuilds DCP's metadata
from those headers alone, so a checkpoint loads on any number of ranks: DCP reads each rank's
pieces of the new layout out of the old pieces (resharding). The rest of the state (step, RNG
and data streams, optimizer param_groups) goes into state.json / state.safetensors as in the
full layout (statefile.py).

Saving, a collective: each rank checks its own pieces for NaN/inf (all refuse together);
rank 0 makes a fresh .tmp_step_* directory; every rank writes its shard into it (dcp.save)
and hashes the file it wrote; rank 0 writes shards.json (the shards' SHA-256) and state.json
last, and only then, after every rank finished, renames the directory into place and rotates.
A kill at any point leaves the earlier checkpoints whole and a .tmp_step_* that the next start
removes (checkpoint.recover_interrupted_saves).

Loading, a collective: rank 0 checks everything that costs no tensor read (state.json against
its checksums, shards.json against the files, every shard header, every tensor covered by its
pieces, names and shapes against the model); then the ranks hash the shards between them (file
i by rank i mod world: the checkpoint is read once in all), and a damaged shard makes resume
fall back to the previous checkpoint, naming the file. Then dcp.load fills each rank's own
pieces of the model, EMA and optimizer state, bit for bit what was saved.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from resforce.io.fileio import atomic_write, fsync_dir
from resforce.io.sharded_weights import (MANIFEST, SHARDS, inspect_sharded, manifest, read_group, read_manifest,
                                         verify_shards)
from resforce.io.weights import DamagedFileError, sha256_of
from resforce.training import distributed as parallel
from resforce.training.checkpoint import (CheckpointDamaged, CheckpointError, begin_write, committing,
                                          refuse_nonfinite, rotate, write_failed)
from resforce.training.statefile import load_state, save_state, split_state, verify_checksums

PARAM_GROUPS = "optimizer_param_groups"
"""Key of the optimizer's param_groups (parameter names, lr, betas, ...) in state.json."""
_SINGLE = r"torch\.distributed is disabled, unavailable or uninitialized"
"""DCP's warning when no process group is up: a single process is the intent here."""


# ----------------------------------------------------------------------------- state dicts
def _sharded_state(model, ema, opt) -> tuple[dict, list]:
    """({"model", "ema", "optim"} of this rank's tensors (DTensor pieces under fsdp, full
    tensors otherwise), the optimizer's param_groups). Only tensors go to DCP: its safetensors
    writer would put any other value as raw pickled bytes into the shard."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt)  # fqn-keyed; allocates the state of a fresh optimizer
    tensors = {"model": get_model_state_dict(model), "ema": get_model_state_dict(ema), "optim": osd["state"]}
    return tensors, osd["param_groups"]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _first_nonfinite_local(tree, path: str = "") -> str | None:
    """Path of the first floating tensor of this rank's pieces holding NaN or inf."""
    if isinstance(tree, torch.Tensor):
        t = _local(tree)
        return path if t.is_floating_point() and not bool(torch.isfinite(t).all()) else None
    for k, v in tree.items():
        found = _first_nonfinite_local(v, f"{path}/{k}" if path else str(k))
        if found is not None:
            return found
    return None


@contextlib.contextmanager
def _one_process_ok():
    """DCP without a process group (one process) warns that it assumes one process: it does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE)
        yield


def _underlying(e: BaseException) -> BaseException:
    """The first failed rank's own exception inside DCP's CheckpointException (which wraps
    each failed rank's error, and is a BaseException, not an Exception)."""
    failures = getattr(e, "failures", None) or {}
    for _, pair in sorted(failures.items()):
        return pair[0] if isinstance(pair, tuple) else pair
    return e


# ----------------------------------------------------------------------------- saving
def save_sharded_checkpoint(run_dir: str | Path, step: int, model, ema, opt, state: dict, config_yaml: str,
                            keep: int = 3) -> Path | None:
    """Write checkpoint `step`, every rank its own pieces (every rank calls it). `state`: what
    is not sharded (step, streams, ...), a tree of data; rank 0's is written. Returns the
    directory on rank 0, None elsewhere. NonFiniteCheckpoint / CheckpointWriteError on every
    rank; the earlier checkpoints stay as they were."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from resforce.training.state import on_main

    tensors, param_groups = _sharded_state(model, ema, opt)
    whats = {"model": "model weights", "ema": "EMA weights", "optim": "optimizer state"}
    for r, bad in enumerate(parallel.gather_objects(_first_nonfinite_local(tensors))):
        if bad is not None:
            group, _, where = bad.partition("/")
            raise refuse_nonfinite(run_dir, step, whats[group], f"{where}, rank {r}")
    state = {**state, PARAM_GROUPS: param_groups}
    split_state(state)  # TypeError naming anything that is not data, before a file is touched
    final = Path(run_dir) / "checkpoints" / f"step_{step:08d}"
    tmp = parallel.broadcast_object(on_main(lambda: _begin(run_dir, step, final)))
    mine, error = {}, None
    try:
        with _one_process_ok():
            dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDS), save_distributed=True))
        # the file this rank wrote (none if DCP gave it no tensor): its shard index is rank + 1
        mine = {p.name: sha256_of(p) for p in sorted((tmp / SHARDS).glob(f"shard-{parallel.rank() + 1:05d}-*"))}
    except (Exception, CheckpointException) as e:  # DCP raises on every rank when any rank's write failed
        error = _underlying(e)
    errors = parallel.gather_objects(None if error is None else f"{type(error).__name__}: {error}")
    if any(errors):
        if parallel.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        cause = error if isinstance(error, OSError) else OSError(next(m for m in errors if m))
        raise write_failed(cause, final) from error
    sums = {}
    for part in parallel.gather_objects(mine):
        sums.update(part)
    world = parallel.world_size()
    return on_main(lambda: _finish(tmp, final, sums, world, state, config_yaml, keep))


def _begin(run_dir, step: int, final: Path) -> Path:
    try:
        return begin_write(run_dir, step)
    except OSError as e:
        shutil.rmtree(final.parent / f".tmp_{final.name}", ignore_errors=True)
        raise write_failed(e, final) from e


def _finish(tmp: Path, final: Path, sums: dict, world: int, state: dict, config_yaml: str, keep: int) -> Path:
    """Rank 0, after every rank wrote and hashed its shard: the shard list, the state, state.json
    last (it vouches for shards.json, which vouches for each shard), then the rename."""
    with committing(final):
        fsync_dir(tmp / SHARDS)  # the shard files' names are on disk before the list naming them
        if not sums:
            raise OSError(f"no shard file was written into {tmp / SHARDS}")
        atomic_write(tmp / "config.yaml", lambda t: t.write_text(config_yaml))
        text = json.dumps(manifest(sums, world, config_yaml), indent=1)
        atomic_write(tmp / MANIFEST, lambda t: t.write_text(text, encoding="utf-8"))
        save_state(tmp, state, checksum=(MANIFEST, "config.yaml"))  # state.json last
    rotate(final, keep)
    return final


# ----------------------------------------------------------------------------- loading
def inspect_for_resume(ckpt_dir: str | Path) -> tuple[dict[str, tuple[int, ...]], dict]:
    """Rank 0's checks of a sharded checkpoint that read no tensor of the shards: (model
    tensor names -> shapes, the state of state.json with its tensors). CheckpointDamaged
    naming the file otherwise. The shards' hashes: verify_sharded_checkpoint."""
    c, state = _inspect(ckpt_dir)
    return c.shapes("model"), state


def _inspect(ckpt_dir: str | Path):
    d = Path(ckpt_dir)
    try:
        if not (d / "state.json").is_file():
            raise DamagedFileError(f"{d / 'state.json'} is missing (the save did not finish)")
        verify_checksums(d)  # state.safetensors, shards.json, config.yaml against state.json
        c = inspect_sharded(d)
        state = load_state(d)
    except DamagedFileError as e:
        raise CheckpointDamaged(f"checkpoint {d}: {e}") from None
    model, ema = c.shapes("model"), c.shapes("ema")
    if model != ema or not model:
        raise CheckpointDamaged(f"checkpoint {d}: its shards hold {len(model)} model and {len(ema)} EMA tensors "
                                f"of other names or shapes; expected the same")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or PARAM_GROUPS not in state:
        raise CheckpointDamaged(f"checkpoint {d}: its state has no integer 'step' or no {PARAM_GROUPS}")
    return c, state


def verify_sharded_checkpoint(ckpt_dir: str | Path) -> str | None:
    """Every rank hashes its share of the shard files (file i by rank i mod world, so the
    checkpoint is read once in all): the first failure's message (naming the file), the same
    on every rank, or None. A collective."""
    d = Path(ckpt_dir)
    why = None
    try:
        sums = read_manifest(d)[1]
        verify_shards(d, sums, sorted(sums)[parallel.rank()::parallel.world_size()])
    except DamagedFileError as e:
        why = str(e)
    return next((w for w in parallel.gather_objects(why) if w), None)


def load_sharded_checkpoint(ckpt_dir: str | Path, model, ema, opt, param_groups: list) -> None:
    """Fill `model`, `ema` and `opt` (laid out for this run: any number of ranks, any mode)
    from a sharded checkpoint, each rank reading only what it holds. A collective. The
    optimizer's state is allocated first (torch's zero-learning-rate step), so that step never
    sees the loaded weights; every value is then overwritten by the saved one."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    d = Path(ckpt_dir)
    tensors, _ = _sharded_state(model, ema, opt)
    try:
        with _one_process_ok():
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(d / SHARDS)))
    except (Exception, CheckpointException) as e:
        cause = _underlying(e)
        raise CheckpointError(f"checkpoint {d}: its shards do not load into this run "
                              f"({type(cause).__name__}: {str(cause).strip()[:300]})") from None
    set_model_state_dict(model, tensors["model"])
    set_model_state_dict(ema, tensors["ema"])
    set_optimizer_state_dict(model, opt, {"state": tensors["optim"], "param_groups": param_groups})


def read_sharded_checkpoint(ckpt_dir: str | Path) -> tuple[dict, dict, dict]:
    """(model_sd, ema_sd, state) of a sharded checkpoint merged in this process, in the full
    layout's form (checkpoint.load_checkpoint returns it): full tensors, and state["optimizer"]
    in torch's own format (parameters numbered in param_groups order). Every file is verified
    first; CheckpointDamaged naming a damaged one."""
    d = Path(ckpt_dir)
    c, state = _inspect(d)
    try:
        verify_shards(d, c.sha256)
    except DamagedFileError as e:
        raise CheckpointDamaged(f"checkpoint {d}: {e}") from None
    model_sd, ema_sd, optim = read_group(c, "model"), read_group(c, "ema"), read_group(c, "optim")
    groups = state.pop(PARAM_GROUPS)
    names = [n for g in groups for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    per_param: dict[int, dict] = {}
    for key, v in optim.items():
        name, _, field = key.rpartition(".")
        if name not in index:
            raise CheckpointDamaged(f"checkpoint {d}: optimizer tensor {key} belongs to no parameter of its "
                                    f"{PARAM_GROUPS}")
        per_param.setdefault(index[name], {})[field] = v
    state["optimizer"] = {"state": dict(sorted(per_param.items())),
                          "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups]}
    return model_sd, ema_sd, state
