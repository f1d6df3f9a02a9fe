"""Rectified flow: noising, velocity targets, timestep samplers, the shifted Euler grid.

Convention (docs/method.md, notation): x_t = (1 - t) x + t eps, t = 1 is pure noise; the model
predicts v = eps - x; sampling integrates dx/dt = v from t = 1 down to 0.
Timesteps are per chunk: t has shape (B, chunks) and is broadcast over each chunk's frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch


def per_frame(t: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    """(B, chunks) -> (B, 1, F, 1, 1), broadcastable against a (B, C, F, H, W) video."""
    return t.repeat_interleave(frames_per_chunk, dim=1)[:, None, :, None, None]


def add_noise(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    tt = per_frame(t, frames_per_chunk).to(x.dtype)
    return (1 - tt) * x + tt * noise


def velocity_target(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x


def shift_timesteps(t: torch.Tensor | float, shift: float):
    """t -> s t / (1 + (s - 1) t). s > 1 pushes t toward noise, s < 1 toward clean."""
    return shift * t / (1 + (shift - 1) * t)


@dataclass
class TimestepSampler:
    """How training draws t in (0, 1)."""

    kind: str = "logit_normal"
    """'uniform' or 'logit_normal' (t = sigmoid(mean + std * n), n ~ N(0, 1))."""
    mean: float = 0.0
    """Mean of the logit-normal's normal draw."""
    std: float = 1.0
    """Std of the logit-normal's normal draw."""
    shift: float = 1.0
    """Shift t -> s t / (1 + (s - 1) t) applied after drawing (1.0 = none)."""

    def __post_init__(self):
        if self.kind not in ("uniform", "logit_normal"):
            raise ValueError(f"timestep sampler kind must be 'uniform' or 'logit_normal', got {self.kind!r}")
        if self.shift <= 0 or self.std < 0:
            raise ValueError(f"timestep sampler needs shift > 0 and std >= 0, got shift={self.shift}, std={self.std}")

    def __call__(self, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        if self.kind == "uniform":
            t = torch.rand(shape, generator=generator, device=device)
        else:
            n = torch.randn(shape, generator=generator, device=device)
            t = torch.sigmoid(self.mean + self.std * n)
        return shift_timesteps(t, self.shift) if self.shift != 1.0 else t


def euler_grid(steps: int, shift: float = 1.0, t_start: float = 1.0) -> list[float]:
    """steps + 1 decreasing times from t_start to 0, shifted by `shift` (Wan: 5.0 at inference).
    Python floats (float64), not a tensor: reading a grid tensor's values in the Euler loop would
    be a host sync per step on a GPU."""
    if steps < 1:
        raise ValueError(f"sampling needs steps >= 1, got {steps}")
    return [shift_timesteps(t_start * (steps - k) / steps, shift) for k in range(steps + 1)]


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(velocity_pair: VelocityFn, scale: float) -> VelocityFn:
    """Classifier-free guidance from ONE velocity call over the batch [x; x] (the conditional
    branch first, the unconditional second: one pass of batch 2B over one KV cache, not two
    passes over two caches): v = v_u + scale * (v_c - v_u)."""

    def v(x, t):
        v_c, v_u = velocity_pair(torch.cat([x, x]), torch.cat([t, t])).chunk(2)
        return v_u + scale * (v_c - v_u)

    return v


EulerSchedule = Iterable[tuple[torch.Tensor, "float | torch.Tensor"]]
"""(t, dt) per Euler step: t (B, 1) the times the velocity is evaluated at, dt the step (a
float shared by the batch, or (B,) per sample; negative toward clean)."""


def euler_integrate(velocity: VelocityFn, x: torch.Tensor, schedule: EulerSchedule) -> torch.Tensor:
    """The one Euler integrator of dx/dt = velocity(x, t): x <- x + dt * velocity(x, t) for each
    (t, dt) of the schedule. Rollout, reference rollout and self-resampling all step here."""
    for t, dt in schedule:
        if isinstance(dt, torch.Tensor):  # per sample: broadcast over (C, F, H, W)
            dt = dt.view(-1, *(1,) * (x.ndim - 1))
        x = x + dt * velocity(x, t)
    return x


def grid_schedule(grid: Sequence[float], batch: int, device=None) -> EulerSchedule:
    """The steps of a shared time grid (euler_grid, Python floats): every sample at the same t.
    The (B, 1) time tensor is filled on the device from a Python number: no host sync."""
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        yield torch.full((batch, 1), t_cur, device=device), t_next - t_cur


def truncated_schedule(t_s: torch.Tensor, steps: int) -> EulerSchedule:
    """From per-sample times t_s (B,) down to 0 in `steps` equal steps (self-resampling;
    one step is x - t_s v)."""
    dt = t_s / steps
    for k in range(steps):
        yield (t_s * (1 - k / steps))[:, None], -dt


def euler_sample(velocity: VelocityFn, x: torch.Tensor, grid: Sequence[float]) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) along the grid; t is passed as a python-float tensor
    of shape (B, 1) per step (one chunk at a time)."""
    return euler_integrate(velocity, x, grid_schedule(grid, x.shape[0], x.device))
