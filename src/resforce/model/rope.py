"""3D rotary position embedding, laid out like Wan2.1 (diffusers' WanRotaryPosEmbed).

The head dimension is split over (time, height, width): h and w get 2 * (head_dim // 6)
each, time gets the rest. Rotation acts on interleaved pairs (x[2i], x[2i+1]), as Wan's
complex-number formulation does. Angles are computed in float64 for any position, so a
cached rollout at frame 5000 gets exactly the rotation a full pass would give it.

`rope_cos_sin` is the reference: it computes the angles of given positions on each call.
`RopeTables` is what the model uses: per-axis cos/sin tables built on the model's device and
kept (grown by doubling when a later frame needs them), so a rollout's per-chunk call is a
slice and a broadcast, with no host-to-device copy (which is a host sync on CUDA). Rows of
the tables are the same float64 products as the reference's, so they agree exactly.
"""

from __future__ import annotations

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) slices of the head dimension, Wan's split."""
    if head_dim % 2:
        raise ValueError(f"attention head_dim must be even for RoPE, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _inv_freq(dim: int, theta: float, device=None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))


def grid_positions(frames: int, height: int, width: int, frame_offset: int = 0,
                   device=None) -> torch.Tensor:
    """Positions (frames*height*width, 3) of a token grid in (f, h, w) raster order."""
    f = torch.arange(frame_offset, frame_offset + frames, device=device)
    h = torch.arange(height, device=device)
    w = torch.arange(width, device=device)
    grid = torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0,
                 dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (tokens, head_dim // 2) for integer positions (tokens, 3)."""
    pos = positions.to(torch.float64)
    angles = torch.cat(
        [pos[:, a:a + 1] * _inv_freq(d, theta, pos.device)[None]
         for a, d in enumerate(axis_dims(head_dim))],
        dim=-1,
    )
    return angles.cos().to(dtype), angles.sin().to(dtype)


class RopeTables:
    """cos/sin of every axis for positions [0, n), float32, per device; `grid` returns the
    (tokens, head_dim // 2) cos/sin of a token grid, equal to rope_cos_sin(grid_positions(...)).

    The frame table grows (doubling) as a rollout goes on; a grow is O(log frames) rebuilds in
    a whole rollout, each computed on the device. Plain attribute of the model, not a buffer:
    nothing of it is saved."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        self.dims = axis_dims(head_dim)
        self.theta = theta
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.builds = 0
        """Tables built so far (a test counts them: a rollout must not build one per chunk)."""

    def _axis(self, axis: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (axis, device)
        table = self._tables.get(key)
        if table is None or table[0].shape[0] < n:
            size = max(n, 2 * (0 if table is None else table[0].shape[0]), 16)
            pos = torch.arange(size, dtype=torch.float64, device=device)[:, None]
            angles = pos * _inv_freq(self.dims[axis], self.theta, device)[None]
            table = self._tables[key] = (angles.cos().float(), angles.sin().float())
            self.builds += 1
        return table

    def grid(self, frames: int, height: int, width: int, frame_offset: int = 0,
             device=None) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device("cpu") if device is None else torch.device(device)
        spans = ((frame_offset, frames), (0, height), (0, width))
        shape = (frames, height, width)
        cos, sin = [], []
        for axis, (start, count) in enumerate(spans):
            c, s = self._axis(axis, start + count, device)
            view = [1, 1, 1, -1]
            view[axis] = count
            cos.append(c[start:start + count].view(view).expand(*shape, -1))
            sin.append(s[start:start + count].view(view).expand(*shape, -1))
        d = sum(self.dims) // 2
        return torch.cat(cos, -1).reshape(-1, d), torch.cat(sin, -1).reshape(-1, d)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., tokens, head_dim) by interleaved pairs."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)
