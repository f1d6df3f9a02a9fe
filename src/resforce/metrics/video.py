"""Generic per-frame video metrics for any world: sharpness, flicker, colour drift.

Videos are (M, C, F, H, W) arrays or tensors in [-1, 1]; results are (M, F) arrays in [0, 1]
units (see :mod:`resforce.worlds.bouncing_balls.metrics` for the conventions), NaN where undefined.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resforce.metrics.arrays import batch01, gray, laplacian

DRIFT_DEFINITION = (
    "drift (generic worlds) = color_drift, the distance of the frame's per-channel mean/std from "
    "the reference's. (Bouncing balls are scored by failure instead.)"
)


def sharpness(videos: Any) -> np.ndarray:
    """(M, F) variance of the 4-neighbour Laplacian of each frame's luma (in [0,1] units)."""
    g = gray(batch01(videos)).astype(np.float64)
    lap = laplacian(g)
    return lap.reshape(*lap.shape[:2], -1).var(-1)


def flicker(videos: Any) -> np.ndarray:
    """(M, F) mean absolute difference between frame f and f-1 ([0,1] units); NaN at f = 0."""
    v = batch01(videos).astype(np.float64)
    out = np.full(v.shape[0:1] + v.shape[2:3], np.nan)
    if v.shape[2] > 1:
        out[:, 1:] = np.abs(np.diff(v, axis=2)).mean(axis=(1, 3, 4))
    return out


def color_stats(videos: Any) -> np.ndarray:
    """(M, F, 2C): per-frame per-channel mean then per-channel std, in [0,1] units."""
    v = batch01(videos).astype(np.float64)
    mean = v.mean(axis=(3, 4))  # (M, C, F)
    std = v.std(axis=(3, 4))
    return np.concatenate([mean, std], axis=1).transpose(0, 2, 1)


def color_drift(videos: Any, reference: Any = None, ref_frames: int = 2) -> np.ndarray:
    """(M, F) Euclidean distance between a frame's per-channel (mean, std) and the reference's.

    Reference: ``None`` -> each sample's own first ``ref_frames`` frames (averaged); else
    videos (e.g. real data) whose per-frame stats are averaged over all samples and frames.
    """
    st = color_stats(videos)
    if reference is None:
        ref = st[:, : max(1, ref_frames)].mean(1, keepdims=True)  # (M,1,2C)
    else:
        ref = color_stats(reference).reshape(-1, st.shape[-1]).mean(0)[None, None]
    return np.linalg.norm(st - ref, axis=-1)


def evaluate_generic(videos: Any, reference: Any = None, ref_frames: int = 2) -> dict[str, np.ndarray]:
    """Per-frame generic metrics for any video data, each (M, F).

    ``sharpness`` (Laplacian variance), ``flicker`` (consecutive-frame mean abs diff),
    ``color_drift`` (see :func:`color_drift`, against ``reference`` or the first frames) and
    ``drift`` (= ``color_drift``, the generic drift-vs-horizon score).
    """
    cd = color_drift(videos, reference, ref_frames)
    return {"sharpness": sharpness(videos), "flicker": flicker(videos), "color_drift": cd, "drift": cd.copy()}
