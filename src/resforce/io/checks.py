"""Checks of what a user hands `generate`, `eval` and `compare`, done before any work starts.

Each failure is a ValueError naming the flag (or file) and what was expected; the commands
call these at their top so a bad value never costs a rollout, and nothing is written.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

# flag -> (smallest allowed value, what it counts); None values mean "the run's default"
COUNT_FLAGS = {
    "batch": (1, "videos to generate"),
    "samples": (1, "rollouts to score"),
    "chunks": (1, "chunks to generate"),
    "steps": (1, "Euler steps per chunk"),
    "prefix_chunks": (0, "ground-truth chunks to start from"),
    "segment": (1, "frames per table segment"),
    "fps": (1, "frames per second"),
    "topk": (1, "history chunks per query"),
    "window": (0, "recent history chunks"),
    "sink": (0, "first chunks always kept"),
}


def check_counts(args) -> None:
    """Every count flag present on `args` (an argparse namespace) is an integer >= its minimum."""
    for name, (least, what) in COUNT_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value}: expected an integer >= {least} ({what})")
    for name in ("shift", "cfg", "history_noise"):
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} {value}: expected a finite number")
    noise = getattr(args, "history_noise", None)
    if noise is not None and not 0 <= noise <= 1:
        raise ValueError(f"--history-noise {noise}: expected a level in [0, 1]")


def check_output(path: str | Path, allowed: tuple[str, ...], flag: str = "--out") -> Path:
    """The output path has a writable format and is not a directory."""
    path = Path(path)
    if path.suffix.lower() not in allowed:
        raise ValueError(f"{flag} {path}: unsupported extension {path.suffix or '(none)'!r}; "
                         f"expected one of {', '.join(allowed)}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; expected a file name")
    return path


def check_video_values(video: torch.Tensor, source: str) -> None:
    """A prefix video (C, F, H, W) or (B, C, F, H, W): finite, and in the model's [-1, 1] range."""
    if video.ndim not in (4, 5):
        raise ValueError(f"{source}: expected a (C, F, H, W) video, got shape {tuple(video.shape)}")
    if not torch.isfinite(video).all():
        raise ValueError(f"{source} holds NaN or inf values; expected finite pixels in [-1, 1]")
    lo, hi = float(video.min()), float(video.max())
    if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
        raise ValueError(f"{source} has values in [{lo:g}, {hi:g}]; expected [-1, 1] "
                         f"(8-bit pixels p map to p / 127.5 - 1)")


def check_prefix_fits(prefix: torch.Tensor, channels: int, size: tuple[int, int], source: str = "--prefix") -> None:
    """A prefix must have the model's channels and the run's frame size (H, W)."""
    c, (h, w) = prefix.shape[-4], prefix.shape[-2:]
    if c != channels or (h, w) != tuple(size):
        raise ValueError(f"{source} is {c} channels of {h}x{w} pixels; the model expects {channels} "
                         f"channels of {size[0]}x{size[1]} (the run's data resolution)")


def check_finite_output(videos: torch.Tensor, source: str) -> None:
    if not torch.isfinite(videos).all():
        raise ValueError(f"generation from {source} produced NaN or inf values: the model has diverged "
                         f"(or overflowed); nothing was written. Use an earlier checkpoint")
