"""Long-horizon video metrics that need no downloaded weights.

Everything here is plain numpy (no scipy, no torch, no network) and vectorised over samples
and frames: 256 frames of 32x32 are scored in well under a second.

Conventions
-----------
* Videos are float arrays (or torch tensors) shaped ``(C, F, H, W)`` per sample or
  ``(M, C, F, H, W)`` for a batch, with values in ``[-1, 1]``. Internally they are mapped to
  ``[0, 1]`` and **every intensity-valued metric is reported in [0, 1] units** (PSNR uses
  peak 1). Palette and background colours are RGB triples in ``[0, 1]``.
* Per-frame metrics are arrays shaped ``(M, F)``. ``NaN`` means "undefined for this frame"
  (e.g. ``size_error`` in a frame with no ball, ``flicker`` at frame 0); every aggregate
  (``segment_table``, ``mean_se`` in :mod:`resforce.stats`, the plots in
  :mod:`resforce.report`) ignores NaNs, so the bouncing-balls aggregate ``failure`` never lets
  an undefined term pass (:mod:`resforce.ball_identity`).
* Positions are ``(x, y)`` in pixels with pixel ``(row i, col j)`` centred at
  ``(x = j + pixel_center, y = i + pixel_center)``; ``pixel_center`` defaults to 0 (the
  ``np.mgrid`` convention), pass 0.5 for renderers whose pixel ``j`` covers ``[j, j+1)``.

Bouncing-balls metrics (``evaluate_bouncing_balls``)
----------------------------------------------------
Each pixel is classified by :func:`segment_colors`: *background* if it is within
``bg_thresh`` (RGB Euclidean distance) of the background colour; otherwise *palette colour
k* if it lies within ``color_thresh`` of the mixing segment ``background -> palette[k]``
(so anti-aliased edge pixels, which are such mixes, count as on-palette), else
*off-palette*. The position along the segment is the pixel's coverage ``alpha``. Blobs are
4-connected components of same-colour pixels (:func:`connected_components`); a blob's area
is its summed coverage (≈ pi r^2 for an anti-aliased disc) and its centroid is the
coverage-weighted mean (sub-pixel accurate). Blobs with area >= ``min_area`` are "balls".

Per frame:
  ``ball_count``       number of balls;
  ``count_error``      ``|ball_count - n_ref|``, ``n_ref`` the number of reference balls:
                       those of the given frames (``reference_balls``, e.g. the world
                       states, else read off the first ``ref_frames`` frames; balls are
                       conserved), unless ``expected_count`` overrides it;
  ``lost`` / ``spawned`` reference balls missing / balls beyond the reference, per colour
                       (see :mod:`resforce.ball_identity`): a ball that turns red -> blue is
                       one lost and one spawned;
  ``identity_error``   ``(lost + spawned) / n_ref``;
  ``color_integrity``  fraction of non-background pixels that are on-palette (1 if none);
  ``size_error``       mean over balls of ``|area - a*| / a*`` with ``a*`` the nearest
                       reference area (``pi r^2`` of the given radii, else the areas of the
                       balls in the first ``ref_frames`` frames of that sample);
  ``shape_error``      mean over balls of ``1 - compactness * isotropy`` where
                       compactness = ``min(1, area / (2 pi tr(Cov)))`` (1 for a disc, lower
                       for rings, fragments, ragged blobs) and isotropy = sqrt(lambda_min /
                       lambda_max) of the coverage-weighted covariance (lower for ellipses);
  ``background_noise`` mean over background pixels (outside a 1-px dilation of the balls)
                       of the mean absolute channel deviation from the background colour;
  ``accel_error``      mean over tracks of ``|p[f+1] - 2 p[f] + p[f-1]|`` (px/frame^2),
                       excluding triples in which the ball is within ``radius + 1 px + its
                       speed`` of a wall (elastic bounces are the only legal acceleration);
  ``teleport``         fraction of tracks whose jump since their previous observation
                       exceeds ``max_speed`` px per elapsed frame;
  ``position_error``   (with ``gt_positions``) mean distance (px) between GT balls and their
                       greedily matched balls;
  ``mse`` / ``psnr``   (with ``gt_frames``) pixel MSE in [0,1] units and PSNR (dB, peak 1);
  ``size_term`` / ``shape_term`` / ``accel_term`` / ``teleport_term``
                       the per-ball errors with every lost or spawned ball a failure
                       (:mod:`resforce.ball_identity`);
  ``failure``          the aggregate score, see :data:`FAILURE_DEFINITION`: a frame whose
                       balls vanished fails, it cannot pass by having nothing to check.

Tracks are built per sample and colour by greedy nearest-neighbour matching of balls
between frames (so two balls of one colour are told apart by position).

Ground truth is not perfect everywhere: where two balls overlap (they pass through each
other), the occluded ball's area, shape and centroid change and anti-aliased mixes of two
ball colours are off-palette, so GT itself scores small non-zero errors on those frames.
Always report the GT video's metrics as the floor next to the methods'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import ball_identity as ID
from .ball_identity import FAILURE_DEFINITION
from .frechet import FEATURE_DIM, GRAY_GRID, HIST_BINS, frame_features, frechet_distance, frechet_vs_horizon  # noqa: F401
from .stats import _fmt, _table_cells, format_table, mean_se, paired_difference, segment_table, to_markdown, whole_segments  # noqa: F401
from .videoarray import _LUMA, _batch01, _gray, _laplacian, _nanmean, _np  # noqa: F401

__all__ = [
    "DRIFT_DEFINITION",
    "FAILURE_DEFINITION",
    "FEATURE_DIM",
    "BallAnalysis",
    "segment_colors",
    "connected_components",
    "analyze_balls",
    "blob_centroids",
    "track_balls",
    "evaluate_bouncing_balls",
    "sharpness",
    "flicker",
    "color_stats",
    "color_drift",
    "evaluate_generic",
    "frame_features",
    "frechet_distance",
    "frechet_vs_horizon",
    "mean_se",
    "paired_difference",
    "whole_segments",
    "segment_table",
    "format_table",
    "to_markdown",
]

DRIFT_DEFINITION = (
    "drift (generic worlds) = color_drift, the distance of the frame's per-channel mean/std from "
    "the reference's. (Bouncing balls are scored by failure instead.)"
)


# ----------------------------------------------------------------------------- segmentation
def segment_colors(
    frames01: Any,
    palette: Sequence[Sequence[float]],
    background: Sequence[float] = (0.0, 0.0, 0.0),
    bg_thresh: float = 0.15,
    color_thresh: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Classify pixels of RGB frames in [0,1] shaped ``(..., 3, H, W)``.

    Returns ``(labels, alpha)`` shaped ``(..., H, W)``: labels 0 = background, ``k + 1`` =
    palette colour ``k``, -1 = off-palette; alpha = coverage (position on the segment
    background -> palette[k], in [0,1]) for palette pixels, else 0.
    """
    x = _np(frames01).astype(np.float32)
    if x.shape[-3] != 3:
        raise ValueError(f"segment_colors needs RGB frames (..., 3, H, W), got {x.shape}")
    pal = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
    bg = np.asarray(background, dtype=np.float32).reshape(3)
    v = np.moveaxis(x, -3, -1) - bg  # (..., H, W, 3)
    out_shape = v.shape[:-1]
    v = v.reshape(-1, 3)
    dist_bg2 = np.einsum("pc,pc->p", v, v)
    nonbg = np.flatnonzero(dist_bg2 >= bg_thresh * bg_thresh)
    labels = np.zeros(v.shape[0], dtype=np.int16)
    alpha = np.zeros(v.shape[0], dtype=np.float32)
    if len(nonbg) and len(pal):
        vn = v[nonbg]  # only non-background pixels need the palette test
        d = pal - bg  # (K, 3)
        dd = np.maximum((d * d).sum(-1), 1e-12)  # (K,)
        p = vn @ d.T  # (P, K)
        t = np.clip(p / dd, 0.0, 1.0)
        r2 = np.maximum(dist_bg2[nonbg, None] - 2.0 * t * p + t * t * dd, 0.0)
        r = np.sqrt(r2)
        k = np.argmin(r + 1e-3 * (1.0 - t), axis=-1)  # tie-break towards the fuller colour
        rows = np.arange(len(nonbg))
        on = r[rows, k] < color_thresh
        labels[nonbg] = np.where(on, k + 1, -1)
        alpha[nonbg] = np.where(on, t[rows, k], 0.0)
    elif len(nonbg):
        labels[nonbg] = -1
    labels = labels.reshape(out_shape)
    alpha = alpha.reshape(out_shape)
    return labels, alpha


def connected_components(labels: Any, connectivity: int = 4) -> np.ndarray:
    """Label connected components of equal positive labels in ``(N, H, W)``.

    Returns int64 ``(N, H, W)``: -1 for pixels with label <= 0, else a component id that is
    unique across the whole batch (the flat index of the component's first pixel, so ids
    sort by frame). Min-label propagation with pointer jumping; no scipy.
    """
    lab = _np(labels)
    if lab.ndim == 2:
        lab = lab[None]
    n, h, w = lab.shape
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    fg = lab > 0
    fgi = np.flatnonzero(fg)  # global flat indices, sorted
    nf = len(fgi)
    out = np.full(n * h * w, -1, dtype=np.int64)
    if nf == 0:
        return out.reshape(n, h, w)
    compact = np.full(n * h * w, -1, dtype=np.int64)
    compact[fgi] = np.arange(nf)
    compact = compact.reshape(n, h, w)
    shifts = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    ea, eb = [], []
    for dy, dx in shifts:
        ya, yb = slice(0, h - dy), slice(dy, h)
        xa, xb = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        same = fg[:, ya, xa] & (lab[:, ya, xa] == lab[:, yb, xb])
        ea.append(compact[:, ya, xa][same])
        eb.append(compact[:, yb, xb][same])
    ea = np.concatenate(ea)
    eb = np.concatenate(eb)
    # Hook-and-compress (Shiloach-Vishkin style): parents always have smaller indices, so
    # each tree's root is its smallest pixel; O(log n) rounds.
    parent = np.arange(nf)
    while len(ea):
        la, lb = parent[ea], parent[eb]
        diff = la != lb
        if not diff.any():
            break
        ea, eb, la, lb = ea[diff], eb[diff], la[diff], lb[diff]
        np.minimum.at(parent, np.maximum(la, lb), np.minimum(la, lb))
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    out[fgi] = fgi[parent]
    return out.reshape(n, h, w)


def _dilate3(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation over the last two axes."""
    out = mask.copy()
    out[..., 1:, :] |= mask[..., :-1, :]
    out[..., :-1, :] |= mask[..., 1:, :]
    tmp = out.copy()
    out[..., :, 1:] |= tmp[..., :, :-1]
    out[..., :, :-1] |= tmp[..., :, 1:]
    return out


@dataclass
class BallAnalysis:
    """Segmentation of a batch of bouncing-balls videos (see :func:`analyze_balls`).

    ``blobs`` holds 1-D arrays over every blob of every frame: ``sample``, ``frame``,
    ``color`` (palette index), ``area`` (summed coverage, px), ``npix``, ``cx``, ``cy``,
    ``shape_error`` and ``valid`` (area >= min_area, i.e. counted as a ball). Blobs are
    sorted by (sample, frame).
    """

    shape: tuple[int, int, int, int]  # (M, F, H, W)
    labels: np.ndarray  # (M, F, H, W) int16: 0 bg, k+1 palette, -1 off-palette
    blobs: dict[str, np.ndarray]
    color_integrity: np.ndarray  # (M, F)
    background_noise: np.ndarray  # (M, F)
    n_colors: int
    pixel_center: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def balls(self, m: int, f: int | None = None) -> dict[str, np.ndarray]:
        """Valid blobs (balls) of sample ``m`` (and frame ``f`` if given)."""
        b = self.blobs
        sel = b["valid"] & (b["sample"] == m)
        if f is not None:
            sel &= b["frame"] == f
        return {k: v[sel] for k, v in b.items()}


def analyze_balls(
    videos: Any,
    palette: Sequence[Sequence[float]],
    background: Sequence[float] = (0.0, 0.0, 0.0),
    min_area: float = 4.0,
    bg_thresh: float = 0.15,
    color_thresh: float = 0.2,
    pixel_center: float = 0.0,
    connectivity: int = 4,
) -> BallAnalysis:
    """Segment a batch of videos ((C,F,H,W) or (M,C,F,H,W) in [-1,1]) into coloured blobs."""
    return _analyze01(_batch01(videos), palette, background, min_area, bg_thresh, color_thresh, pixel_center, connectivity)


def _analyze01(v, palette, background, min_area, bg_thresh, color_thresh, pixel_center, connectivity=4) -> BallAnalysis:
    mm, c, ff, hh, ww = v.shape
    frames = np.moveaxis(v, 2, 1).reshape(mm * ff, c, hh, ww)
    labels, alpha = segment_colors(frames, palette, background, bg_thresh, color_thresh)
    comp = connected_components(labels, connectivity)
    n_frames = mm * ff
    fg = comp >= 0
    roots = comp[fg]
    uniq, inv = np.unique(roots, return_inverse=True)
    nb = len(uniq)
    gidx, yi, xi = np.nonzero(fg)
    w = alpha[fg].astype(np.float64)
    x = xi.astype(np.float64) + pixel_center
    y = yi.astype(np.float64) + pixel_center
    area = np.bincount(inv, w, nb)
    npix = np.bincount(inv, minlength=nb)
    a = np.maximum(area, 1e-12)
    cx = np.bincount(inv, w * x, nb) / a
    cy = np.bincount(inv, w * y, nb) / a
    vxx = np.maximum(np.bincount(inv, w * x * x, nb) / a - cx**2, 0.0) + 1.0 / 12.0
    vyy = np.maximum(np.bincount(inv, w * y * y, nb) / a - cy**2, 0.0) + 1.0 / 12.0
    vxy = np.bincount(inv, w * x * y, nb) / a - cx * cy
    tr = vxx + vyy  # + 1/12 per axis: the pixel footprint's own variance
    disc = np.sqrt(np.maximum(((vxx - vyy) * 0.5) ** 2 + vxy**2, 0.0))
    lmax = tr * 0.5 + disc
    lmin = np.maximum(tr * 0.5 - disc, 0.0)
    compact = np.minimum(1.0, area / (2.0 * np.pi * tr))
    iso = np.sqrt(lmin / np.maximum(lmax, 1e-12))
    gframe = uniq // (hh * ww)
    blobs = {
        "sample": (gframe // ff).astype(np.int64),
        "frame": (gframe % ff).astype(np.int64),
        "color": (labels.reshape(-1)[uniq] - 1).astype(np.int64),
        "area": area,
        "npix": npix,
        "cx": cx,
        "cy": cy,
        "shape_error": 1.0 - compact * iso,
        "valid": area >= min_area,
    }

    # colour integrity: on-palette among non-background pixels
    lab_flat = labels.reshape(n_frames, -1)
    nonbg = (lab_flat != 0).sum(1)
    onpal = (lab_flat > 0).sum(1)
    integrity = np.where(nonbg > 0, onpal / np.maximum(nonbg, 1), 1.0)

    # background noise: outside a 1-px dilation of the valid balls
    valid_root = np.zeros(n_frames * hh * ww + 1, dtype=bool)
    valid_root[uniq[blobs["valid"]]] = True
    ball_px = valid_root[np.where(fg, comp, n_frames * hh * ww)]
    bgmask = ~_dilate3(ball_px)
    bgc = np.asarray(background, dtype=np.float32).reshape(1, 3, 1, 1)
    dev = np.abs(frames - bgc).mean(1)  # (N, H, W)
    nbg = bgmask.reshape(n_frames, -1).sum(1)
    noise = np.where(nbg > 0, (dev * bgmask).reshape(n_frames, -1).sum(1) / np.maximum(nbg, 1), np.nan)

    return BallAnalysis(
        shape=(mm, ff, hh, ww),
        labels=labels.reshape(mm, ff, hh, ww),
        blobs=blobs,
        color_integrity=integrity.reshape(mm, ff),
        background_noise=noise.reshape(mm, ff),
        n_colors=len(np.asarray(palette).reshape(-1, 3)),
        pixel_center=pixel_center,
    )


def blob_centroids(analysis: BallAnalysis) -> np.ndarray:
    """(M, F, K, 2) centroid (x, y) of the largest ball of each palette colour; NaN if absent."""
    mm, ff, _, _ = analysis.shape
    k = analysis.n_colors
    out = np.full((mm, ff, k, 2), np.nan)
    best = np.full((mm, ff, k), -1.0)
    b = analysis.blobs
    for i in np.flatnonzero(b["valid"]):
        m, f, c = b["sample"][i], b["frame"][i], b["color"][i]
        if b["area"][i] > best[m, f, c]:
            best[m, f, c] = b["area"][i]
            out[m, f, c] = (b["cx"][i], b["cy"][i])
    return out


def _greedy_match(cost: np.ndarray) -> list[tuple[int, int]]:
    """Greedy minimum-cost matching of rows to columns (inf = forbidden)."""
    pairs = []
    if cost.size == 0:
        return pairs
    cost = cost.astype(np.float64).copy()
    for _ in range(min(cost.shape)):
        i = int(np.argmin(cost))
        r, c = divmod(i, cost.shape[1])
        if not np.isfinite(cost[r, c]):
            break
        pairs.append((r, c))
        cost[r, :] = np.inf
        cost[:, c] = np.inf
    return pairs


def track_balls(analysis: BallAnalysis) -> list[list[dict[str, Any]]]:
    """Per sample, a list of tracks ``{"color", "pos" (F,2) with NaN gaps, "area" (F,)}``.

    Balls are linked frame to frame by greedy nearest-neighbour matching within each colour
    (against each track's last known position); unmatched balls start new tracks.
    """
    mm, ff, _, _ = analysis.shape
    b = analysis.blobs
    valid = np.flatnonzero(b["valid"])
    out: list[list[dict[str, Any]]] = []
    key = b["sample"][valid] * ff + b["frame"][valid]
    starts = np.searchsorted(key, np.arange(mm * ff + 1))
    for m in range(mm):
        tracks: list[dict[str, Any]] = []
        last: list[np.ndarray] = []
        for f in range(ff):
            idx = valid[starts[m * ff + f] : starts[m * ff + f + 1]]
            if len(idx) == 0:
                continue
            pos = np.stack([b["cx"][idx], b["cy"][idx]], 1)
            cols = b["color"][idx]
            used = np.zeros(len(idx), bool)
            if tracks:
                tcol = np.array([t["color"] for t in tracks])
                tlast = np.stack(last)
                cost = np.linalg.norm(tlast[:, None] - pos[None], axis=-1)
                cost[tcol[:, None] != cols[None]] = np.inf
                for ti, bi in _greedy_match(cost):
                    tracks[ti]["pos"][f] = pos[bi]
                    tracks[ti]["area"][f] = b["area"][idx[bi]]
                    last[ti] = pos[bi]
                    used[bi] = True
            for bi in np.flatnonzero(~used):
                t = {"color": int(cols[bi]), "pos": np.full((ff, 2), np.nan), "area": np.full(ff, np.nan)}
                t["pos"][f] = pos[bi]
                t["area"][f] = b["area"][idx[bi]]
                tracks.append(t)
                last.append(pos[bi])
        out.append(tracks)
    return out


def _motion_metrics(
    tracks_per_sample: list[list[dict[str, Any]]],
    shape: tuple[int, int, int, int],
    max_speed: float,
    pixel_center: float,
) -> tuple[np.ndarray, np.ndarray]:
    mm, ff, hh, ww = shape
    accel = np.full((mm, ff), np.nan)
    tele = np.full((mm, ff), np.nan)
    lo = pixel_center - 0.5
    hi_x = ww + pixel_center - 0.5
    hi_y = hh + pixel_center - 0.5
    for m, tracks in enumerate(tracks_per_sample):
        if not tracks:
            continue
        acc_sum = np.zeros(ff)
        acc_n = np.zeros(ff)
        tel_sum = np.zeros(ff)
        tel_n = np.zeros(ff)
        for t in tracks:
            p = t["pos"]
            radius = math.sqrt(np.nanmedian(t["area"]) / math.pi)
            wall = np.minimum.reduce([p[:, 0] - lo, hi_x - p[:, 0], p[:, 1] - lo, hi_y - p[:, 1]])
            if ff >= 3:
                a = p[2:] - 2.0 * p[1:-1] + p[:-2]
                amag = np.linalg.norm(a, axis=1)
                s1 = np.linalg.norm(p[1:-1] - p[:-2], axis=1)
                s2 = np.linalg.norm(p[2:] - p[1:-1], axis=1)
                margin = radius + 1.0 + np.maximum(s1, s2)
                near = (wall[:-2] < margin) | (wall[1:-1] < margin) | (wall[2:] < margin)
                ok = np.isfinite(amag) & ~near
                acc_sum[1:-1] += np.where(ok, amag, 0.0)
                acc_n[1:-1] += ok
            obs = np.flatnonzero(np.isfinite(p[:, 0]))
            if len(obs) >= 2:
                f0, f1 = obs[:-1], obs[1:]
                jump = np.linalg.norm(p[f1] - p[f0], axis=1)
                tel_sum[f1] += jump > max_speed * (f1 - f0)
                tel_n[f1] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            accel[m] = np.where(acc_n > 0, acc_sum / np.maximum(acc_n, 1), np.nan)
            tele[m] = np.where(tel_n > 0, tel_sum / np.maximum(tel_n, 1), np.nan)
    return accel, tele


def _ref_areas(radii: Any, mm: int) -> list[np.ndarray] | None:
    if radii is None:
        return None
    if np.isscalar(radii):
        return [np.array([math.pi * float(radii) ** 2])] * mm
    radii = list(radii) if not hasattr(radii, "shape") else _np(radii)
    if len(radii) != mm:
        raise ValueError(f"radii must be a scalar or have one entry per sample ({mm}), got {len(radii)}")
    return [math.pi * np.atleast_1d(np.asarray(r, dtype=np.float64)) ** 2 for r in radii]


def _per_sample(x: Any, mm: int, name: str) -> np.ndarray:
    a = np.atleast_1d(_np(x).astype(np.float64))
    if a.size == 1:
        a = np.full(mm, a.item())
    if a.shape != (mm,):
        raise ValueError(f"{name} must be a scalar or shaped ({mm},), got {a.shape}")
    return a


def evaluate_bouncing_balls(
    videos: Any,
    palette: Sequence[Sequence[float]],
    background: Sequence[float] = (0.0, 0.0, 0.0),
    radii: Any = None,
    expected_count: Any = None,
    gt_frames: Any = None,
    gt_positions: Any = None,
    gt_colors: Any = None,
    *,
    reference_balls: Any = None,
    min_area: float | None = None,
    max_speed: float | None = None,
    ref_frames: int = 2,
    bg_thresh: float = 0.15,
    color_thresh: float = 0.2,
    pixel_center: float = 0.0,
) -> dict[str, np.ndarray]:
    """Per-frame bouncing-balls metrics, each shaped ``(M, F)`` (see the module docstring).

    Args:
      videos: (M,C,F,H,W) or (C,F,H,W) in [-1,1], RGB.
      palette: ball colours, RGB in [0,1]; background: RGB in [0,1].
      radii: ball radii in px: a scalar, or per sample a scalar or a list of per-ball radii.
        Used for ``size_error`` and the default ``min_area`` (a quarter of the smallest disc);
        without radii, reference areas come from the first ``ref_frames`` frames.
      expected_count: scalar or (M,): overrides the reference ball count in ``count_error``
        only (default: the number of reference balls).
      gt_frames: (M,C,Fg,H,W) in [-1,1] -> ``mse``/``psnr`` for frames < Fg (NaN after).
      gt_positions: (M,Fg,N,2) ball centres (x, y) in px (NaN = absent) -> ``position_error``.
      gt_colors: (M,N) palette index of each GT ball; restricts matching to same colour.
      min_area: blob area (px, coverage-weighted) to count as a ball.
      max_speed: px/frame above which a jump is a teleport; default ``min(H, W) / 4``.
      reference_balls: per sample, the palette indices of the given frames' balls (e.g. the
        world states' colours); default: read off the first ``ref_frames`` frames (per colour,
        the most balls seen in one of them). The reference of ``count_error``, ``lost``,
        ``spawned``, ``identity_error`` and the ``*_term`` metrics.
    """
    v = _batch01(videos)
    mm, _, ff, hh, ww = v.shape
    ref_areas = _ref_areas(radii, mm)
    if min_area is None:
        min_area = 4.0 if ref_areas is None else 0.25 * min(float(a.min()) for a in ref_areas)
    if max_speed is None:
        max_speed = min(hh, ww) / 4.0
    an = _analyze01(v, palette, background, min_area, bg_thresh, color_thresh, pixel_center)
    b = an.blobs
    valid = b["valid"]
    gfr = b["sample"] * ff + b["frame"]

    count = np.bincount(gfr[valid], minlength=mm * ff).reshape(mm, ff).astype(np.float64)
    nref = max(1, min(ref_frames, ff))
    detected = ID.detected_counts(b, (mm, ff), an.n_colors)
    ident = ID.match_identity(b, (mm, ff), an.n_colors, ID.reference_counts(reference_balls, detected, ref_frames))
    # balls are conserved: the count is checked against the given frames' balls
    exp = ident.n_reference.astype(np.float64) if expected_count is None else _per_sample(expected_count, mm, "expected_count")
    count_error = np.abs(count - exp[:, None])

    # size error against the nearest reference area
    if ref_areas is None:
        ref_areas = []
        for m in range(mm):
            sel = valid & (b["sample"] == m) & (b["frame"] < nref)
            ref_areas.append(b["area"][sel])
    rel = np.full(len(valid), np.nan)
    for m in range(mm):
        ra = ref_areas[m]
        sel = np.flatnonzero(valid & (b["sample"] == m))
        if len(ra) == 0 or len(sel) == 0:
            continue
        diff = np.abs(b["area"][sel, None] - ra[None])
        j = diff.argmin(1)
        rel[sel] = diff[np.arange(len(sel)), j] / ra[j]

    def per_frame_mean(values: np.ndarray) -> np.ndarray:
        ok = valid & np.isfinite(values)
        s = np.bincount(gfr[ok], values[ok], mm * ff)
        n = np.bincount(gfr[ok], minlength=mm * ff)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s / np.maximum(n, 1), np.nan).reshape(mm, ff)

    size_error = per_frame_mean(rel)
    shape_error = per_frame_mean(b["shape_error"])

    tracks = track_balls(an)
    accel, tele = _motion_metrics(tracks, an.shape, max_speed, pixel_center)

    out: dict[str, np.ndarray] = {
        "ball_count": count,
        "count_error": count_error,
        "lost": ident.lost,
        "spawned": ident.spawned,
        "identity_error": ident.identity_error,
        "color_integrity": an.color_integrity.astype(np.float64),
        "size_error": size_error,
        "shape_error": shape_error,
        "background_noise": an.background_noise.astype(np.float64),
        "accel_error": accel,
        "teleport": tele,
    }

    if gt_positions is not None:
        gp = _np(gt_positions).astype(np.float64)
        if gp.ndim == 3:
            gp = gp[None]
        gc = None if gt_colors is None else np.atleast_2d(_np(gt_colors)).astype(np.int64)
        pos_err = np.full((mm, ff), np.nan)
        for m in range(mm):
            for f in range(min(ff, gp.shape[1])):
                g = gp[m, f]
                gok = np.isfinite(g).all(1)
                balls = an.balls(m, f)
                if not gok.any() or len(balls["cx"]) == 0:
                    continue
                bp = np.stack([balls["cx"], balls["cy"]], 1)
                cost = np.linalg.norm(g[gok][:, None] - bp[None], axis=-1)
                if gc is not None:
                    cost[gc[m][gok][:, None] != balls["color"][None]] = np.inf
                pairs = _greedy_match(cost)
                if pairs:
                    pos_err[m, f] = float(np.mean([cost[r, c] for r, c in pairs]))
        out["position_error"] = pos_err

    if gt_frames is not None:
        g = _batch01(gt_frames)
        fg_ = min(ff, g.shape[2])
        mse = np.full((mm, ff), np.nan)
        mse[:, :fg_] = ((v[:, :, :fg_] - g[:, :, :fg_]) ** 2).mean(axis=(1, 3, 4))
        out["mse"] = mse
        with np.errstate(divide="ignore", invalid="ignore"):
            out["psnr"] = np.where(np.isfinite(mse), 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10)), np.nan)

    # per-ball terms in which a lost or spawned ball is a failure, and their aggregate
    out["size_term"] = ID.per_ball_term(ident, rel)
    out["shape_term"] = ID.per_ball_term(ident, b["shape_error"])
    out["accel_term"] = ID.motion_term(ident, np.minimum(accel, 1.0))
    out["teleport_term"] = ID.motion_term(ident, tele)
    out["failure"] = ID.failure_score({
        "identity": np.minimum(out["identity_error"], 1.0),
        "color": 1.0 - out["color_integrity"],
        "size": out["size_term"],
        "shape": out["shape_term"],
        "background": np.minimum(out["background_noise"] / 0.1, 1.0),
        "accel": out["accel_term"],
        "teleport": out["teleport_term"],
    })
    return out


# ----------------------------------------------------------------------------- generic
def sharpness(videos: Any) -> np.ndarray:
    """(M, F) variance of the 4-neighbour Laplacian of each frame's luma (in [0,1] units)."""
    g = _gray(_batch01(videos)).astype(np.float64)
    lap = _laplacian(g)
    return lap.reshape(*lap.shape[:2], -1).var(-1)


def flicker(videos: Any) -> np.ndarray:
    """(M, F) mean absolute difference between frame f and f-1 ([0,1] units); NaN at f = 0."""
    v = _batch01(videos).astype(np.float64)
    out = np.full(v.shape[0:1] + v.shape[2:3], np.nan)
    if v.shape[2] > 1:
        out[:, 1:] = np.abs(np.diff(v, axis=2)).mean(axis=(1, 3, 4))
    return out


def color_stats(videos: Any) -> np.ndarray:
    """(M, F, 2C): per-frame per-channel mean then per-channel std, in [0,1] units."""
    v = _batch01(videos).astype(np.float64)
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
