"""Training state as data only: tensors in a safetensors file, everything else in JSON.

A resumable state (optimizer state dict, step, RNG generator states, data-stream positions) is
a tree of dicts, lists, tuples, numbers, strings, None and tensors. `save_state` splits it:
every tensor goes into `<name>.safetensors` under the path that leads to it
("optimizer/state/0/exp_avg"), and the tree itself goes into `<name>.json` with each tensor
replaced by {"__tensor__": path}. Dicts whose keys are not all plain strings (the optimizer
numbers its parameters) and tuples are tagged, so `load_state` returns the tree that was
saved, key types and all. Nothing is pickled, so reading a state can never run code: the
worst a crafted file can do is fail to parse, which raises StateFileError naming the file.

Python's json writes floats with repr (exact round trip) and arbitrary-size ints (numpy's
128-bit PCG64 state) as they are; NaN and inf use JSON's common NaN/Infinity extension.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from resforce.io.fileio import atomic_write
from resforce.io.weights import DamagedFileError, read_header, sha256_of

FORMAT = "resforce-state-1"
SHA256 = "sha256"
"""Key of state.json's map file name -> SHA-256 (hex) of the checkpoint's files."""
TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"
_SCALARS = (bool, int, float, str, type(None))


class StateFileError(DamagedFileError):
    """A state file is missing, damaged or not a resforce state; the message names the file."""


def _encode(obj, path: str, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {TENSOR: path}
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        bad = [k for k in obj if not isinstance(k, _SCALARS)]
        if bad:
            raise TypeError(f"state at {path or '/'}: dict key {bad[0]!r} is not a number or string")
        return {ITEMS: [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {TUPLE: items} if isinstance(obj, tuple) else items
    raise TypeError(f"state at {path or '/'}: a {type(obj).__name__} is not data "
                    f"(expected tensors, numbers, strings, None, lists, tuples or dicts)")


def _decode(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {TENSOR}:
        return tensors[node[TENSOR]]
    if set(node) == {TUPLE}:
        return tuple(_decode(v, tensors) for v in node[TUPLE])
    if set(node) == {ITEMS}:
        return {k: _decode(v, tensors) for k, v in node[ITEMS]}
    return {k: _decode(v, tensors) for k, v in node.items()}


def split_state(state) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-able tree, tensors by path) of a state; TypeError naming the path of anything
    that is not data."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    return tree, tensors


def join_state(tree, tensors: dict[str, torch.Tensor]):
    """Inverse of split_state."""
    return _decode(tree, tensors)


def check_safetensors_file(path: str | os.PathLike) -> None:
    """StateFileError naming `path` unless it is a whole safetensors file (io.weights.read_header)."""
    try:
        read_header(path)
    except DamagedFileError as e:
        raise StateFileError(str(e)) from None


def state_paths(directory: str | os.PathLike, name: str = "state") -> tuple[Path, Path]:
    d = Path(directory)
    return d / f"{name}.json", d / f"{name}.safetensors"


def save_state(directory: str | os.PathLike, state, name: str = "state", checksum: tuple[str, ...] = ()) -> None:
    """Write `state` as <name>.safetensors + <name>.json into `directory` (atomically, durably).
    The JSON, written last, records the SHA-256 of <name>.safetensors and of the files named
    in `checksum` (already written into `directory`) under "sha256"."""
    tree, tensors = split_state(state)
    json_path, tensor_path = state_paths(directory, name)
    atomic_write(tensor_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    sums = {f: sha256_of(Path(directory) / f) for f in (*checksum, tensor_path.name)}
    text = json.dumps({"format": FORMAT, SHA256: sums, "state": tree}, indent=1)
    atomic_write(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def verify_checksums(directory: str | os.PathLike, name: str = "state") -> int:
    """StateFileError naming the file if a file listed in <name>.json's "sha256" is missing or
    hashes to another value (bit rot, an edit, a copy cut short); the number of files checked
    (0 for states written before checksums, and for a JSON that does not parse: load_state
    reports that)."""
    json_path = state_paths(directory, name)[0]
    try:
        sums = json.loads(json_path.read_text(encoding="utf-8")).get(SHA256) or {}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return 0
    if not isinstance(sums, dict):
        raise StateFileError(f"{json_path}: \"{SHA256}\" is not a map of file name to SHA-256")
    for file, want in sums.items():
        path = Path(directory) / str(file)
        if "/" in str(file) or not path.is_file():
            raise StateFileError(f"{path} is missing (its SHA-256 is recorded in {json_path.name})")
        if path.suffix == ".safetensors":
            check_safetensors_file(path)  # a truncation says so, with the sizes
        got = sha256_of(path)
        if got != want:
            raise StateFileError(f"{path} fails its checksum: SHA-256 {got[:16]}..., {json_path.name} recorded "
                                 f"{str(want)[:16]}... (bit rot or an edit since it was written)")
    return len(sums)


def load_state(directory: str | os.PathLike, name: str = "state"):
    """The state saved by save_state; StateFileError naming the file if it is missing or damaged."""
    json_path, tensor_path = state_paths(directory, name)
    for p in (json_path, tensor_path):
        if not p.is_file():
            raise StateFileError(f"{p} is missing")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFileError(f"{json_path} is not valid JSON ({e}); expected a {FORMAT} document") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise StateFileError(f"{json_path} is not a resforce state file (expected \"format\": \"{FORMAT}\")")
    check_safetensors_file(tensor_path)
    tensors = load_file(str(tensor_path), device="cpu")  # never a GPU: the trainer places them
    try:
        return join_state(doc["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise StateFileError(f"{json_path} does not match {tensor_path.name}: {type(e).__name__} {e}") from None
