"""3D rotary position embedding, laid out like Wan2.1 (diffusers' WanRotaryPosEmbed).

The head dimension is split over (time, height, width): h and w get 2 * (head_dim // 6)
each, time gets the rest. Rotation acts on interleaved pairs (x[2i], x[2i+1]), as Wan's
complex-number formulation does. Angles are computed on the fly in float64 for any
position, so there is no fixed table and a cached rollout at frame 5000 gets exactly the
rotation a full pass would give it.
"""

from __future__ import annotations

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) slices of the head dimension, Wan's split."""
    if head_dim % 2:
        raise ValueError(f"attention head_dim must be even for RoPE, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _inv_freq(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


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
        [pos[:, a:a + 1] * _inv_freq(d, theta).to(pos.device)[None]
         for a, d in enumerate(axis_dims(head_dim))],
        dim=-1,
    )
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., tokens, head_dim) by interleaved pairs."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)
