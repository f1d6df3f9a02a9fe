"""A sharded checkpoint's files, read in one process: the layout, its checks and the merge.

A checkpoint written with checkpoint_format=sharded (training/sharded_checkpoint.py) is a
directory step_*/ holding
  shards/shard-NNNNN-model-00001-of-00001.safetensors
                 one file per rank that held tensors (NNNNN: rank + 1), written by torch's
                 distributed checkpoint (DCP) HuggingFaceStorageWriter: that rank's pieces of
                 the online weights ("model.<name>"), the EMA ("ema.<name>") and the optimizer
                 tensors ("optim.<name>.exp_avg", ...). Its safetensors metadata
                 "DCP_SHARDING_INFO" (JSON) gives each piece's offsets in the full tensor.
  shards.json    the shard files with the SHA-256 of each, and the run config (YAML)
  state.safetensors, state.json
                 the rest of the resumable state as in the full layout (statefile.py): step,
                 optimizer param_groups, RNG and data-stream states; state.json, written last,
                 records the SHA-256 of state.safetensors, shards.json and config.yaml
  config.yaml    the run config, for people
Safetensors and JSON only: nothing is pickled (DCP's default writer pickles a `.metadata`
file; this layout has none: the piece offsets in each shard's header are the metadata).

Checks before any tensor is read (`inspect_sharded`): shards.json parses and lists exactly the
files in shards/, every shard is a whole safetensors file (io.weights.read_header), every
piece lies inside its tensor, pieces of one tensor agree on dtype, never overlap and cover it
whole. A missing shard would otherwise load as a tensor with a hole. `verify_shards` hashes
files against shards.json (bit rot, an edit, a copy cut short).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resforce.io.weights import DamagedFileError, read_header, sha256_of

SHARDS = "shards"
MANIFEST = "shards.json"
FORMAT = "resforce-shards-1"
SHARD_FILE = re.compile(r"^shard-(\d{5})-model-\d{5}-of-\d{5}\.safetensors$")
SHARDING_KEY = "DCP_SHARDING_INFO"
"""The safetensors metadata key under which DCP's writer records each piece's offsets."""
GROUPS = ("model", "ema", "optim")
"""The top-level keys of the sharded state dict: online weights, EMA, optimizer tensors."""
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}


class ShardedCheckpointError(DamagedFileError):
    """A sharded checkpoint is incomplete or damaged; the message names the file."""


@dataclass
class Piece:
    file: Path
    offsets: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass
class ShardedTensor:
    dtype: str
    """safetensors dtype name (F32, BF16, ...)."""
    size: tuple[int, ...] = ()
    pieces: list[Piece] = field(default_factory=list)


@dataclass
class ShardedCheckpoint:
    directory: Path
    world_size: int
    """Ranks that wrote it."""
    sha256: dict[str, str]
    """shard file name -> SHA-256 (hex)."""
    config_yaml: str
    tensors: dict[str, ShardedTensor]
    """Flat key ("model.blocks.0.attn1.to_q.weight", "optim.<name>.exp_avg") -> its pieces."""

    def shapes(self, group: str) -> dict[str, tuple[int, ...]]:
        """name -> full shape of the tensors of `group` ("model", "ema", "optim")."""
        prefix = group + "."
        return {k[len(prefix):]: t.size for k, t in self.tensors.items() if k.startswith(prefix)}


def is_sharded(ckpt_dir: str | Path) -> bool:
    """Whether a checkpoint directory has the sharded layout (whole or not)."""
    d = Path(ckpt_dir)
    return (d / MANIFEST).is_file() or (d / SHARDS).is_dir()


def sharded_checkpoint_of(path: str | Path) -> Path | None:
    """The sharded checkpoint `path` names (a run directory: its latest checkpoint; a checkpoint
    directory), or None when it names a full checkpoint, a weights file or nothing."""
    from resforce.io.weights import CKPT_DIR, latest_checkpoint

    p = Path(path)
    if p.is_dir() and (p / CKPT_DIR).is_dir():
        p = latest_checkpoint(p) or p
    return p if p.is_dir() and is_sharded(p) else None


def manifest(sha256: dict[str, str], world_size: int, config_yaml: str) -> dict:
    """The shards.json document (the caller writes it atomically)."""
    return {"format": FORMAT, "world_size": world_size, "sha256": dict(sorted(sha256.items())),
            "config": config_yaml}


def read_manifest(ckpt_dir: str | Path) -> tuple[int, dict[str, str], str]:
    """(world size, shard file -> SHA-256, config YAML) of shards.json, checked against the
    files in shards/: ShardedCheckpointError naming the file unless they are the same set."""
    d = Path(ckpt_dir)
    path = d / MANIFEST
    if not path.is_file():
        raise ShardedCheckpointError(f"{path} is missing (a sharded checkpoint lists its shards there)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardedCheckpointError(f"{path} is not valid JSON ({e}); expected a {FORMAT} document") from None
    sums = doc.get("sha256") if isinstance(doc, dict) else None
    if (not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(sums, dict) or not sums
            or not isinstance(doc.get("config"), str) or not isinstance(doc.get("world_size"), int)):
        raise ShardedCheckpointError(f"{path} is not a resforce shard list (expected \"format\": \"{FORMAT}\", "
                                     f"\"world_size\", \"sha256\" and \"config\")")
    bad = [n for n, s in sums.items() if not SHARD_FILE.match(str(n)) or not isinstance(s, str)]
    if bad:
        raise ShardedCheckpointError(f"{path}: {bad[0]!r} is not a shard file name with its SHA-256")
    folder = d / SHARDS
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    missing, extra = sorted(set(sums) - present), sorted(present - set(sums))
    if missing:
        raise ShardedCheckpointError(f"{folder / missing[0]} is missing ({len(missing)} of the {len(sums)} shards "
                                     f"listed in {MANIFEST})")
    if extra:
        raise ShardedCheckpointError(f"{folder / extra[0]} is not listed in {path} (a shard of another save?)")
    return doc["world_size"], sums, doc["config"]


def inspect_sharded(ckpt_dir: str | Path) -> ShardedCheckpoint:
    """The shard list and every tensor's pieces, all checks of the module doc done (file
    hashes aside: verify_shards) and no tensor read."""
    d = Path(ckpt_dir)
    world, sums, config_yaml = read_manifest(d)
    tensors: dict[str, ShardedTensor] = {}
    for name in sums:
        path = d / SHARDS / name
        header = read_header(path)  # DamagedFileError naming the file: truncated, padded, not safetensors
        try:
            info = json.loads(header.metadata[SHARDING_KEY])
            for key, (dtype, shape) in header.tensors.items():
                if key.partition(".")[0] not in GROUPS:
                    raise ValueError(f"{key} belongs to none of {', '.join(GROUPS)}")
                offsets = tuple(int(o) for o in info[key]["saved_offsets"])
                if len(offsets) != len(shape) or any(o < 0 for o in offsets):
                    raise ValueError(f"{key}: offsets {list(offsets)} for shape {list(shape)}")
                t = tensors.setdefault(key, ShardedTensor(dtype))
                if t.dtype != dtype:
                    raise ValueError(f"{key} is {dtype} here, {t.dtype} in another shard")
                t.pieces.append(Piece(path, offsets, shape))
        except (KeyError, TypeError, ValueError) as e:
            raise ShardedCheckpointError(f"{path}: its {SHARDING_KEY} metadata does not describe its tensors "
                                         f"({type(e).__name__}: {e})") from None
    for key, t in tensors.items():
        ndim = len(t.pieces[0].shape)
        if any(len(p.shape) != ndim for p in t.pieces) or t.dtype not in TORCH_DTYPES:
            raise ShardedCheckpointError(f"{d}: tensor {key} has pieces of different ranks, or dtype {t.dtype}")
        t.size = tuple(max(p.offsets[i] + p.shape[i] for p in t.pieces) for i in range(ndim))
        _check_cover(key, t, d)
    return ShardedCheckpoint(d, world, sums, config_yaml, tensors)


def _check_cover(key: str, t: ShardedTensor, d: Path) -> None:
    """The pieces of a tensor tile it: no two overlap and their elements add up to its own."""
    boxes = [p for p in t.pieces if math.prod(p.shape) > 0]
    for i, a in enumerate(boxes):  # pairwise: as many pieces as ranks that wrote the tensor
        for b in boxes[i + 1:]:
            if all(ao < bo + bs and bo < ao + as_ for ao, as_, bo, bs in zip(a.offsets, a.shape, b.offsets, b.shape)):
                raise ShardedCheckpointError(f"{d}: tensor {key} has overlapping pieces in {a.file.name} and "
                                             f"{b.file.name}")
    if sum(math.prod(p.shape) for p in boxes) != math.prod(t.size):
        raise ShardedCheckpointError(f"{d}: the shards hold only part of tensor {key} {list(t.size)} "
                                     f"(a shard is missing or was replaced)")


def verify_shards(ckpt_dir: str | Path, sha256: dict[str, str], names=None) -> None:
    """ShardedCheckpointError naming the file unless each shard file in `names` (default: all)
    hashes to its SHA-256 in shards.json (`sha256`, as read_manifest returns it)."""
    for name in sorted(sha256) if names is None else names:
        path = Path(ckpt_dir) / SHARDS / name
        got, want = sha256_of(path), sha256[name]
        if got != want:
            raise ShardedCheckpointError(f"{path} fails its checksum: SHA-256 {got[:16]}..., {MANIFEST} recorded "
                                         f"{want[:16]}... (bit rot or an edit since it was written)")


def verify_manifest(ckpt_dir: str | Path) -> None:
    """ShardedCheckpointError unless shards.json hashes to the SHA-256 state.json recorded
    for it (state.json is written last: it vouches for shards.json, which vouches for each
    shard)."""
    d = Path(ckpt_dir)
    try:
        want = json.loads((d / "state.json").read_text(encoding="utf-8"))["sha256"][MANIFEST]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ShardedCheckpointError(f"{d / 'state.json'} is missing or does not record the SHA-256 of "
                                     f"{MANIFEST} (the save did not finish)") from None
    got = sha256_of(d / MANIFEST)
    if got != want:
        raise ShardedCheckpointError(f"{d / MANIFEST} fails its checksum: SHA-256 {got[:16]}..., state.json "
                                     f"recorded {str(want)[:16]}... (bit rot or an edit since it was written)")


def read_group(ckpt: ShardedCheckpoint, group: str) -> dict[str, torch.Tensor]:
    """The full tensors of `group` ("model", "ema" or "optim"), assembled from their pieces on
    the CPU in this process: the full group in memory, one piece read at a time. Verify the
    shards first (verify_shards)."""
    from safetensors import safe_open

    prefix = group + "."
    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, Piece]]] = {}
    for key, t in ckpt.tensors.items():
        if key.startswith(prefix):
            out[key[len(prefix):]] = torch.empty(t.size, dtype=TORCH_DTYPES[t.dtype])
            for p in t.pieces:
                by_file.setdefault(p.file, []).append((key, p))
    for path, pieces in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for key, p in pieces:
                where = tuple(slice(o, o + s) for o, s in zip(p.offsets, p.shape))
                out[key[len(prefix):]][where] = f.get_tensor(key)
    return out




def read_sharded_weights(ckpt_dir: str | Path, prefer_ema: bool = True):
    """(EMA or online state dict, config YAML, TrainConfig) of a sharded checkpoint, merged in
    this process.
    Checked like a weights file (io.weights: the config parses, its sizes are within limits,
    the tensors' names and shapes are the model's) before any tensor is read, and every shard
    it reads is verified against its SHA-256 (ShardedCheckpointError naming a damaged one)."""
    from resforce.io.weights import WeightsHeader, check_header_fits, config_of_weights

    verify_manifest(ckpt_dir)
    ckpt = inspect_sharded(ckpt_dir)
    group = "ema" if prefer_ema else "model"
    prefix = group + "."
    mine = {k[len(prefix):]: t for k, t in ckpt.tensors.items() if k.startswith(prefix)}
    header = WeightsHeader(ckpt.directory, {k: (t.dtype, t.size) for k, t in mine.items()},
                           {"config": ckpt.config_yaml}, 0, sum(math.prod(t.size) * TORCH_DTYPES[t.dtype].itemsize
                                                               for t in mine.values()))
    cfg = config_of_weights(header)
    check_header_fits(header, cfg)
    verify_shards(ckpt_dir, ckpt.sha256, sorted({p.file.name for t in mine.values() for p in t.pieces}))
    return read_group(ckpt, group), ckpt.config_yaml, cfg
