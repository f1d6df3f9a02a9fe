"""Bouncing-balls metrics: what the world allows, per frame, with no downloaded weights.

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
  (``segment_table``, ``mean_se`` in :mod:`resforce.metrics.stats`, the plots in
  :mod:`resforce.evaluation.report`) ignores NaNs, so the bouncing-balls aggregate ``failure`` never lets
  an undefined term pass (:mod:`resforce.worlds.bouncing_balls.identity`).
* Positions are ``(x, y)`` in pixels with pixel ``(row i, col j)`` centred at
  ``(x = j + pixel_center, y = i + pixel_center)``; ``pixel_center`` defaults to 0 (the
  ``np.mgrid`` convention), pass 0.5 for renderers whose pixel ``j`` covers ``[j, j+1)``.

Metrics (``evaluate_bouncing_balls``)
-------------------------------------
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
                       (see :mod:`resforce.worlds.bouncing_balls.identity`): a ball that turns red -> blue is
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
                       (:mod:`resforce.worlds.bouncing_balls.identity`);
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
from typing import Any, Sequence

import numpy as np

from resforce.worlds.bouncing_balls import identity as ID
from resforce.worlds.bouncing_balls.analysis import analyze_balls01, greedy_match, track_balls
from resforce.metrics.arrays import batch01, as_numpy


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
    radii = list(radii) if not hasattr(radii, "shape") else as_numpy(radii)
    if len(radii) != mm:
        raise ValueError(f"radii must be a scalar or have one entry per sample ({mm}), got {len(radii)}")
    return [math.pi * np.atleast_1d(np.asarray(r, dtype=np.float64)) ** 2 for r in radii]


def _per_sample(x: Any, mm: int, name: str) -> np.ndarray:
    a = np.atleast_1d(as_numpy(x).astype(np.float64))
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
    v = batch01(videos)
    mm, _, ff, hh, ww = v.shape
    ref_areas = _ref_areas(radii, mm)
    if min_area is None:
        min_area = 4.0 if ref_areas is None else 0.25 * min(float(a.min()) for a in ref_areas)
    if max_speed is None:
        max_speed = min(hh, ww) / 4.0
    an = analyze_balls01(v, palette, background, min_area, bg_thresh, color_thresh, pixel_center)
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
        gp = as_numpy(gt_positions).astype(np.float64)
        if gp.ndim == 3:
            gp = gp[None]
        gc = None if gt_colors is None else np.atleast_2d(as_numpy(gt_colors)).astype(np.int64)
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
                pairs = greedy_match(cost)
                if pairs:
                    pos_err[m, f] = float(np.mean([cost[r, c] for r, c in pairs]))
        out["position_error"] = pos_err

    if gt_frames is not None:
        g = batch01(gt_frames)
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
