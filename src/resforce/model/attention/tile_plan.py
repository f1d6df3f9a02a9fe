"""Tile planning of chunked attention: the allowed part of a (Qc, Kc) chunk mask cut into
rectangular tiles, tiles of one shape in arithmetic progression grouped into one batched
kernel call (see chunked.py for the method). Planning reads the mask on the host."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch


# ----------------------------------------------------------------------------- tiling
@dataclass(frozen=True)
class TileCall:
    """`count` tiles of nq x nk chunks in one kernel call: tile r covers query chunks
    [q0 + r*q_step, +nq) and key chunks [k0 + r*k_step, +nk). Tiles of one call never share
    a query chunk or a key chunk (so their outputs and key gradients write disjoint rows)."""

    q0: int
    k0: int
    nq: int
    nk: int
    count: int = 1
    q_step: int = 0
    k_step: int = 0
    fresh: bool = False
    """No query chunk of this call was written by an earlier call: its outputs are stored,
    not merged."""


def _quadtree(mask: np.ndarray, r0: int, c0: int, size: int, out: list) -> None:
    """Append (q0, k0, nq, nk) for every fully allowed quadtree node (clipped to the mask)."""
    block = mask[r0:r0 + size, c0:c0 + size]
    if block.size == 0 or not block.any():
        return
    if block.all():
        out.append((r0, c0, block.shape[0], block.shape[1]))
        return
    half = size // 2
    for dr in (0, half):
        for dc in (0, half):
            _quadtree(mask, r0 + dr, c0 + dc, half, out)


def _progressions(tiles: list) -> list[tuple]:
    """Split same-shape tiles (sorted) into runs whose query and key starts both advance by
    a constant step of at least the tile size: each run is one batched kernel call."""
    nq, nk = tiles[0][2], tiles[0][3]
    left = list(tiles)
    runs = []
    while left:
        first = left.pop(0)
        run = [first]
        second = next((t for t in left if t[0] >= first[0] + nq and t[1] >= first[1] + nk), None)
        if second is not None:
            dq, dk = second[0] - first[0], second[1] - first[1]
            members = set(left)
            nxt = (first[0] + dq, first[1] + dk, nq, nk)
            while nxt in members:
                run.append(nxt)
                members.discard(nxt)
                nxt = (nxt[0] + dq, nxt[1] + dk, nq, nk)
            left = [t for t in left if t in members]
            runs.append((first[0], first[1], nq, nk, len(run), dq, dk))
        else:
            runs.append((first[0], first[1], nq, nk, 1, 0, 0))
    return runs


@functools.lru_cache(maxsize=256)
def _plan_cached(mask_bytes: bytes, rows: int, cols: int) -> tuple[TileCall, ...]:
    # numpy, not torch: planning must read real values even under FakeTensorMode
    mask = np.frombuffer(mask_bytes, dtype=np.bool_).reshape(rows, cols)
    empty = np.flatnonzero(~mask.any(1)).tolist()
    if empty:
        raise ValueError(f"chunk mask row(s) {empty} allow no key chunk: softmax over no keys "
                         "is undefined; every query chunk must see at least one key chunk")
    size = 1  # the quadtree's root: the mask padded to a power of two
    while size < max(rows, cols):
        size *= 2
    tiles: list = []
    _quadtree(mask, 0, 0, size, tiles)
    by_shape: dict = {}
    for t in sorted(tiles):
        by_shape.setdefault((t[2], t[3]), []).append(t)
    calls, written = [], set()
    # largest tiles first: most query chunks get their first (stored, not merged) output there
    for shape in sorted(by_shape, key=lambda s: -s[0] * s[1]):
        for q0, k0, nq, nk, count, dq, dk in _progressions(by_shape[shape]):
            chunks = {q0 + r * dq + i for r in range(count) for i in range(nq)}
            calls.append(TileCall(q0, k0, nq, nk, count, dq, dk, fresh=not (chunks & written)))
            written |= chunks
    return tuple(calls)


def plan_tiles(chunk_mask: torch.Tensor) -> tuple[TileCall, ...]:
    """The kernel calls that cover exactly the True entries of a (Qc, Kc) chunk mask.

    The mask must be a real CPU tensor: it is tiny, and planning reads its values on the
    host (a CUDA mask would cost a device sync per call; a fake or meta one has no values).
    Build it with `host_chunk_mask` when a FakeTensorMode or meta device may be active."""
    if chunk_mask.dtype != torch.bool or chunk_mask.dim() != 2:
        raise ValueError(f"chunk_mask must be a 2-D bool tensor, got {chunk_mask.dtype} "
                         f"{tuple(chunk_mask.shape)}")
    if chunk_mask.device.type != "cpu" or is_fake(chunk_mask):
        raise ValueError("chunk_mask must be a real CPU tensor (planning reads its values on "
                         f"the host), got {type(chunk_mask).__name__} on {chunk_mask.device}; "
                         "build it with host_chunk_mask(...)")
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():  # .numpy() detaches: under FakeTensorMode that is fake
        m = np.ascontiguousarray(chunk_mask.numpy())
    return _plan_cached(m.tobytes(), m.shape[0], m.shape[1])


def host_chunk_mask(make, *args) -> torch.Tensor:
    """`make(*args, device="cpu")` as a real CPU tensor, even inside FakeTensorMode (e.g. a
    fake-tensor memory estimate) or a `torch.device("meta")` context."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return make(*args, device="cpu")


def is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)
