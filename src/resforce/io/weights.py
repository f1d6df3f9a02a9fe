"""Self-contained weight files: one safetensors file whose metadata carries the run config.

Writing (`save_weights`): atomic, and the metadata records the SHA-256 of the tensor data
("data_sha256"), so bit rot or an edit of any tensor byte is caught when the file is read.

Reading a file someone handed us is checked before it costs anything:
  1. its safetensors header (at most MAX_HEADER_BYTES) parses, every tensor's byte range is
     exactly dtype x shape, the ranges tile the data section and the file is as long as the
     header says (a truncated or padded file is refused without reading its tensors);
  2. the data's SHA-256 matches the one in the metadata (files written before it was
     recorded are read unverified);
  3. the config in the metadata parses (an `error:` naming the file otherwise), its model
     sizes are within MODEL_LIMITS, and the header has as many blocks as model.num_layers;
  4. the names and shapes of the model that config describes (built on the meta device: no
     memory) equal the header's, so the bytes the config implies are the file's bytes;
only then are the tensors read and the model built. A crafted 200-byte file that claims 60,000
layers is refused at step 3 with an `error:` line, before any allocation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from resforce.model.lora import base_names, has_adapters, is_adapter, merge_lora_state_dict
from safetensors.torch import load_file, save_file

from resforce.io.fileio import atomic_write

CKPT_DIR = "checkpoints"
STEP_DIR = re.compile(r"^step_(\d+)$")
MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors' own limit on a header."""
SHA_KEY = "data_sha256"
_SHA_PLACEHOLDER = "0" * 64
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MODEL_LIMITS = {"num_layers": 256, "num_attention_heads": 256, "attention_head_dim": 1024, "ffn_dim": 131072,
                "in_channels": 1024, "out_channels": 1024, "freq_dim": 65536, "text_dim": 65536,
                "frames_per_chunk": 1024}
"""Largest model.* sizes a weights file's config may claim (Wan2.1-14B: 40 layers, 40 heads of
128, ffn 13824): a larger claim is refused before anything is built."""
_HASH_BLOCK = 8 * 1024 * 1024


class DamagedFileError(ValueError):
    """A file is truncated, damaged, or fails its checksum; the message names the file."""


class WeightsMismatch(ValueError):
    """A sound weights file of another model than the config describes (names or shapes)."""


class ShardedRunError(ValueError):
    """Weights were asked of a sharded checkpoint, which only `resforce export` reads; the
    message names the command."""


@dataclass
class WeightsHeader:
    path: Path
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    """name -> (safetensors dtype, shape)."""
    metadata: dict[str, str]
    data_start: int
    data_bytes: int


# ----------------------------------------------------------------------------- header
def read_header(path: str | Path) -> WeightsHeader:
    """The header of a safetensors file, checked against the file without reading a tensor:
    DamagedFileError naming `path` unless it is a whole, consistent safetensors file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise DamagedFileError(f"{path} is truncated or not a safetensors file: {size} bytes, "
                                   f"too short for the header it announces")
        if n > MAX_HEADER_BYTES:
            raise DamagedFileError(f"{path}: its safetensors header claims {n} bytes; at most {MAX_HEADER_BYTES} "
                                   f"expected")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise TypeError("not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise TypeError("__metadata__ is not a map of strings")
        tensors, spans = {}, []
        for name, v in header.items():
            dtype, shape, (start, end) = v["dtype"], tuple(int(s) for s in v["shape"]), v["data_offsets"]
            if dtype not in DTYPE_BYTES or any(s < 0 for s in shape) or not (isinstance(start, int)
                                                                             and isinstance(end, int)):
                raise ValueError(f"tensor {name!r}: dtype {dtype!r}, shape {list(shape)}")
            if end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
                raise ValueError(f"tensor {name!r}: {end - start} bytes for {dtype} {list(shape)}")
            tensors[name] = (dtype, shape)
            spans.append((start, end))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
        raise DamagedFileError(f"{path} has a damaged safetensors header ({e})") from None
    spans.sort()
    pos = 0
    for start, end in spans:
        if start != pos:
            raise DamagedFileError(f"{path} has a damaged safetensors header (tensor data overlaps or leaves a gap "
                                   f"at byte {pos})")
        pos = end
    if size != 8 + n + pos:
        raise DamagedFileError(f"{path} is truncated or damaged: its header promises {8 + n + pos} "
                               f"bytes, the file has {size}")
    return WeightsHeader(path, tensors, meta, 8 + n, pos)


def check_safetensors_file(path: str | Path) -> None:
    """DamagedFileError naming `path` unless it is a whole safetensors file."""
    read_header(path)


def sha256_of(path: str | Path, start: int = 0) -> str:
    """SHA-256 (hex) of a file's bytes from `start` on, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def verify_checksum(header: WeightsHeader) -> None:
    """DamagedFileError unless the tensor data hashes to the metadata's data_sha256 (if any)."""
    want = header.metadata.get(SHA_KEY)
    if want is None:
        return
    got = sha256_of(header.path, header.data_start)
    if got != want:
        raise DamagedFileError(f"{header.path} fails its checksum: the tensor data's SHA-256 is {got[:16]}..., its "
                               f"metadata recorded {want[:16]}... (bit rot or an edit since it was written)")


# ----------------------------------------------------------------------------- writing / reading
def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], config_yaml: str) -> None:
    """One safetensors file with the config and the SHA-256 of its tensor data in its metadata,
    written atomically."""
    tensors = _contiguous(state_dict)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata={"config": config_yaml, "format": "resforce", SHA_KEY: _SHA_PLACEHOLDER})
        # the data's hash goes into the header in place: same length, so no offset moves
        n = int.from_bytes(_head(tmp), "little")
        digest = sha256_of(tmp, 8 + n)
        with open(tmp, "r+b") as f:
            f.seek(8)
            raw = f.read(n)
            marker = f'"{SHA_KEY}":"{_SHA_PLACEHOLDER}"'.encode()
            at = raw.find(marker)
            if at < 0 or raw.find(marker, at + 1) >= 0:
                raise RuntimeError(f"{tmp}: cannot place the checksum in the safetensors header")
            f.seek(8 + at + len(marker) - 65)
            f.write(digest.encode())

    atomic_write(path, write)


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state_dict, config YAML or None) of a safetensors file; DamagedFileError naming it if it
    is truncated, damaged or fails its checksum."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    header = read_header(path)
    verify_checksum(header)
    return load_file(str(path), device="cpu"), header.metadata.get("config")  # memory-mapped, CPU on every rank


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


def _shape(v) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v[1] if isinstance(v, tuple) and len(v) == 2
                                                           and isinstance(v[0], str) else v)


def check_fits(source: str | Path, sd: dict, expected: dict, error=WeightsMismatch) -> None:
    """`error` naming `source` unless `sd` has exactly the tensor names and shapes of `expected`
    (values: tensors, shapes, or a header's (dtype, shape))."""
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and _shape(sd[k]) != _shape(expected[k])]
    if not (missing or extra or wrong):
        return
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} tensor(s) of another shape, e.g. {k}: {_shape(sd[k])} there, "
                     f"{_shape(expected[k])} expected by this config")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
    raise error(f"{source} holds another model than the config describes (model.*): " + "; ".join(parts))


# ----------------------------------------------------------------------------- runs
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
    from resforce.io.sharded_weights import is_sharded

    if is_sharded(p):  # one file per rank, each a piece of every tensor: nothing here reads that
        raise ShardedRunError(f"{p} is a sharded checkpoint (checkpoint_format: sharded): its weights are split "
                              f"over one file per rank. Merge them into one weights file first: resforce export "
                              f"{path} --out FILE.safetensors (add --dtype float32 for full precision), then "
                              f"pass FILE.safetensors")
    raise FileNotFoundError(f"{p} holds neither a checkpoint nor {name}")


# ----------------------------------------------------------------------------- checked loading
def config_of_weights(header: WeightsHeader):
    """The TrainConfig in a weights file's metadata; ValueError naming the file if it is
    missing, not YAML, or not a valid config."""
    import yaml

    from resforce.config import config_from_yaml

    text = header.metadata.get("config")
    if text is None:
        raise ValueError(f"{header.path} carries no resforce config in its metadata")
    try:
        return config_from_yaml(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{header.path}: the config in its metadata is not valid YAML ({first})") from None
    except Exception as e:  # noqa: BLE001 - ConfigError, omegaconf's errors: one line naming the key
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        key = getattr(e, "full_key", None)
        if isinstance(e, ValueError) or key:
            raise ValueError(f"{header.path}: the config in its metadata is not valid: {first}"
                             + (f" (key: {key})" if key else "")) from None
        # omegaconf's own errors on odd YAML (tags, non-mapping documents)
        raise ValueError(f"{header.path}: the config in its metadata is not a resforce config ({first})") from None


def check_model_limits(model_cfg, source) -> None:
    """ValueError naming `source` and the key if a model size exceeds MODEL_LIMITS."""
    for key, most in MODEL_LIMITS.items():
        value = getattr(model_cfg, key, None)
        if isinstance(value, int) and value > most:
            raise ValueError(f"{source}: model.{key}={value} in its config; at most {most} expected "
                             f"(a larger model is not one resforce can have written)")
    for p in getattr(model_cfg, "patch_size", ()):
        if p > 64:
            raise ValueError(f"{source}: model.patch_size={list(model_cfg.patch_size)} in its config; at most 64 "
                             f"expected per axis")


def expected_tensors(model_cfg) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict of the model `model_cfg` describes, without memory
    (built on the meta device)."""
    from resforce.model.dit import CausalVideoDiT

    with torch.device("meta"):
        model = CausalVideoDiT(model_cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_header_fits(header: WeightsHeader, cfg) -> None:
    """WeightsMismatch naming the file unless its header holds exactly the tensors (names,
    shapes and so bytes) that `cfg` implies; the cheap counts first, so a config that claims
    a huge model is refused before even its meta model is built."""
    check_model_limits(cfg.model, header.path)
    blocks = {int(m.group(1)) for k in header.tensors if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if len(blocks) != cfg.model.num_layers:
        raise WeightsMismatch(f"{header.path}: its config says model.num_layers={cfg.model.num_layers}, its tensors "
                              f"hold {len(blocks)} block(s); expected the same")
    expected = expected_tensors(cfg.model)
    tensors, adapters = header.tensors, {}
    if has_adapters(tensors):  # a LoRA run: peft's base_layer names plus lora_A / lora_B of its rank
        adapters = {k: v for k, v in tensors.items() if is_adapter(k)}
        bad = [k for k, (_, s) in adapters.items() if len(s) != 2 or cfg.lora.rank not in s]
        if bad:
            raise WeightsMismatch(f"{header.path}: adapter {bad[0]} {adapters[bad[0]][1]} does not have the "
                                  f"config's lora.rank={cfg.lora.rank}")
        tensors = base_names(tensors)
    check_fits(header.path, tensors, expected)
    implied = sum(math.prod(s) * DTYPE_BYTES[tensors[k][0]] for k, s in expected.items())
    implied += sum(math.prod(s) * DTYPE_BYTES[d] for d, s in adapters.values())
    if implied != header.data_bytes:  # names and shapes match, so only a header bug gets here
        raise WeightsMismatch(f"{header.path}: its config implies {implied} bytes of tensors, the file holds "
                              f"{header.data_bytes}")


def inspect_weights(path: str | Path, prefer_ema: bool = True):
    """(weights file, its header, its TrainConfig), every check of the module doc done and no
    tensor read."""
    weights = resolve_weights(path, prefer_ema)
    header = read_header(weights)
    cfg = config_of_weights(header)
    check_header_fits(header, cfg)
    return weights, header, cfg


def load_model(path: str | Path, device="cpu", prefer_ema: bool = True):
    """(model in eval mode, TrainConfig) from a run dir, checkpoint dir or weights file."""
    from resforce.model.dit import CausalVideoDiT

    weights, header, cfg = inspect_weights(path, prefer_ema)
    verify_checksum(header)
    sd = load_file(str(weights), device="cpu")
    bad = first_nonfinite(sd)
    if bad is not None:
        raise ValueError(f"{weights} holds NaN or inf (tensor {bad}): the run diverged; "
                         f"use an earlier checkpoint")
    if has_adapters(sd):  # a LoRA run: its adapters folded into the base weights
        sd = merge_lora_state_dict(sd, cfg.lora)
    model = CausalVideoDiT(cfg.model)
    check_fits(weights, sd, model.state_dict())
    model.load_state_dict(sd)
    return model.to(device).eval(), cfg
