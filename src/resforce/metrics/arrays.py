"""Video arrays as the metrics see them: numpy, batched, in [0, 1], NaN-aware means.

Shared by :mod:`resforce.metrics.facade`, :mod:`resforce.metrics.frechet` and :mod:`resforce.metrics.stats`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114])


def as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def batch01(videos: Any) -> np.ndarray:
    """(C,F,H,W) or (M,C,F,H,W) in [-1,1] -> float32 (M,C,F,H,W) in [0,1]."""
    v = as_numpy(videos).astype(np.float32, copy=False)
    if v.ndim == 4:
        v = v[None]
    if v.ndim != 5:
        raise ValueError(f"expected (C,F,H,W) or (M,C,F,H,W), got shape {v.shape}")
    return (v + 1.0) * 0.5


def gray(v01: np.ndarray) -> np.ndarray:
    """(M,C,F,H,W) -> (M,F,H,W) luma (mean for non-RGB)."""
    if v01.shape[1] == 3:
        return np.einsum("mcfhw,c->mfhw", v01, _LUMA.astype(v01.dtype))
    return v01.mean(axis=1)


def nanmean(x: np.ndarray, axis=None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    n = finite.sum(axis=axis)
    s = np.where(finite, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def laplacian(g: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian over the last two axes, valid region only."""
    return g[..., 1:-1, :-2] + g[..., 1:-1, 2:] + g[..., :-2, 1:-1] + g[..., 2:, 1:-1] - 4.0 * g[..., 1:-1, 1:-1]

