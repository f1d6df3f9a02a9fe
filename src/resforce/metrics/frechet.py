"""Frechet distance between frame sets, on fixed hand-made features (no downloaded weights).

Features (:func:`frame_features`) are 91 numbers per RGB frame computed in numpy, so a
Frechet distance of a few thousand frames costs milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resforce.metrics.stats import whole_segments
from resforce.metrics.arrays import batch01, gray, laplacian, as_numpy

__all__ = ["FEATURE_DIM", "frame_features", "frechet_distance", "frechet_vs_horizon"]

HIST_BINS = 8
GRAY_GRID = 8
#: Feature layout of :func:`frame_features` for RGB input: 3 x 8-bin channel histograms
#: (fractions of pixels, bins over [0,1]) | 8x8 area-downsampled luma | mean |d/dx| luma,
#: mean |d/dy| luma, Laplacian variance of luma.
FEATURE_DIM = 3 * HIST_BINS + GRAY_GRID * GRAY_GRID + 3


def _block_mean(g: np.ndarray, n: int) -> np.ndarray:
    """Area-average the last two axes down to n x n (uneven blocks allowed)."""
    h, w = g.shape[-2:]
    rs = (np.arange(n) * h) // n
    cs = (np.arange(n) * w) // n
    rc = np.diff(np.append(rs, h))
    cc = np.diff(np.append(cs, w))
    s = np.add.reduceat(np.add.reduceat(g, rs, axis=-2), cs, axis=-1)
    return s / (rc[:, None] * cc[None, :])


def frame_features(videos: Any) -> np.ndarray:
    """(M, F, D) fixed hand-made features per frame (D = FEATURE_DIM for RGB, see its doc)."""
    v = batch01(videos).astype(np.float64)
    mm, c, ff, hh, ww = v.shape
    q = np.clip((v * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)  # (M,C,F,H,W)
    # histogram index (m, f, c, bin), counted with one bincount
    base = ((np.arange(mm)[:, None, None] * ff + np.arange(ff)[None, None, :]) * c + np.arange(c)[None, :, None])
    idx = (base[..., None, None] * HIST_BINS + q).reshape(-1)
    hist = np.bincount(idx, minlength=mm * ff * c * HIST_BINS).reshape(mm, ff, c * HIST_BINS) / float(hh * ww)
    g = gray(v)
    small = _block_mean(g, GRAY_GRID).reshape(mm, ff, -1)
    gx = np.abs(np.diff(g, axis=-1)).mean(axis=(-2, -1))
    gy = np.abs(np.diff(g, axis=-2)).mean(axis=(-2, -1))
    lap = laplacian(g).reshape(mm, ff, -1).var(-1)
    return np.concatenate([hist, small, gx[..., None], gy[..., None], lap[..., None]], axis=-1)


def frechet_distance(feats_a: Any, feats_b: Any, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussian fits of two feature sets shaped (..., D).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` with ``eps * I`` added to
    both covariances; the trace of the matrix square root is computed as the sum of
    sqrt-eigenvalues of the symmetric PSD ``S_a^(1/2) S_b S_a^(1/2)``.
    """
    a = as_numpy(feats_a).astype(np.float64)
    b = as_numpy(feats_b).astype(np.float64)
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1])
    d = a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa = (np.cov(a, rowvar=False) if len(a) > 1 else np.zeros((d, d))).reshape(d, d) + eps * np.eye(d)
    sb = (np.cov(b, rowvar=False) if len(b) > 1 else np.zeros((d, d))).reshape(d, d) + eps * np.eye(d)
    wa, va = np.linalg.eigh(sa)
    sqa = (va * np.sqrt(np.maximum(wa, 0.0))) @ va.T
    mid = sqa @ sb @ sqa
    wm = np.linalg.eigvalsh((mid + mid.T) * 0.5)
    tr_sqrt = np.sqrt(np.maximum(wm, 0.0)).sum()
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2.0 * tr_sqrt)
    return max(fd, 0.0)


def frechet_vs_horizon(videos: Any, reference: Any, segment_len: int, floor: Any = None) -> list[dict[str, Any]]:
    """Frechet distance of each whole frame segment (pooled over samples) to ``reference``'s frames.

    ``reference`` is real data (videos, all frames pooled): make it large and independent of
    the videos scored, so every segment and every run is measured against the same, stable
    distribution (scripts/frechet_reference_size.py measures how large). ``floor``: real
    videos with as many samples and frames as ``videos`` (e.g. the ground truth of the same
    clips); each row then also gets ``frechet_floor``, their segment's distance to the
    reference, i.e. what a perfect model would score with this many samples.
    Returns rows ``{"start", "end", "frechet"[, "frechet_floor"]}``; a tail shorter than a
    segment is left out.
    """
    fa = frame_features(videos)
    fb = frame_features(reference)
    ff = None if floor is None else frame_features(floor)
    bounds, _ = whole_segments(fa.shape[1], segment_len)
    rows = []
    for s, e in bounds:
        row = {"start": s, "end": e, "frechet": frechet_distance(fa[:, s:e], fb)}
        if ff is not None:
            row["frechet_floor"] = frechet_distance(ff[:, s:e], fb)
        rows.append(row)
    return rows
